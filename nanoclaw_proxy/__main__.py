"""``nanoclaw-proxy``: the credential proxy on ``$NANOCLAW_HOME/run/proxy.sock``.

Needs ``ANTHROPIC_API_KEY`` (and optionally ``ANTHROPIC_BASE_URL``) in its own environment;
no other program, and no container, ever holds the key. SIGTERM finishes in-flight requests
and exits 0.
"""

from __future__ import annotations

import asyncio
import sys

from loguru import logger

from nanoclaw_common.alive import beating
from nanoclaw_common.errors import ConfigError
from nanoclaw_common.lifecycle import GracefulStop
from nanoclaw_common.logs import setup_logging
from nanoclaw_common.paths import Layout
from nanoclaw_common.settings import Settings, load_from_process
from nanoclaw_proxy.app import make_app, serve

EXIT_CONFIG = 2


async def run(settings: Settings) -> None:
    layout = Layout(settings.home_path)
    layout.ensure()
    stopped = asyncio.Event()
    GracefulStop().install_async(asyncio.get_running_loop(), stopped)
    async with beating(layout, "proxy"):  # from a timer on the loop: requests may not come
        await serve(make_app(settings, layout.central_db), layout.proxy_socket, stopped)


def main() -> int:
    try:
        settings = load_from_process()
    except ConfigError as exc:
        setup_logging("proxy")
        logger.error("{}", exc)
        return EXIT_CONFIG
    setup_logging("proxy", settings.log_level, settings.secrets())
    if not settings.anthropic_api_key:
        logger.error("ANTHROPIC_API_KEY is not set: the proxy has no key to add")
        return EXIT_CONFIG
    asyncio.run(run(settings))
    logger.info("proxy stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
