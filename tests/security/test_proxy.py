"""Attacks on the credential proxy from inside a real agent container (docs/security.md,
"Credential proxy"): a connection flood and a slowloris, a stolen token, a budget race,
a second proxy, and server-side capabilities the owner did not turn on.

The attack tokens are issued the way ``wake()`` issues one (``ProxyTokens.issue`` bound to
``container:<id>`` of the attacking container), for a session of their own: the runner's
token, which the agent cannot read, stays valid, and the attacker holds a real token of its
own container, the best it could steal."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from nanoclaw_common import messages
from nanoclaw_common.peer_identity import container_identity, identity_of_pid
from nanoclaw_common.program import EXIT_LOCKED
from nanoclaw_common.sandbox import Sandbox, runtime
from nanoclaw_common.sandbox.spec import container_name
from nanoclaw_common.sessions import refresh_projections
from nanoclaw_common.store import InboundStore, NewInbound, OutboundReader
from nanoclaw_common.store.metering import TokenLedger, utc_day
from nanoclaw_common.store.proxy_tokens import ProxyTokens
from nanoclaw_common.store.rows import Session
from nanoclaw_proxy.handover import path_identity
from tests.central_verbs import get_token_usage
from tests.security.conftest import STACK_POLL_S, Agent, HostileStack
from tests.stack import NANOCLAW, echo_reply
from tests.waiting import wait_until

pytestmark = pytest.mark.podman

SOCKET = "/run/nanoclaw/proxy.sock"
THREAD = "t-proxy"

# Inside the container: an HTTP request over the proxy socket with the runner's Python.
CALL = """
import json, http.client, socket, sys
class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(60)
        self.sock.connect(SOCKET)
conn = Conn("proxy")
conn.request(METHOD, PATH, body=BODY, headers=HEADERS)
answer = conn.getresponse()
print(json.dumps({"status": answer.status, "body": answer.read().decode(errors="replace")}))
"""

# Inside the container: as many idle connections as the proxy takes, held until the host
# says stop (a file appears); then how many the proxy kept.
FLOOD = """
import json, os, socket, time
opened = []
for _ in range(2000):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(SOCKET)
    except OSError:
        break
    opened.append(s)
deadline = time.monotonic() + 60
while not os.path.exists("/tmp/flood.stop") and time.monotonic() < deadline:
    time.sleep(0.1)
alive = 0
for s in opened:
    s.setblocking(False)
    try:
        alive += s.recv(1) != b""
    except BlockingIOError:
        alive += 1
    except OSError:
        pass
print(json.dumps({"tried": len(opened), "alive": alive}))
"""

# Inside the container: a request head trickling in, one byte a second; when it was cut.
SLOWLORIS = """
import json, socket, time
slow = socket.socket(socket.AF_UNIX)
slow.connect(SOCKET)
slow.sendall(b"POST /v1/messages HTTP/1.1\\r\\nHost: proxy\\r\\n")
started = time.monotonic()
cut_after = None
while time.monotonic() - started < 40:
    try:
        slow.sendall(b"X")
        slow.settimeout(1.0)
        if slow.recv(1) == b"":
            raise ConnectionResetError
    except socket.timeout:
        continue
    except OSError:
        cut_after = time.monotonic() - started
        break
