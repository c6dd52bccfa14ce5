"""Fair use of the proxy's socket: no container's connections can deny another's calls.

Every container reaches the same Unix socket, so one flooding it (21,000 idle connections
once exhausted the proxy's descriptors, and every session's calls failed) must be stopped at
the connection, before aiohttp sees a byte:

- each connection is charged to its peer's identity (``nanoclaw_common.peer_identity``: the
  container, from the connecting pid's cgroup); past ``per_peer`` open connections, or
  ``total`` in all (kept below the descriptor limit), a new one is closed at once;
- a connection must start a request within ``idle_timeout_s`` of opening or of its last
  response, and once its first byte came, complete the request head within
  ``head_timeout_s`` (a slowloris that sends a header byte every few seconds is cut);
  aiohttp has no head timeout of its own;
- refusals and cuts are logged rate-limited (``RateLimitedLog``), never one traceback per
  connection, and so is ``accept()`` running out of descriptors (``EMFILE``).

``GuardedProtocol`` wraps aiohttp's protocol; the app's middleware tells it when a request
started and ended (``request_started``/``request_done``), which is how the guard knows that
the head arrived and when the connection is idle again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

from loguru import logger

from nanoclaw_common.peer_identity import identity_of_pid, peer_pid

log = logger.bind(component="proxy")

PER_PEER_CONNECTIONS: Final = 32  # a runner needs one or two; its tools have no business here
IDLE_TIMEOUT_S: Final = 30.0
HEAD_TIMEOUT_S: Final = 10.0
LOG_INTERVAL_S: Final = 10.0


class RateLimitedLog:
    """At most one line per key per ``interval_s``; the next one says how many were held
    back meanwhile."""

    def __init__(
        self, interval_s: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def warning(self, key: str, message: str, *args: Any, **ids: Any) -> bool:
        """Log ``message`` unless ``key`` was logged within the interval; True if logged."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] += 1
            return False
        held = self._held.pop(key, 0)
        self._last[key] = now
        suffix = f" ({held} more like it in the last {self.interval_s:.0f} s)" if held else ""
        log.opt(depth=1).warning(message + suffix, *args, **ids)
        if len(self._last) > 4096:  # keys are per container: forget the quiet ones
            for stale in [k for k, t in self._last.items() if now - t >= self.interval_s]:
                del self._last[stale]
        return True


class ConnectionGuard:
    """Open connections per peer identity, and the limits (see the module docstring)."""

    def __init__(
        self,
        *,
        total: int,
        per_peer: int = PER_PEER_CONNECTIONS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        identify: Callable[[Any], str] | None = None,
        logs: RateLimitedLog | None = None,
    ) -> None:
        self.total = total
        self.per_peer = per_peer
        self.idle_timeout_s = idle_timeout_s
        self.head_timeout_s = head_timeout_s
        self.identify = identify or transport_identity
        self.logs = logs or RateLimitedLog()
        self.open: Counter[str] = Counter()
        self.by_transport: dict[int, GuardedProtocol] = {}
        # Made by asyncio for an accepted connection, not yet told of it (connection_made
        # runs a loop iteration later): a stopping proxy must wait for these too.
        self.opening: set[GuardedProtocol] = set()
        self.stats: Counter[str] = Counter()  # refused_peer, refused_total, idle, slow_head

    @property
    def open_total(self) -> int:
        return sum(self.open.values())

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], GuardedProtocol]:
        def make() -> GuardedProtocol:
            protocol = GuardedProtocol(self, inner)
            self.opening.add(protocol)
            return protocol

        return make

    def may_carry_a_request(self, now: float, grace_s: float) -> bool:
        """Whether a connection is opening, or open and ``fresh``: closing it now could
        lose a request its client has already written."""
        return bool(self.opening) or any(
            p.fresh(now, grace_s) for p in list(self.by_transport.values())
        )

    def admit(self, identity: str) -> str | None:
        """Count a new connection of ``identity``; the reason when it must be closed."""
        if self.open[identity] >= self.per_peer:
            self.stats["refused_peer"] += 1
            return f"{identity} has {self.open[identity]} connections open (limit {self.per_peer})"
        if self.open_total >= self.total:
            self.stats["refused_total"] += 1
            return f"{self.open_total} connections open in all (limit {self.total})"
        self.open[identity] += 1
        return None

    def release(self, identity: str) -> None:
        self.open[identity] -= 1
        if self.open[identity] <= 0:
            del self.open[identity]

    def protocol_of(self, transport: Any) -> GuardedProtocol | None:
        return self.by_transport.get(id(transport))

    def identity_of(self, transport: Any) -> str | None:
        guarded = self.protocol_of(transport)
        return guarded.identity if guarded is not None else None


