"""``nanoclaw-router``: the console script supervisord runs."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sys
from pathlib import Path

from loguru import logger

from nanoclaw_common.alive import beating
from nanoclaw_common.channels.builtin import build_builtin_adapters
from nanoclaw_common.errors import ConfigError
from nanoclaw_common.lifecycle import GracefulStop
from nanoclaw_common.logs import setup_logging
from nanoclaw_common.paths import Layout
from nanoclaw_common.settings import Settings, load_from_process
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.async_central import AsyncCentral
from nanoclaw_common.wake import Waker
from nanoclaw_router.app import Router
from nanoclaw_router.faults import WAKE_LOG_ENV, Faults, RecordingWaker


def make_waker(
    settings: Settings, layout: Layout, wake_log: str | None, *, test_faults: bool = False
) -> Waker:
    if wake_log:
        return RecordingWaker(Path(wake_log), layout.central_db)  # tests only
    from nanoclaw_common.sandbox import Sandbox  # noqa: PLC0415 - podman only when used

    return Sandbox(settings, test_faults=test_faults)


async def _serve(router: Router, stop: GracefulStop, layout: Layout) -> None:
    stopped = asyncio.Event()
    stop.install_async(asyncio.get_running_loop(), stopped)
    async with beating(layout, "router"):  # proof of life for the watchdog, from this loop
        await router.run(stopped)


def single_instance(layout: Layout) -> int | None:
    """Hold ``run/router.lock`` for the life of the process; None if another router has it.
    Two routers on one data folder would fight over the terminal socket and Telegram's
    long poll (409 Conflict)."""
    fd = os.open(layout.run_dir / "router.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def main() -> None:
    try:
        settings = load_from_process()
        faults = Faults.from_environ(os.environ)
    except (ConfigError, ValueError) as exc:
        print(f"nanoclaw-router: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_logging("router", settings.log_level, settings.secrets())
    layout = Layout(settings.home_path)
    layout.ensure()
    if single_instance(layout) is None:
        logger.error("another router is running on {}", layout.home)
        sys.exit(1)
    CentralStore.open(layout.central_db).close()  # the schema, before any loop runs
    central = AsyncCentral(layout.central_db)
    waker = make_waker(
        settings, layout, os.environ.get(WAKE_LOG_ENV), test_faults=faults.points.enabled
    )
    router = Router(settings, central, build_builtin_adapters(settings), waker, faults=faults)
    try:
        asyncio.run(_serve(router, GracefulStop(), layout))
    except Exception:
        logger.exception("router crashed")
        sys.exit(1)
    finally:
        close = getattr(waker, "close", None)
        if callable(close):
            close()
        central.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