print(json.dumps({"cut_after": cut_after}))
"""


def call(
    agent: Agent,
    token: str,
    body: dict[str, Any] | None,
    *,
    path: str = "/v1/messages",
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    sent = {"x-api-key": token, "anthropic-version": "2023-06-01", **(headers or {})}
    code = (
        f"SOCKET = {SOCKET!r}\nMETHOD = {method!r}\nPATH = {path!r}\n"
        f"BODY = {json.dumps(body) if body is not None else None!r}\n"
        f"HEADERS = {{**{sent!r}, 'content-type': 'application/json'}}\n{CALL}"
    )
    answer: dict[str, Any] = json.loads(agent.py(code).stdout.strip().splitlines()[-1])
    return answer


def podman_env(hostile: HostileStack) -> dict[str, str]:
    conf = runtime.conf_path(hostile.layout)
    return runtime.podman_env(conf if conf.is_file() else None)


def container_id(hostile: HostileStack, agent: Agent) -> str:
    done = hostile.podman("inspect", "--format", "{{.Id}}", agent.container)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def attack_token(hostile: HostileStack, bound_to: str) -> str:
    """A real token of a session of its own (no container runs it), bound to ``bound_to``."""
    token = secrets.token_urlsafe(32)
    with hostile.central() as central:
        session = central.create_session(hostile.group.id, None)
        ProxyTokens(central).issue(
            hashlib.sha256(token.encode()).hexdigest(),
            session.id,
            hostile.group.id,
            f"run-attack-{time.time_ns()}",
            bound_to=bound_to,
        )
    return token


def second_session(hostile: HostileStack) -> Session:
    """Another session of the group (a thread of the terminal chat), its container woken."""
    with hostile.central() as central:
        chat = central.find_messaging_group("cli", "local")
        assert chat is not None
        session, _ = central.resolve_session(hostile.group.id, chat.id, THREAD, "per-thread")
        refresh_projections(central, hostile.layout, session)
    sandbox = Sandbox(hostile.settings)
    try:
        # Podman's API service may still be starting (the sweeper would retry the wake).
        wait_until(
            lambda: sandbox.wake(session),
            timeout_s=60,
            what="the second session's container",
            poll_s=STACK_POLL_S,
        )
    finally:
        sandbox.close()
    return session


def ask(hostile: HostileStack, session: Session, text: str) -> str:
    paths = hostile.layout.session(session.agent_group_id, session.id)
    store = InboundStore(paths.inbound_db)
    row_id = f"cli-{time.time_ns()}:{session.agent_group_id}"
    try:
        store.insert_message(
            NewInbound(
                id=row_id,
                content=messages.ChatContent(text=text, sender_id="cli:local", sender_name="Me"),
                timestamp_ms=int(time.time() * 1000),
                channel_type="cli",
                platform_id="local",
                thread_id=THREAD,
            )
        )
    finally:
        store.close()
    return row_id


def answered(hostile: HostileStack, session: Session, message_id: str) -> list[str] | None:
    paths = hostile.layout.session(session.agent_group_id, session.id)
    reader = OutboundReader(paths.outbound_db)
    try:
        ack = next((a.status for a in reader.acks() if a.message_id == message_id), None)
        if ack != "completed":
            return None
        return [
            str(json.loads(r.content).get("text")) for r in reader.messages_after(0, limit=1000)
        ]
    finally:
        reader.close()


@pytest.fixture
def other(hostile: HostileStack) -> Iterator[Session]:
    session = second_session(hostile)
    yield session
    sandbox = Sandbox(hostile.settings)
    try:
        sandbox.stop(session.id)
    finally:
        sandbox.close()


def test_a_connection_flood_and_a_slowloris_deny_no_one_else(
    hostile: HostileStack, other: Session
) -> None:
    agent = hostile.agent()
    pids = hostile.pids()
    flood = subprocess.Popen(  # the attack runs while the other session asks the model
        [
            "podman",
            "exec",
            "-i",
            "--user",
            "{}:{}".format(*hostile.container_user()),
            agent.container,
            "/opt/venv/bin/python",
            "-",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=podman_env(hostile),
    )
    assert flood.stdin is not None
    flood.stdin.write(f"SOCKET = {SOCKET!r}\n{FLOOD}")
    flood.stdin.close()
    cid = container_id(hostile, agent)
    wait_until(
        lambda: f"connection refused: container:{cid}" in hostile.log("proxy"),
        timeout_s=60,
        what="the flood to reach the connection cap",
        poll_s=STACK_POLL_S,
    )
    hostile.fake_api.reply(echo_reply)
    asked = ask(hostile, other, "are you still there?")
    texts: list[str] = []

    def done() -> bool:
        texts[:] = answered(hostile, other, asked) or []
        return bool(texts)

    wait_until(
        done, timeout_s=60, what="the other session's answer during the flood", poll_s=STACK_POLL_S
    )
    assert any("echo: are you still there?" in t for t in texts)
    agent.sh("touch /tmp/flood.stop")
    assert flood.stdout is not None
    out = flood.stdout.read()  # the script ends once the file is there
    flood.stdout.close()
    flood.wait(30)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["alive"] <= hostile.settings.proxy_peer_connections
    assert result["tried"] > result["alive"]  # the rest were closed at once
    slow = json.loads(agent.py(f"SOCKET = {SOCKET!r}\n{SLOWLORIS}", timeout_s=60).stdout)
    assert slow["cut_after"] is not None and slow["cut_after"] < 15
    hostile.assert_up(pids)
    log = hostile.log("proxy")
    assert "its request head did not arrive within" in log
    assert log.count("connection refused:") < 20  # rate-limited, not one line each
    assert "Traceback" not in log and "EMFILE" not in log


def test_a_stolen_token_works_only_from_its_own_container(
    hostile: HostileStack, other: Session
) -> None:
    agent = hostile.agent()
    pids = hostile.pids()
    token = attack_token(hostile, container_identity(container_id(hostile, agent)))
    count = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    own = call(agent, token, count, path="/v1/messages/count_tokens")
    assert own["status"] == 200, own  # the control: where it was issued, it works
    # The other session's container, with the token.
    thief = Agent(hostile, container_name(hostile.settings.install, other.id), "")
    stolen = call(thief, token, count, path="/v1/messages/count_tokens")
    assert stolen["status"] == 401, stolen
    assert "issued to another container" in json.loads(stolen["body"])["error"]["message"]
    # And from the host.
    transport = httpx2.HTTPTransport(uds=str(hostile.layout.proxy_socket))
    with httpx2.Client(transport=transport, timeout=30) as client:
        host = client.post(
            "http://proxy/v1/messages/count_tokens",
            headers={"x-api-key": token, "anthropic-version": "2023-06-01"},
            json=count,
        )
    assert host.status_code == 401
    assert identity_of_pid(os.getpid()).startswith("cgroup:")  # the host is no container
    hostile.assert_up(pids)
    assert "refused a token used from" in hostile.log("proxy")
    assert token not in hostile.log("proxy")


def test_twenty_concurrent_calls_get_room_for_two(hostile: HostileStack) -> None:
    agent = hostile.agent()
    pids = hostile.pids()
    token = attack_token(hostile, container_identity(container_id(hostile, agent)))
    day = utc_day(int(time.time() * 1000))
    with hostile.central() as central:
        before = get_token_usage(central, hostile.group.id, day)
        used_before = (before.input_tokens + before.output_tokens) if before else 0
        central.update_container_config(hostile.group.id, token_budget_daily=used_before + 1080)
    usage = {"input_tokens": 300, "output_tokens": 200}
    hostile.fake_api.reply(
        *[
            {"content": [{"type": "text", "text": "ok"}], "usage": usage, "delay_s": 1.0}
            for _ in range(20)
        ]
    )
    race = f"""
