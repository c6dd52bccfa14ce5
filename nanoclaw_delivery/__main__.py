"""``nanoclaw-delivery``: the delivery worker (DESIGN.md §5, docs/delivery.md).

supervisord starts this directly. The first SIGTERM/SIGINT stops taking new rows, lets the
attempts in flight finish, logs the counters and exits 0; a second signal exits at once.
An error that escapes the loop is logged and ends the process non-zero, and supervisord
restarts it: every row's state is on disk, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import sys
from collections.abc import Mapping

import apsw
from loguru import logger

from nanoclaw_common.alive import beating
from nanoclaw_common.channels.base import ChannelAdapter
from nanoclaw_common.channels.builtin import build_builtin_adapters
from nanoclaw_common.errors import ConfigError, NanoclawError
from nanoclaw_common.faults import CrashPoints
from nanoclaw_common.lifecycle import GracefulStop
from nanoclaw_common.logs import setup_logging
from nanoclaw_common.paths import Layout
from nanoclaw_common.sandbox.group_image import GroupImageBuilder
from nanoclaw_common.settings import Settings, load_from_process
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


class AlreadyRunning(NanoclawError):
    """Another delivery process holds the data folder's delivery lock."""


def single_instance(layout: Layout) -> int:
    """Hold ``run/delivery.lock`` for the life of the process. Two delivery processes on one
    data folder would both send the same rows; the kernel drops the lock when the holder
    dies (even by SIGKILL), so a restart is never blocked by a dead predecessor."""
    fd = os.open(layout.run_dir / "delivery.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AlreadyRunning(
            f"another nanoclaw-delivery (pid {holder}) serves {layout.home}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


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


async def serve(settings: Settings, stop: GracefulStop, faults: CrashPoints | None = None) -> int:
    layout = Layout(settings.home_path)
    layout.ensure()
    lock_fd = single_instance(layout)
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
        os.close(lock_fd)
    return 0


def main() -> None:
    try:
        settings = load_from_process()
    except ConfigError as exc:
        print(f"nanoclaw-delivery: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_logging("delivery", settings.log_level, settings.secrets())
    tune_memory()
    stop = GracefulStop()
    try:
        code = asyncio.run(serve(settings, stop, CrashPoints.from_environ(os.environ, "delivery")))
    except AlreadyRunning as exc:
        logger.critical("{}", exc)
        sys.exit(1)
    except Exception as exc:
        logger.opt(exception=exc).critical("delivery died: {!r}", exc)
        sys.exit(1)
    sys.exit(code)


if __name__ == "__main__":
    main()
