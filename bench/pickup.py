"""Warm pickup latency and the runner's RSS.

Warm pickup = an inbound commit → the runner's claim row, in a runner that is already up and
idle (blocked in its inotify wait). This process plays the host: it commits chat rows to the
session's ``inbound.db`` through ``InboundStore`` (what the router does) and stamps
``time.monotonic()`` right after the commit returned; it then waits, with its own inotify
watch on ``agent/`` (no polling), for the runner's ``processing_ack`` row for that message and
stamps again. Latency = the difference (one clock). Each message is then answered by the
scripted model and acked ``completed`` before the next one, after a random idle gap of 20-80
ms, so every sample starts from an idle runner.

RSS = ``VmRSS`` of the runner process from ``/proc/<pid>/status`` (in a container too: it is
a host process in another namespace), read once the runner is up and idle, after the samples
(idle again), and with ``--anthropic`` after one turn through the real SDK (the credential
proxy and the fake Messages API from tests/fakes), which is when the SDK gets imported.

    .venv/bin/python bench/pickup.py [--samples 300] [--container] [--anthropic] [--json]

``--container`` runs the runner in a real container started by ``Sandbox.wake`` (needs
Podman and the agent image, ``nanoclaw image build``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.fakes, for --anthropic

from agent_runner.watch import ChangeWatcher  # noqa: E402
from nanoclaw_common import messages  # noqa: E402
from nanoclaw_common.paths import Layout, SessionPaths  # noqa: E402
from nanoclaw_common.runner_config import (  # noqa: E402
    RunnerConfig,
    encode_runner_config,
    write_proxy_token,
)
from nanoclaw_common.sessions import ensure_session_files, refresh_projections  # noqa: E402
from nanoclaw_common.store import CentralStore, InboundStore, NewInbound  # noqa: E402
from nanoclaw_common.store.outbound import OutboundReader  # noqa: E402
from nanoclaw_common.store.rows import Session  # noqa: E402

ANSWER = {"content": [{"type": "text", "text": '<message to="main">ok</message>'}]}
SCRIPT = {"fallback": ANSWER}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def runner_pid(pid: int) -> int:
    """The agent runner's pid: ``pid`` itself, or its descendant when the container runs an
    init process (catatonit) as pid 1."""
    pending = [pid]
    while pending:
        current = pending.pop()
        comm = Path(f"/proc/{current}/comm").read_text().strip()
        if comm.startswith(("python", "nanoclaw-agent")):
            return current
        for task in Path(f"/proc/{current}/task").iterdir():
            children = (task / "children").read_text().split()
            pending += [int(child) for child in children]
    raise RuntimeError(f"no agent runner process under pid {pid}")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


class Host:
    """The host side of one session: writes inbound rows, watches the runner's acks."""

    def __init__(self, paths: SessionPaths, group_id: str) -> None:
        self.paths = paths
        self.group_id = group_id
        self.inbound = InboundStore(paths.inbound_db)
        self.watcher = ChangeWatcher(paths.outbound_db)
        self.outbound: OutboundReader | None = None
        self.count = 0

    def ack(self, message_id: str) -> str | None:
        if self.outbound is None:
            if not self.paths.outbound_db.exists():
                return None
            self.outbound = OutboundReader(self.paths.outbound_db)
        found = self.outbound.db.scalar(
            "SELECT status FROM processing_ack WHERE message_id = ?", (message_id,)
        )
        return None if found is None else str(found)

    def wait_for(self, check: Callable[[], bool], timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the runner did not answer in time")
            self.watcher.wait(min(left, 0.5))

    def send(self) -> float:
        """Commit one chat row; seconds from the commit to the runner's claim."""
        self.count += 1
        message_id = f"bench-{self.count}:{self.group_id}"
        self.inbound.insert_message(
            NewInbound(
                id=message_id,
                content=messages.ChatContent(text=f"ping {self.count}", sender_id="cli:bench"),
                timestamp_ms=int(time.time() * 1000),
                channel_type="cli",
                platform_id="local",
            )
        )
        committed = time.monotonic()
        self.wait_for(lambda: self.ack(message_id) is not None)
        claimed = time.monotonic()
        self.wait_for(lambda: self.ack(message_id) == "completed")
        return claimed - committed

    def close(self) -> None:
        self.inbound.close()
        if self.outbound is not None:
            self.outbound.close()
        self.watcher.close()


def make_session(central: CentralStore, layout: Layout, provider: str) -> Session:
    group = central.create_agent_group("Bench", central.unique_folder("bench"))
    central.update_container_config(group.id, provider=provider)
    layout.group_dir(group.folder).mkdir(parents=True, exist_ok=True)
    chat = central.create_messaging_group("cli", "local", name="main")
    central.add_destination(group.id, "main", "channel", chat.id)
    session = central.create_session(group.id, chat.id)
    refresh_projections(central, layout, session)
    return session


@contextmanager
def host_runner(
    home: Path, provider: str, proxy_socket: Path | None = None
) -> Iterator[tuple[Host, int]]:
    """The runner as a host process (what the tests run)."""
    layout = Layout(home)
    layout.ensure()
    central = CentralStore.open(layout.central_db)
    session = make_session(central, layout, provider)
    paths = ensure_session_files(layout, session)
    (paths.agent_dir / "script.json").write_text(json.dumps(SCRIPT))
    config = RunnerConfig(
        session_id=session.id,
        agent_group_id=session.agent_group_id,
        provider="scripted" if provider == "scripted" else "anthropic",
        model="claude-sonnet-4-6",
        script_path=str(paths.agent_dir / "script.json"),
        proxy_socket=str(proxy_socket or layout.proxy_socket),
    )
    (paths.root / "runner.json").write_bytes(encode_runner_config(config))
    token = secrets.token_urlsafe(32)
    run_id = f"run-bench-{os.getpid()}"
    import hashlib

    from nanoclaw_common.peer_identity import identity_of_pid
    from nanoclaw_common.store.proxy_tokens import ProxyTokens

    # Bound to this process's identity: the runner below is its child, in its cgroup.
    ProxyTokens(central).issue(
        hashlib.sha256(token.encode()).hexdigest(),
        session.id,
        session.agent_group_id,
        run_id,
        bound_to=identity_of_pid(os.getpid()),
    )
    group = central.get_agent_group(session.agent_group_id)
    assert group is not None
    write_proxy_token(paths.agent_dir, token)  # as Sandbox.wake does
    env = {**os.environ, "NANOCLAW_RUN_ID": run_id, "NANOCLAW_LOG_LEVEL": "WARNING"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent_runner",
            "--session-root",
            str(paths.root),
            "--workspace",
            str(layout.group_dir(group.folder)),
        ],
        env=env,
        cwd=home,
    )
    host = Host(paths, session.agent_group_id)
    try:
        host.wait_for(paths.heartbeat.exists, 30)
        yield host, process.pid
    finally:
        host.close()
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        central.close()


