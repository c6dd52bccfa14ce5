"""Real processes for the agent tests: the credential proxy (``nanoclaw-proxy``) and the agent
runner (``nanoclaw-agent-runner`` as a host process against a session folder under tmp_path),
with the central DB rows a session needs. Waiting helpers wait for an event (a file, a row)
with a deadline; nothing sleeps for a fixed time to let a timeout pass."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import msgspec

from nanoclaw_common import messages
from nanoclaw_common.paths import Layout, SessionPaths
from nanoclaw_common.peer_identity import identity_of_pid
from nanoclaw_common.runner_config import RunnerConfig, encode_runner_config, write_proxy_token
from nanoclaw_common.sandbox.settle import RETRY_BASE_MS, settle_leftover_claims
from nanoclaw_common.sessions import ensure_session_files
from nanoclaw_common.store import CentralStore, InboundStore, NewInbound
from nanoclaw_common.store.outbound import OutboundReader
from nanoclaw_common.store.proxy_tokens import ProxyTokens
from nanoclaw_common.store.rows import DestinationEntry, Routing
from nanoclaw_common.store.runs import RunLedger, leftover_claims
from tests.environ import clean_environ
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[3]


@dataclass
class Proxy:
    process: subprocess.Popen[bytes]
    socket: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(15)


def start_proxy(home: Path, api_key: str, base_url: str, **env: str) -> Proxy:
    layout = Layout(home)
    layout.ensure()
    log_path = home / "logs" / "proxy.log"
    log_from = log_path.stat().st_size if log_path.exists() else 0  # an earlier proxy's lines
    environ = {
        **clean_environ("ANTHROPIC_"),
        "NANOCLAW_HOME": str(home),
        "ANTHROPIC_API_KEY": api_key,
        "ANTHROPIC_BASE_URL": base_url,
        "NANOCLAW_LOG_LEVEL": "DEBUG",
        # The socket keeper outlives the proxy this long (a test's restarts take less).
        "NANOCLAW_PROXY_KEEPER_LINGER_S": "10",
        **env,
    }
    with open(log_path, "ab") as handle:  # the child keeps its own copy of the fd
        process = subprocess.Popen(
            [sys.executable, "-m", "nanoclaw_proxy"],
            cwd=home,
            env=environ,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    proxy = Proxy(process, layout.proxy_socket, log_path)

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"proxy exited {process.returncode}: {proxy.log()}")
        if "serving (up to" not in proxy.log()[log_from:]:
            return False  # the socket file may be a dead proxy's (or its keeper's) until then
        try:
            with uds_client(layout.proxy_socket, timeout=10) as client:
                return client.get("http://proxy/nanoclaw/health").status_code == 200
        except httpx2.TransportError:
            return False

    wait_until(healthy, timeout_s=20.0, what="the proxy to listen")
    return proxy


def uds_client(socket: Path, **kwargs: Any) -> httpx2.Client:
    return httpx2.Client(transport=httpx2.HTTPTransport(uds=str(socket)), **kwargs)


@dataclass
class AgentSession:
    home: Path
    group_id: str
    group_folder: str
    session_id: str
    paths: SessionPaths
    workspace: Path
    token: str
    run_id: str

    def inbound(self) -> InboundStore:
        return InboundStore(self.paths.inbound_db)

    def outbound(self) -> OutboundReader:
        return OutboundReader(self.paths.outbound_db)

    def settle_dead_run(self, central: CentralStore) -> None:
        """What wake() does with the claims a dead run left ``processing`` before it starts
        a new run: each message gets ``tries += 1`` and a backoff. Dated one backoff back,
        so the retry is due at once (the test does not wait the backoff out)."""
        inbound = self.inbound()
        try:
            settled = settle_leftover_claims(
                session_id=self.session_id,
                claims=leftover_claims(self.paths.outbound_db, self.run_id),
                inbound=inbound,
                ledger=RunLedger(central),
                max_tries=5,
                now=int(time.time() * 1000) - RETRY_BASE_MS,
            )
        finally:
            inbound.close()
        assert settled.runs, "no dead run had claims to settle"

    def new_run(self, central: CentralStore) -> None:
        """What wake() does for a new container: a fresh run id and token. The token is
        bound to this test process's own identity, found the way the proxy finds a peer's
        (``identity_of_pid``): the runners these tests start are its children, in its
        cgroup, as a container's processes are in the container's."""
        self.run_id = f"run-{time.time_ns()}"
        self.token = secrets.token_urlsafe(32)
        ProxyTokens(central).issue(
            hashlib.sha256(self.token.encode()).hexdigest(),
            self.session_id,
            self.group_id,
            self.run_id,
            bound_to=identity_of_pid(os.getpid()),
        )


def make_session(
    central: CentralStore, home: Path, *, name: str = "Family", chat: str = "chat-1"
) -> AgentSession:
    """Central rows for a group, its chat and a session; the session folder with its DBs,
    destinations (``main`` = the chat) and routing; a proxy token for the first run."""
    folder = central.unique_folder(name)
    group = central.create_agent_group(name, folder)
    chat_row = central.create_messaging_group("cli", chat, name="Main chat")
    session = central.create_session(group.id, chat_row.id)
    layout = Layout(home)
    paths = ensure_session_files(layout, session)
    workspace = layout.group_dir(folder)
    workspace.mkdir(parents=True, exist_ok=True)
    inbound = InboundStore(paths.inbound_db)
    main = DestinationEntry("main", "Main chat", "channel", "cli", chat, None)
    inbound.replace_destinations([main])
    inbound.set_routing(Routing("cli", chat, None))
    inbound.close()
    agent = AgentSession(home, group.id, folder, session.id, paths, workspace, "", "")
    agent.new_run(central)
    return agent


def write_config(agent: AgentSession, proxy_socket: Path, **fields: Any) -> RunnerConfig:
    config = RunnerConfig(
        session_id=agent.session_id,
        agent_group_id=agent.group_id,
        proxy_socket=str(proxy_socket),
        **{"heartbeat_interval_s": 0.2, **fields},
    )
    (agent.paths.root / "runner.json").write_bytes(encode_runner_config(config))
    return config


@dataclass
class RunnerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, count: int = 1, timeout_s: float = 20.0) -> None:
        """Until ``text`` is in the log ``count`` times (the process must stay up)."""

        def seen() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"runner exited {self.process.returncode}: {self.log()}")
            return self.log().count(text) >= count

        wait_until(seen, timeout_s=timeout_s, what=f"{text!r} x{count} in the runner's log")

    def rss_kb(self) -> int:
        """``VmRSS`` from /proc/<pid>/status (readable whatever the process's dumpable flag)."""
        return rss_kb(self.process.pid)

    def terminate(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(20)

    def kill(self) -> None:
        """SIGKILL the runner and whatever it started (bash tool children)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def start_runner(
    agent: AgentSession,
    *,
    log_name: str = "runner.log",
    token_file: bool = True,
    env: dict[str, str] | None = None,
) -> RunnerProcess:
    """Start the runner as ``Sandbox.wake`` starts a container: the run id in the environment,
    the run's proxy token in ``agent/.proxy-token`` (which the runner takes and unlinks;
    ``token_file=False`` leaves it out). ``env``: more variables (test hooks)."""
    log_path = agent.home / "logs" / log_name
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if token_file:
        write_proxy_token(agent.paths.agent_dir, agent.token)
    environ = {
        **clean_environ("ANTHROPIC_"),
        "NANOCLAW_RUN_ID": agent.run_id,
        "NANOCLAW_LOG_LEVEL": "DEBUG",
        **(env or {}),
    }
    command = [sys.executable, "-m", "agent_runner", "--session-root", str(agent.paths.root)]
    command += ["--workspace", str(agent.workspace)]
    with open(log_path, "ab") as handle:  # the child keeps its own copy of the fd
        process = subprocess.Popen(
            command,
            cwd=agent.workspace,
            env=environ,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() takes its children too
        )
    return RunnerProcess(process, log_path)


def send_chat(
    agent: AgentSession,
    text: str,
    *,
    message_id: str | None = None,
    chat: str = "chat-1",
    sender: tuple[str, str] = ("cli:alice", "Alice"),
    **row: Any,
) -> str:
    row_id = f"{message_id or secrets.token_hex(4)}:{agent.group_id}"
    store = agent.inbound()
    try:
        store.insert_message(
            NewInbound(
                id=row_id,
                content=messages.ChatContent(text=text, sender_id=sender[0], sender_name=sender[1]),
                timestamp_ms=int(time.time() * 1000),
                channel_type="cli",
                platform_id=chat,
                **row,
            )
        )
    finally:
        store.close()
    return row_id


def outbound_rows(agent: AgentSession) -> list[Any]:
    reader = agent.outbound()
    try:
        return reader.messages_after(0, limit=1000)
    finally:
        reader.close()


def ack_status(agent: AgentSession, message_id: str) -> str | None:
    reader = agent.outbound()
    try:
        return next((a.status for a in reader.acks() if a.message_id == message_id), None)
    finally:
        reader.close()


def texts(agent: AgentSession) -> list[str]:
    """The text of every SendText row the agent wrote, in seq order."""
    found = []
    for row in outbound_rows(agent):
        content = msgspec.json.decode(row.content)
        if content.get("type") == "text":
            found.append(content["text"])
    return found
