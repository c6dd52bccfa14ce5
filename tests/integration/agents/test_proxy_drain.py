"""A stopping proxy answers every connection it accepted (issue 9 §1).

The listening socket outlives each proxy (the keeper holds a copy), so a connection that
no proxy accepted yet waits in the backlog for the next one; a connection the stopping
proxy did accept must be answered by it. Here proxies are served one after another in
this process, each on its own copy of one listening socket, while clients connect and send
a health request in a tight loop; whatever is left in the backlog after the last stop is
answered by the test, as the next proxy would. A connection that got no answer is lost.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from nanoclaw_common.paths import Layout
from nanoclaw_common.store import CentralStore
from nanoclaw_proxy.app import make_app
from nanoclaw_proxy.guard import ConnectionGuard
from nanoclaw_proxy.handover import bind_listener
from nanoclaw_proxy.server import serve
from tests.conftest import SettingsFactory
from tests.fakes.anthropic_api import FakeAnthropic
from tests.waiting import wait_until

HEALTH = b"GET /nanoclaw/health HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n"
CLIENTS = 6
STOPS = 60


class Knocking:
    """Client threads: connect, send a health request, read the answer, count."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]

    def __enter__(self) -> Knocking:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(20)
                try:
                    sock.connect(self.path)
                except OSError:
                    self._count("refused")
                    continue
                try:
                    sock.sendall(HEALTH)
                    answer = sock.recv(64)
                except OSError:
                    answer = b""
                self._count("answered" if answer.startswith(b"HTTP/1.1 200") else "lost")

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1


def answered_more(knocking: Knocking, than: int) -> bool:
    return knocking.counts["answered"] > than


def answer_backlog(listener: socket.socket) -> int:
    """Answer what waits in the backlog, as the next proxy would; how many."""
    listener.setblocking(False)
    answered = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return answered
        with conn:
            conn.settimeout(5)
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        answered += 1


@pytest.fixture
def listener(layout: Layout) -> Iterator[socket.socket]:
    sock = bind_listener(layout.proxy_socket)
    yield sock
    sock.close()


@pytest.mark.timeout(300)
def test_no_connection_is_lost_across_stops(
    make_settings: SettingsFactory,
    layout: Layout,
    central: CentralStore,
    fake_api: FakeAnthropic,
    listener: socket.socket,
) -> None:
    settings = make_settings(anthropic_api_key=fake_api.api_key, anthropic_base_url=fake_api.url)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        with Knocking(str(layout.proxy_socket)) as knocking:
            for _ in range(STOPS):
                app = make_app(settings, layout.central_db, ConnectionGuard(total=1024))
                stopped = asyncio.Event()
                copy = listener.dup()  # this proxy's; the keeper's is `listener`
                served = asyncio.run_coroutine_threadsafe(
                    serve(app, copy, stopped, drain_s=10), loop
                )
                wait_until(
                    functools.partial(answered_more, knocking, knocking.counts["answered"] + 20),
                    timeout_s=30,
                    what="answers from this proxy",
                )
                assert not served.done(), served.result()
                loop.call_soon_threadsafe(stopped.set)
                served.result(30)
                copy.close()
            # The clients stop; what they left in the backlog gets its answer.
            stopping = threading.Thread(target=knocking.__exit__, args=(None, None, None))
            stopping.start()
            while stopping.is_alive():
                answer_backlog(listener)
                stopping.join(0.01)
            answer_backlog(listener)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    counts = knocking.counts
    assert counts["answered"] > STOPS * 20, counts
    assert counts["lost"] == 0, counts
    assert counts["refused"] == 0, counts
