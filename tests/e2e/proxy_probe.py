"""A client that knocks on the proxy's socket in a loop while the proxy restarts, and what
it saw: refused connections (and the longest stretch of them) and how long a health
request waited for its answer. Used by tests/e2e/test_proxy_restart.py and
bench/proxy_restart.py."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HEALTH = b"GET /nanoclaw/health HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n"


@dataclass
class ProbeReport:
    attempts: int = 0
    refused: int = 0
    failed: int = 0  # connected, but no answer (reset, or closed without one)
    longest_refused_s: float = 0.0  # first refusal to the next accepted connection
    longest_wait_s: float = 0.0  # a health request's connect-to-answer time
    waits: list[float] = field(default_factory=list)
    refusals: list[tuple[float, str]] = field(default_factory=list)  # (wall clock, error), first 50


class Probe:
    """Health requests, one after another (``interval_s`` apart), on fresh connections.
    Nothing counts before the first answer: a proxy that is still starting (the socket
    not bound yet) is not a restart."""

    def __init__(self, path: Path, interval_s: float = 0.005, timeout_s: float = 60.0) -> None:
        self.path = path
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.report = ProbeReport()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="proxy-probe")
        self._refused_since: float | None = None
        self._armed = False

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s + 10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._once()
            self._stop.wait(self.interval_s)

    def _once(self) -> None:
        if not self._armed:
            self._armed = self._answered()
            return
        report = self.report
        report.attempts += 1
        started = time.monotonic()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            try:
                sock.connect(str(self.path))
            except (ConnectionRefusedError, FileNotFoundError) as exc:
                report.refused += 1
                if len(report.refusals) < 50:
                    report.refusals.append((time.time(), type(exc).__name__))
                if self._refused_since is None:
                    self._refused_since = started
                return
            if self._refused_since is not None:
                report.longest_refused_s = max(
                    report.longest_refused_s, started - self._refused_since
                )
                self._refused_since = None
            try:
                sock.sendall(HEALTH)
                answer = sock.recv(64)
            except OSError:
                answer = b""
            if not answer.startswith(b"HTTP/1.1 200"):
                report.failed += 1
                return
            waited = time.monotonic() - started
            report.waits.append(waited)
            report.longest_wait_s = max(report.longest_wait_s, waited)
        finally:
            sock.close()

    def _answered(self) -> bool:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(str(self.path))
            sock.sendall(HEALTH)
            return sock.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False
        finally:
            sock.close()
