"""``nanoclaw-delivery``: the delivery worker (DESIGN.md §5, docs/delivery.md).

supervisord starts this directly. The first SIGTERM/SIGINT stops taking new rows, lets the
attempts in flight finish, logs the counters and exits 0; a second signal exits at once.
An error that escapes the loop is logged ("delivery died") and ends the process non-zero
(``nanoclaw_common.program``), and supervisord restarts it: every row's state is on disk,
so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import sys
from collections.abc import Mapping
from typing import NoReturn

import apsw
from loguru import logger

from nanoclaw_common.alive import beating
from nanoclaw_common.channels.base import ChannelAdapter
from nanoclaw_common.channels.builtin import build_builtin_adapters
from nanoclaw_common.faults import CrashPoints
from nanoclaw_common.lifecycle import GracefulStop
from nanoclaw_common.paths import Layout
from nanoclaw_common.program import run_program
from nanoclaw_common.sandbox.group_image import GroupImageBuilder
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.async_central import AsyncCentral
from nanoclaw_common.store.sqlite import BUSY_TIMEOUT_MS
from nanoclaw_delivery.context import Deps, Offload
from nanoclaw_delivery.service import DeliveryService

log = logger.bind(component="delivery")


async def start_adapters(adapters: Mapping[str, ChannelAdapter]) -> None:
    """Start each adapter's clients. One that fails to start stays registered: its rows are
    retried (a missing or disconnected adapter is never "delivered")."""
    for channel_type, adapter in adapters.items():
        try:
            await adapter.start()
        except Exception as exc:
            log.opt(exception=exc).error("the {} adapter did not start: {!r}", channel_type, exc)


async def close_adapters(adapters: Mapping[str, ChannelAdapter]) -> None:
    for channel_type, adapter in adapters.items():
        try:
            await adapter.close()
        except Exception as exc:
            log.warning("closing the {} adapter failed: {!r}", channel_type, exc)


M_ARENA_MAX = -8  # glibc mallopt parameter


def tune_memory() -> None:
    """Process-wide memory settings, before the first connection and the first thread
    (measured in docs/performance.md, "Delivery"):

    - no SQLite lookaside buffer per connection: delivery keeps two connections per watched
      session, each running a few tiny queries; the default lookaside (about 45 KB each,
      allocated up front) bought no measurable speed and cost 4–5 MB at 50 sessions;
    - no SQLite page cache to speak of (``small_page_cache``);
    - at most two glibc malloc arenas: the session-DB writes run on a pool of threads, and
      one arena per thread fragments SQLite's small allocations across them (1–2 MB)."""
    apsw.shutdown()
    apsw.config(apsw.SQLITE_CONFIG_LOOKASIDE, 0, 0)
    apsw.initialize()
    apsw.connection_hooks.append(small_page_cache)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(M_ARENA_MAX, 2)


def small_page_cache(connection: apsw.Connection) -> None:
    """Give a new connection's page cache back at once (an apsw connection hook).

    SQLite's page cache takes a bulk of 20 pages (about 88 KB) when a connection reads its
    first page, whatever the connection will need: about 9 MB at 50 watched sessions, most of
    delivery's SQLite memory. ``cache_size=0`` frees the bulk (the cache is empty at that
    point) and keeps further pages to those in use. Delivery loses nothing measurable by it
    (same latency and CPU in an A/B run): the container's commits to ``outbound.db`` empty
    that file's cache between two of delivery's reads anyway, and a page read again comes
    from the kernel's page cache. The busy timeout comes first because reading the schema
    for the pragma may meet a writer's lock."""
    connection.set_busy_timeout(BUSY_TIMEOUT_MS)
    connection.execute("PRAGMA cache_size=0")


def make_deps(
    settings: Settings,
    layout: Layout,
    central: AsyncCentral,
    faults: CrashPoints | None = None,
) -> Deps:
    """Delivery's doors to the outside world, as production uses them. No sandbox: delivery
    never starts or stops a container (the sweeper does), so podman-py is never imported
    here; image builds after an approval run the podman command line. ``faults``: the
    test-only crash points (disarmed in production)."""
    return Deps(
        settings=settings,
        layout=layout,
        central=central,
        adapters=build_builtin_adapters(settings),
        images=GroupImageBuilder(settings),
        offload=Offload(),
        terminal_patience_s=settings.terminal_patience_s,
        faults=faults or CrashPoints(),
    )


def migrate(layout: Layout) -> None:
    """Bring central.db's schema up to date (off the loop: it may wait for a lock)."""
    CentralStore.open(layout.central_db).close()


async def serve(
    settings: Settings, layout: Layout, stop: GracefulStop, faults: CrashPoints | None = None
) -> None:
    # The schema first, then the doors async code reaches central.db through (each opens
    # its connections on its own thread).
    await asyncio.to_thread(migrate, layout)
    central = AsyncCentral(layout.central_db, readers=1)
    deps = make_deps(settings, layout, central, faults)
    service = DeliveryService(deps, stop)
    stop.install_async(asyncio.get_running_loop(), service.stopped)
    try:
        await start_adapters(deps.adapters)
        async with beating(layout, "delivery"):  # proof of life for the watchdog
            await service.run()
    finally:
        await close_adapters(deps.adapters)
        deps.offload.close()
        await asyncio.to_thread(central.close)


def run(settings: Settings, layout: Layout) -> None:
    tune_memory()
    asyncio.run(
        serve(settings, layout, GracefulStop(), CrashPoints.from_environ(os.environ, "delivery"))
    )


def main() -> NoReturn:
    """One delivery per data folder (``run/delivery.lock``): two would both send the same
    rows."""
    sys.exit(run_program("delivery", run))


if __name__ == "__main__":
    main()
