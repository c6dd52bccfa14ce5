"""``nanoclaw-router``: the console script supervisord runs."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import NoReturn

from nanoclaw_common.alive import beating
from nanoclaw_common.channels.builtin import build_builtin_adapters
from nanoclaw_common.errors import ConfigError
from nanoclaw_common.lifecycle import GracefulStop
from nanoclaw_common.paths import Layout
from nanoclaw_common.program import run_program
from nanoclaw_common.settings import Settings
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


def serve(settings: Settings, layout: Layout) -> None:
    try:
        faults = Faults.from_environ(os.environ)
    except ValueError as exc:
        raise ConfigError(f"test faults: {exc}") from exc
    CentralStore.open(layout.central_db).close()  # the schema, before any loop runs
    central = AsyncCentral(layout.central_db)
    waker = make_waker(
        settings, layout, os.environ.get(WAKE_LOG_ENV), test_faults=faults.points.enabled
    )
    router = Router(settings, central, build_builtin_adapters(settings), waker, faults=faults)
    try:
        asyncio.run(_serve(router, GracefulStop(), layout))
    finally:
        close = getattr(waker, "close", None)
        if callable(close):
            close()
        central.close()


def main() -> NoReturn:
    """One router per data folder (``run/router.lock``): two would fight over the terminal
    socket and Telegram's long poll (409 Conflict)."""
    sys.exit(run_program("router", serve))


if __name__ == "__main__":
    main()