@contextmanager
def container_runner(home: Path) -> Iterator[tuple[Host, int]]:
    """The runner in a real container, started by ``Sandbox.wake``."""
    import podman

    from nanoclaw_common.sandbox import Sandbox, runtime
    from nanoclaw_common.sandbox.service import PodmanService
    from nanoclaw_common.settings import Settings

    layout = Layout(home)
    layout.ensure()
    conf = runtime.ensure_containers_conf(layout)
    service = PodmanService(layout.podman_socket, runtime.podman_env(conf)).start()
    settings = Settings(
        home=str(home), install_id="bench" + secrets.token_hex(3), podman_url=service.url
    ).validate()
    central = CentralStore.open(layout.central_db)
    session = make_session(central, layout, "scripted")
    paths = ensure_session_files(layout, session)
    (paths.agent_dir / "script.json").write_text(json.dumps(SCRIPT))
    box = Sandbox(settings)
    host = Host(paths, session.agent_group_id)
    try:
        if not box.wake(session):
            raise RuntimeError("wake failed (is the agent image built?)")
        host.wait_for(paths.heartbeat.exists, 60)
        with podman.PodmanClient(base_url=service.url) as client:
            state = client.containers.get(box.container_name(session.id)).attrs["State"]
        yield host, runner_pid(int(state["Pid"]))
    finally:
        host.close()
        box.stop(session.id)
        box.close()
        with podman.PodmanClient(base_url=service.url) as client:
            for container in client.containers.list(all=True):
                if container.name == box.container_name(session.id):
                    container.remove(force=True)
        service.stop()
        central.close()


def measure(host: Host, pid: int, samples: int, warmup: int) -> dict[str, Any]:
    gap = threading.Event()
    rss_start = rss_kb(pid)
    for _ in range(warmup):
        host.send()
    latencies: list[float] = []
    for _ in range(samples):
        gap.wait(random.uniform(0.02, 0.08))  # the runner goes back to its idle wait
        latencies.append(host.send() * 1000)
    gap.wait(1.0)
    return {
        "samples": samples,
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p90_ms": round(percentile(latencies, 0.90), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 2),
        "mean_ms": round(sum(latencies) / len(latencies), 2),
        "rss_idle_start_mb": round(rss_start / 1024, 1),
        "rss_idle_after_mb": round(rss_kb(pid) / 1024, 1),
    }


def anthropic_rss(home: Path) -> dict[str, Any]:
    """RSS before and after one turn through the real SDK (proxy + fake API)."""
    from tests.fakes.anthropic_api import FakeAnthropic
    from tests.integration.agents.harness import start_proxy

    api = FakeAnthropic().start()
    layout = Layout(home)
    layout.ensure()
    CentralStore.open(layout.central_db).close()
    proxy = start_proxy(home, api.api_key, api.url)
    try:
        api.reply(*([ANSWER] * 5))
        with host_runner(home, "anthropic", layout.proxy_socket) as (host, pid):
            gap = threading.Event()
            gap.wait(1.0)
            before = rss_kb(pid)
            for _ in range(5):
                host.send()
            gap.wait(1.0)
            return {
                "rss_before_first_turn_mb": round(before / 1024, 1),
                "rss_after_5_turns_mb": round(rss_kb(pid) / 1024, 1),
            }
    finally:
        proxy.stop()
        api.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--container", action="store_true")
    parser.add_argument("--anthropic", action="store_true", help="also measure the SDK's RSS")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nanoclaw-bench-") as tmp:
        home = Path(tmp)
        runner = container_runner(home) if args.container else host_runner(home, "scripted")
        with runner as (host, pid):
            result = measure(host, pid, args.samples, args.warmup)
        result["where"] = "container" if args.container else "host process"
        if args.anthropic:
            with tempfile.TemporaryDirectory(prefix="nanoclaw-bench-sdk-") as sdk_home:
                result.update(anthropic_rss(Path(sdk_home)))
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>26}: {value}")


if __name__ == "__main__":
    main()
