"""``nanoclaw-delivery``: the delivery worker (DESIGN.md §5, docs/delivery.md).

supervisord starts this directly. The first SIGTERM/SIGINT stops taking new rows, lets the
attempts in flight finish, logs the counters and exits 0; a second signal exits at once.
An error that escapes the loop is logged and ends the process non-zero, and supervisord
restarts it: every row's state is on disk, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import sys

from loguru import logger

from nanoclaw_common.channels.base import ChannelAdapter
from nanoclaw_common.channels.builtin import build_builtin_adapters
from nanoclaw_common.errors import ConfigError
from nanoclaw_common.lifecycle import GracefulStop
from nanoclaw_common.logs import setup_logging
from nanoclaw_common.paths import Layout
from nanoclaw_common.sandbox import Sandbox
from nanoclaw_common.settings import Settings, load_from_process
from nanoclaw_common.store import CentralStore
from nanoclaw_delivery.context import Deps, Offload
from nanoclaw_delivery.service import DeliveryService

log = logger.bind(component="delivery")


async def start_adapters(adapters: dict[str, ChannelAdapter]) -> None:
    """Start each adapter's clients. One that fails to start stays registered: its rows are
    retried (a missing or disconnected adapter is never "delivered")."""
    for channel_type, adapter in adapters.items():
        try:
            await adapter.start()
        except Exception as exc:
            log.opt(exception=exc).error("the {} adapter did not start: {!r}", channel_type, exc)


async def close_adapters(adapters: dict[str, ChannelAdapter]) -> None:
    for channel_type, adapter in adapters.items():
        try:
            await adapter.close()
        except Exception as exc:
            log.warning("closing the {} adapter failed: {!r}", channel_type, exc)


async def serve(settings: Settings, stop: GracefulStop) -> int:
    layout = Layout(settings.home_path)
    layout.ensure()
    central = CentralStore.open(layout.central_db)
    adapters = build_builtin_adapters(settings)
    sandbox = Sandbox(settings)
    offload = Offload()
    deps = Deps(
        settings=settings,
        layout=layout,
        central=central,
        adapters=adapters,
        waker=sandbox,
        groups=sandbox,
        offload=offload,
    )
    service = DeliveryService(deps, stop)
    stop.install_async(asyncio.get_running_loop(), service.stopped)
    try:
        await start_adapters(adapters)
        await service.run()
    finally:
        await close_adapters(adapters)
        offload.close()
        sandbox.close()
        central.close()
    return 0


def main() -> None:
    try:
        settings = load_from_process()
    except ConfigError as exc:
        print(f"nanoclaw-delivery: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_logging("delivery", settings.log_level, settings.secrets())
    stop = GracefulStop()
    try:
        code = asyncio.run(serve(settings, stop))
    except Exception as exc:
        logger.opt(exception=exc).critical("delivery died: {!r}", exc)
        sys.exit(1)
    sys.exit(code)


if __name__ == "__main__":
    main()
