"""``nanoclaw-proxy``: the credential proxy on ``$NANOCLAW_HOME/run/proxy/proxy.sock``.

Needs ``ANTHROPIC_API_KEY`` (and optionally ``ANTHROPIC_BASE_URL``) in its own environment;
no other program, and no container, ever holds the key. One proxy per data folder
(``run/proxy.lock``, taken by ``nanoclaw_common.program`` before anything here runs): a
second one exits with code 3 and leaves the live socket alone.
SIGTERM finishes in-flight requests (still accepting meanwhile) and exits 0; the socket
itself stays open for the next proxy (``server``, ``handover``).
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import NoReturn

from loguru import logger

from nanoclaw_common.alive import beating
from nanoclaw_common.errors import ConfigError
from nanoclaw_common.lifecycle import GracefulStop
from nanoclaw_common.paths import Layout
from nanoclaw_common.program import run_program
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore
from nanoclaw_proxy.startup import connection_limit, open_listener, raise_nofile_limit


async def run(settings: Settings, layout: Layout, listener: socket.socket, fd_limit: int) -> None:
    # Imported once the socket is bound: aiohttp and the app take most of the start-up, and
    # connections made meanwhile wait in the socket's backlog instead of being refused.
    from nanoclaw_proxy.app import make_app  # noqa: PLC0415
    from nanoclaw_proxy.guard import ConnectionGuard  # noqa: PLC0415
    from nanoclaw_proxy.server import serve as serve_app  # noqa: PLC0415

    stopped = asyncio.Event()
    GracefulStop().install_async(asyncio.get_running_loop(), stopped)
    guard = ConnectionGuard(
        total=connection_limit(fd_limit), per_peer=settings.proxy_peer_connections
    )
    app = make_app(settings, layout.central_db, guard)
    async with beating(layout, "proxy"):  # from a timer on the loop: requests may not come
        await serve_app(app, listener, stopped, drain_s=settings.proxy_drain_s)


def serve(settings: Settings, layout: Layout) -> None:
    if not settings.anthropic_api_key:
        raise ConfigError("ANTHROPIC_API_KEY is not set: the proxy has no key to add")
    fd_limit = raise_nofile_limit()
    listener, keeper = open_listener(layout, settings.proxy_keeper_linger_s)
    try:
        # The schema, before the loop runs (async code reaches central.db through doors).
        CentralStore.open(layout.central_db).close()
        asyncio.run(run(settings, layout, listener, fd_limit))
    finally:
        listener.close()
        if keeper is not None:
            keeper.close()  # the keeper holds the socket until the next proxy takes it
    logger.info("proxy stopped")


def main() -> NoReturn:
    sys.exit(run_program("proxy", serve))


if __name__ == "__main__":
    main()
