"""The proxy's socket under abuse, and its life across stops and starts: per-peer connection
caps, the idle and head deadlines (a slowloris is cut), one proxy per data folder, and a
listening socket that outlives the proxy process (the keeper), so a restart or a crash
refuses no connection.

The in-process proxy (``make_local_proxy``) gets short deadlines; the tests wait for the
event (the connection closed by the proxy), bounded, never a fixed sleep."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nanoclaw_common.paths import Layout
from nanoclaw_common.program import EXIT_LOCKED
from nanoclaw_proxy.handover import path_identity
from tests.environ import clean_environ
from tests.fakes.anthropic_api import FakeAnthropic, text
from tests.integration.agents.conftest import LocalProxy
from tests.integration.agents.harness import AgentSession, Proxy, start_proxy, uds_client
from tests.waiting import wait_until

COUNT = "http://proxy/v1/messages/count_tokens"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
HEADERS = {"anthropic-version": "2023-06-01"}


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def connect(path: Path, opened: list[socket.socket]) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    opened.append(sock)
    return sock


def closed_by_peer(sock: socket.socket, timeout_s: float = 10.0) -> bool:
    """True when the proxy closes the connection within ``timeout_s`` (EOF or reset)."""
    sock.settimeout(timeout_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def count_ok(path: Path, token: str) -> bool:
    with uds_client(path) as client:
        answer = client.post(COUNT, headers={**HEADERS, "x-api-key": token}, json=BODY)
    return answer.status_code == 200


def test_connections_past_the_peer_cap_are_closed_at_once(
    make_local_proxy: Callable[..., LocalProxy],
    agent: AgentSession,
    sockets: list[socket.socket],
) -> None:
    proxy = make_local_proxy(per_peer=8)
    idle = [connect(proxy.socket, sockets) for _ in range(8)]
    extra = connect(proxy.socket, sockets)
    assert closed_by_peer(extra, timeout_s=5)
    assert proxy.state.guard.stats["refused_peer"] == 1
    assert all(not closed_by_peer(sock, timeout_s=0.05) for sock in idle[:2])  # still open
    for sock in idle:
        sock.close()
    # Once they are gone, the peer is served again.
    wait_until(
        lambda: proxy.state.guard.open_total == 0,
        timeout_s=20.0,
        what="the idle connections gone",
    )
    assert count_ok(proxy.socket, agent.token)


def test_an_idle_connection_and_a_slowloris_are_cut(
    make_local_proxy: Callable[..., LocalProxy],
    agent: AgentSession,
    sockets: list[socket.socket],
) -> None:
    proxy = make_local_proxy(idle_timeout_s=0.5, head_timeout_s=1.0)
    silent = connect(proxy.socket, sockets)
    slow = connect(proxy.socket, sockets)
    slow.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: proxy\r\n")
    started = time.monotonic()
    cut = False
    # A header byte every 0.2 s: each keeps the line going, none completes the head.
    while time.monotonic() - started < 5.0:
        try:
            slow.sendall(b"X")
        except (BrokenPipeError, ConnectionResetError):
            cut = True
            break
        if closed_by_peer(slow, timeout_s=0.2):
            cut = True
            break
    assert cut, "the slowloris connection was never cut"
    assert time.monotonic() - started < 3.0
    assert closed_by_peer(silent, timeout_s=5)
    assert proxy.state.guard.stats["slow_head"] == 1
    assert proxy.state.guard.stats["idle"] >= 1
    # Meanwhile and afterwards, real calls go through.
    assert count_ok(proxy.socket, agent.token)


def test_a_keep_alive_connection_serves_calls_and_is_idle_between_them(
    make_local_proxy: Callable[..., LocalProxy], agent: AgentSession
) -> None:
    proxy = make_local_proxy(idle_timeout_s=2.0, head_timeout_s=1.0)
    with uds_client(proxy.socket) as client:
        for _ in range(3):
            answer = client.post(COUNT, headers={**HEADERS, "x-api-key": agent.token}, json=BODY)
            assert answer.status_code == 200
    assert proxy.state.guard.stats["slow_head"] == 0


def test_a_second_proxy_refuses_to_start_and_leaves_the_socket_alone(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession, home: Path
) -> None:
    before = path_identity(proxy.socket)
    second = subprocess.run(
        [sys.executable, "-m", "nanoclaw_proxy"],
        env={
            **clean_environ("ANTHROPIC_"),
            "NANOCLAW_HOME": str(home),
            "ANTHROPIC_API_KEY": fake_api.api_key,
            "ANTHROPIC_BASE_URL": fake_api.url,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == EXIT_LOCKED, second.stderr
    assert f"another proxy (pid {proxy.process.pid}) holds" in second.stderr
    assert path_identity(proxy.socket) == before  # not unlinked, not replaced
    fake_api.reply(text("still here"))
    assert count_ok(proxy.socket, agent.token)
    assert proxy.process.poll() is None


def keeper_pid(proxy: Proxy) -> int:
    for line in proxy.log().splitlines():
        if "keeper pid" in line:
            return int(line.rsplit("keeper pid", 1)[1].strip(" )"))
    raise AssertionError("no keeper started")


def refused_while(action: Callable[[], None], path: Path) -> tuple[int, int]:
    """Connect to ``path`` in a loop while ``action`` runs: (connections refused, made)."""
    stop = threading.Event()
    counts = [0, 0]

    def probe() -> None:
        while not stop.is_set():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                counts[1] += 1
            except (ConnectionRefusedError, FileNotFoundError):
                counts[0] += 1
            finally:
                sock.close()
            time.sleep(0.002)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        action()
    finally:
        stop.set()
        thread.join(10)
    return counts[0], counts[1]


@pytest.mark.parametrize("how", ["graceful", "crash"])
def test_a_restart_refuses_no_connection_and_a_waiting_call_is_served(
    how: str, home: Path, fake_api: FakeAnthropic, agent: AgentSession
) -> None:
    """The keeper holds the socket while no proxy runs: a connection made in the gap waits
    in the backlog and the next proxy answers it. (The probe's connections and the call
    are one peer, this test process: its connection cap is raised for the probe's sake.)"""
    generous = {"NANOCLAW_PROXY_PEER_CONNECTIONS": "100000"}
    first = start_proxy(home, fake_api.api_key, fake_api.url, **generous)
    keeper = keeper_pid(first)
    layout = Layout(home)
    proxies = [first]
    answered: list[int] = []

    def call_in_the_gap() -> None:
        with uds_client(layout.proxy_socket, timeout=30) as client:
            answer = client.post(COUNT, headers={**HEADERS, "x-api-key": agent.token}, json=BODY)
            answered.append(answer.status_code)

    def restart() -> None:
        if how == "graceful":
            assert first.stop() == 0
        else:
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(10)
        waiting = threading.Thread(target=call_in_the_gap)
        waiting.start()
        time.sleep(0.2)  # the call is in the backlog now, with no proxy to take it
        assert not answered
        proxies.append(start_proxy(home, fake_api.api_key, fake_api.url, **generous))
        waiting.join(30)

    try:
        refused, made = refused_while(restart, layout.proxy_socket)
        assert refused == 0 and made > 0
        assert answered == [200]
        assert "the socket the keeper held" in proxies[-1].log()
        os.kill(keeper, 0)  # the same keeper, still holding it (ProcessLookupError if gone)
    finally:
        for running in proxies:
            running.stop()