def transport_identity(transport: Any) -> str:
    sock = transport.get_extra_info("socket")
    pid = peer_pid(sock) if sock is not None else None
    return identity_of_pid(pid) if pid is not None else "unknown"


class GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol behind the guard: admission, the idle and head deadlines."""

    def __init__(self, guard: ConnectionGuard, inner: Callable[[], asyncio.Protocol]) -> None:
        self.guard = guard
        self._make_inner = inner
        self.inner: asyncio.Protocol | None = None
        self.identity = "unknown"
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle = True  # between requests: waiting for a head
        self._head_started = False
        self.idle_since = 0.0  # loop time when it last became idle (opened, or answered)

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.guard.opening.discard(self)
        self.transport = transport  # type: ignore[assignment]
        # The pid is read at once: the peer's credentials are those of connect(), and the
        # pid's cgroup is read before the peer could exit and its pid be reused.
        self.identity = self.guard.identify(transport)
        refusal = self.guard.admit(self.identity)
        if refusal is not None:
            self.guard.logs.warning(f"refused:{self.identity}", "connection refused: {}", refusal)
            transport.abort()  # type: ignore[attr-defined]
            return
        self.guard.by_transport[id(transport)] = self
        self.inner = self._make_inner()
        self.inner.connection_made(transport)
        self.idle_since = asyncio.get_running_loop().time()
        self._arm(self.guard.idle_timeout_s, "idle")

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return
        if self._idle and not self._head_started and data:
            # The first byte of a head: from now on the whole head must come quickly.
            self._head_started = True
            self._arm(self.guard.head_timeout_s, "slow_head")
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.opening.discard(self)
        self._disarm()
        if self.inner is None:
            return  # refused at connection_made: never counted, never handed to aiohttp
        self.guard.by_transport.pop(id(self.transport), None)
        self.guard.release(self.identity)
        inner, self.inner = self.inner, None
        inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    # -- told by the app -----------------------------------------------------------------

    def request_started(self) -> None:
        """aiohttp parsed a head and called the handler: no deadline while it works."""
        self._idle = False
        self._head_started = False
        self._disarm()

    def request_done(self) -> None:
        """The response is written: the connection is idle again."""
        self._idle = True
        self._head_started = False
        self.idle_since = asyncio.get_running_loop().time()
        self._arm(self.guard.idle_timeout_s, "idle")

    def fresh(self, now: float, grace_s: float) -> bool:
        """Idle for less than ``grace_s``, or its head is arriving: a request may be on its
        way (written by the client, not yet read), so a stopping proxy must not close it."""
        return self._idle and (self._head_started or now - self.idle_since < grace_s)

    # -- deadlines -----------------------------------------------------------------------

    def _arm(self, timeout_s: float, reason: str) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(timeout_s, self._expired, reason)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, reason: str) -> None:
        self._timer = None
        if not self._idle or self.transport is None:
            return
        self.guard.stats[reason] += 1
        if reason == "slow_head":
            self.guard.logs.warning(
                f"slow:{self.identity}",
                "closed a connection of {}: its request head did not arrive within {:.0f} s",
                self.identity,
                self.guard.head_timeout_s,
            )
        self.transport.abort()


def install_accept_error_log(loop: asyncio.AbstractEventLoop, logs: RateLimitedLog) -> None:
    """``accept()`` out of descriptors (``EMFILE``): one line per interval, no traceback.
    asyncio pauses accepting for a second by itself; everything else goes to the default
    handler."""

    def handler(loop_: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == "socket.accept() out of system resource":
            exc = context.get("exception")
            logs.warning("accept", "accept() failed: {} (connections wait in the backlog)", exc)
            return
        loop_.default_exception_handler(context)

    loop.set_exception_handler(handler)
