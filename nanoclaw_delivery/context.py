"""What every part of delivery needs, gathered once in ``main()`` (or a test) and passed down.

Delivery talks to the outside world through three doors, each injectable:
- ``adapters``: the channels' outbound halves (tests: real adapters against fake servers, or
  a recording adapter);
- ``images``: builds a group's image after an approved ``install_packages`` (the podman
  command line; ``nanoclaw_common.sandbox.group_image``);
- ``clock``: the current time in epoch ms (tests pass a settable clock; nothing sleeps).

``faults`` holds the test-only crash points of docs/delivery.md's crash table
(``delivery.<moment>``, armed through ``NANOCLAW_TEST_FAULTS``; production never sets it).

Delivery never starts or stops a container, and never imports podman-py (about 10 MB of RSS):
it commits rows (``trigger=1``) into a session's ``inbound.db`` and the running runner sees
them at once (inotify), while the sweeper wakes a stopped session with due rows on its next
pass (about a second). Restarts after an approval are ``restart_requests`` rows in
``central.db`` that the sweeper carries out.

An image build blocks for minutes, so it runs on a worker thread through ``Offload``; the
event loop keeps delivering for every other session. ``central.db`` is reached only through
``Deps.central`` (``AsyncCentral``: ``await deps.central.read(fn)`` / ``write(fn)``), so a
lock another process holds on it waits on a thread of its own, never on the loop, and
delivers on for every session whose row needs no central write.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from nanoclaw_common.channels.base import ChannelAdapter
from nanoclaw_common.clock import now_ms
from nanoclaw_common.diskfull import FullDiskLog
from nanoclaw_common.faults import CrashPoints
from nanoclaw_common.offload import Lane
from nanoclaw_common.paths import Layout
from nanoclaw_common.settings import Settings
from nanoclaw_common.stall import StallGuard
from nanoclaw_common.store.async_central import AsyncCentral

T = TypeVar("T")
Clock = Callable[[], int]

# How long a reply to the terminal chat keeps being retried while no ``nanoclaw chat`` is
# attached (docs/delivery.md, "States"): the user may have closed it for the night.
TERMINAL_PATIENCE_S: Final = 24 * 3600.0


class ImageBuilder(Protocol):
    """Builds a group's image after an approval (``GroupImageBuilder`` in production)."""

    def build_group_image(self, agent_group_id: str, apt: Sequence[str], pip: Sequence[str]) -> str:
        """Build the group's image with these packages added to the ones it already has,
        record the packages and the tag in ``container_configs`` (only on success), and
        return the tag. Raises on failure (the message is shown to the agent)."""


class Offload:
    """Runs blocking calls away from the event loop, on two ``Lane``s. ``inline=True``
    (tests) runs them in the loop's thread, which keeps tests deterministic."""

    def __init__(self, *, inline: bool = False, db_threads: int = 8) -> None:
        self.inline = inline
        # One thread for image builds: minutes long, rare, and never two at once for the
        # same install (the second would only wait for podman's storage lock).
        self._slow = Lane("build", 1, inline=inline)
        # Session-DB writes: each commit of a rollback-journal file waits for fsyncs (about a
        # millisecond, far more on a busy disk). In the loop's thread those waits would add up
        # across sessions; in a pool, commits to different files overlap (apsw releases the
        # GIL). A session's calls are still one at a time: its task awaits each.
        self._db = Lane("db", db_threads, inline=inline)

    async def db(self, func: Callable[..., T], *args: object) -> T:
        return await self._db.run(func, *args)

    async def slow(self, func: Callable[..., T], *args: object) -> T:
        return await self._slow.run(func, *args)

    def close(self) -> None:
        for lane in (self._slow, self._db):
            lane.shutdown(wait=False, cancel_pending=True)


class PairLimiter:
    """Agent-to-agent rate limit: at most ``limit`` messages per ``window_ms`` for each
    (source group, target group) pair. In memory: a restart forgets the window, which at
    worst lets one extra burst through; the point is to break runaway ping-pong loops.
    A message counts once: the caller asks only on a row's first attempt, so retries of one
    message do not use up the pair's budget."""

    def __init__(self, limit: int, window_ms: int = 60_000) -> None:
        self.limit = limit
        self.window_ms = window_ms
        self._sent: dict[tuple[str, str], deque[int]] = {}

    def allow(self, source: str, target: str, now: int) -> bool:
        times = self._sent.setdefault((source, target), deque())
        while times and times[0] <= now - self.window_ms:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True


@dataclass
class Counters:
    """Process totals, logged at shutdown."""

    delivered: int = 0
    retried: int = 0
    failed: int = 0
    denied: int = 0
    resent_after_restart: int = 0
    actions: int = 0
    in_flight: int = 0

    def summary(self) -> str:
        return (
            f"delivered={self.delivered} retried={self.retried} failed={self.failed}"
            f" denied={self.denied} resent_after_restart={self.resent_after_restart}"
            f" actions={self.actions} in_flight={self.in_flight}"
        )


@dataclass
class NoticeState:
    """Whether an owner-notice pass runs now, and whether another was asked for meanwhile
    (``notify.send_owner_notices``): plain flags, not a lock, because tests drive one Deps
    from several event loops."""

    running: bool = False
    again: bool = False


@dataclass
class Deps:
    settings: Settings
    layout: Layout
    central: AsyncCentral
    adapters: Mapping[str, ChannelAdapter]
    images: ImageBuilder
    offload: Offload
    clock: Clock = now_ms
    counters: Counters = field(default_factory=Counters)
    a2a_limiter: PairLimiter | None = None
    background: set[asyncio.Task[None]] = field(default_factory=set)
    notices: NoticeState = field(default_factory=NoticeState)
    terminal_patience_s: float = TERMINAL_PATIENCE_S
    # Writes refused for want of space, logged as conditions (nanoclaw_common.diskfull).
    disk: FullDiskLog = field(default_factory=FullDiskLog)
    # Reads of a session's container-written files, each bounded in time (stall.py).
    session_io: StallGuard = field(init=False)
    # Test-only crash points (``nanoclaw_common.faults``); disarmed unless a test armed them.
    faults: CrashPoints = field(default_factory=CrashPoints)

    def __post_init__(self) -> None:
        if self.a2a_limiter is None:
            self.a2a_limiter = PairLimiter(self.settings.a2a_max_per_minute)
        self.session_io = StallGuard(
            self.settings.session_io_limit_s, name="session-io", inline=self.offload.inline
        )

    async def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run work that may take seconds (a pass over the owner-notice queue: DMs) beside
        the session's drain instead of inside it. Inline when ``offload`` is (tests). The
        work must be durable on its own: a SIGKILL loses the task, not what it was for."""
        if self.offload.inline:
            await coro
            return
        task = asyncio.create_task(coro)
        self.background.add(task)  # a reference, or the task could be collected mid-run
        task.add_done_callback(self.background.discard)

    @property
    def staging_root(self) -> Path:
        """Host-private copies of outbox files (``run/`` is mode 0700)."""
        return self.layout.run_dir / "delivery-staging"

    def secrets(self) -> list[str]:
        return self.settings.secrets()