import anthropic, httpx2, json, threading
barrier = threading.Barrier(20)
outcomes = []
def one():
    client = anthropic.Anthropic(api_key={token!r}, base_url="http://proxy", max_retries=0,
        http_client=httpx2.Client(transport=httpx2.HTTPTransport(uds={SOCKET!r})))
    barrier.wait()
    try:
        client.messages.create(model="m", max_tokens=400,
                               messages=[{{"role": "user", "content": "hi"}}])
        outcomes.append("ok")
    except anthropic.RateLimitError as exc:
        outcomes.append("refused" if "daily token budget" in str(exc) else "other")
threads = [threading.Thread(target=one) for _ in range(20)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(sorted(outcomes)))
"""
    try:
        outcomes = json.loads(agent.py(race, timeout_s=120).stdout.strip().splitlines()[-1])
        assert outcomes == ["ok"] * 2 + ["refused"] * 18
        with hostile.central() as central:
            after = get_token_usage(central, hostile.group.id, day)
            assert after is not None
            assert after.input_tokens + after.output_tokens - used_before == 1000
            assert TokenLedger(central).live_reservations(now=int(time.time() * 1000)) == 0
    finally:
        with hostile.central() as central:
            central.update_container_config(hostile.group.id, token_budget_daily=None)
    hostile.assert_up(pids)
    assert "refused /v1/messages: 429" in hostile.log("proxy")


def test_a_second_proxy_leaves_the_live_socket_alone(hostile: HostileStack) -> None:
    agent = hostile.agent()
    pids = hostile.pids()
    before = path_identity(hostile.layout.proxy_socket)
    second = subprocess.run(
        [str(Path(NANOCLAW).with_name("nanoclaw-proxy"))],
        env=hostile.base.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == EXIT_LOCKED, second.stderr
    assert f"another proxy (pid {pids['proxy']}) holds" in second.stderr
    assert path_identity(hostile.layout.proxy_socket) == before
    hostile.fake_api.reply(echo_reply)
    assert any("echo: still fine?" in t for t in hostile.chat("still fine?"))
    hostile.assert_up(pids)
    assert agent.container


def test_server_side_capabilities_are_refused_by_default(hostile: HostileStack) -> None:
    agent = hostile.agent()
    pids = hostile.pids()
    token = attack_token(hostile, container_identity(container_id(hostile, agent)))
    base = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    attempts: list[tuple[dict[str, Any], dict[str, str], str]] = [
        (
            {**base, "tools": [{"type": "code_execution_20250825", "name": "c"}]},
            {},
            "--server-tool code_execution",
        ),
        (
            {
                **base,
                "mcp_servers": [{"type": "url", "url": "https://evil.example/mcp", "name": "x"}],
            },
            {},
            "--mcp-connector",
        ),
        (base, {"anthropic-beta": "files-api-2025-04-14"}, "--allow-beta files-api-2025-04-14"),
        (base, {"anthropic-beta": "mcp-client-2025-04-04"}, "--allow-beta mcp-client-2025-04-04"),
        (
            {**base, "tools": [{"type": "brand_new_server_tool_20990101", "name": "z"}]},
            {},
            "not known to this proxy",
        ),
        ({**base, "container": "container_0123"}, {}, "code execution"),
    ]
    seen_before = len(hostile.fake_api.message_requests())
    for body, headers, words in attempts:
        answer = call(agent, token, body, headers=headers)
        assert answer["status"] == 400, answer
        message = json.loads(answer["body"])["error"]["message"]
        assert words in message
    assert len(hostile.fake_api.message_requests()) == seen_before  # none reached the API
    # The owner turns web search off: now it is refused too, and allowed again after.
    folder = hostile.group.folder
    subprocess.run(
        [str(NANOCLAW), "groups", "config", folder, "--no-web-search"],
        env=hostile.base.env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        search = {**base, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}
        assert call(agent, token, search)["status"] == 400
    finally:
        subprocess.run(
            [str(NANOCLAW), "groups", "config", folder, "--web-search"],
            env=hostile.base.env,
            check=True,
            capture_output=True,
            timeout=60,
        )
    hostile.assert_up(pids)
    assert "refused /v1/messages: 400" in hostile.log("proxy")
