"""The proxy's start-up, before anything heavy is imported: the sooner the socket is bound,
the sooner a first start (or a start without a keeper) answers. In this order:

0. (``nanoclaw_common.program``, before this module runs) ``run/proxy.lock``, the same lock
   every program takes: a second proxy on the same data folder exits at once and never
   touches the live socket;
1. ``raise_nofile_limit``: the soft descriptor limit up to the hard one (every connection
   is a descriptor); the guard keeps the total below it (``connection_limit``);
2. ``open_listener``: the socket from the keeper when one holds it, else a new one and a
   new keeper (``handover``).

Stdlib and loguru only.
"""

from __future__ import annotations

import resource
import socket
from pathlib import Path
from typing import Final

from loguru import logger

from nanoclaw_common.paths import Layout
from nanoclaw_proxy import handover

log = logger.bind(component="proxy")

RESERVED_FDS: Final = 256  # upstream connections, the database, logs: never given to clients


def raise_nofile_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return int(soft if soft != resource.RLIM_INFINITY else hard)


def connection_limit(fd_limit: int) -> int:
    """How many client connections the guard admits in all."""
    return max(64, fd_limit - RESERVED_FDS)


def keeper_control(layout: Layout) -> Path:
    return layout.run_dir / "proxy-keeper.sock"


def open_listener(layout: Layout, linger_s: float) -> tuple[socket.socket, socket.socket | None]:
    """The listening socket of ``run/proxy/proxy.sock``: the keeper's, or a new one with a
    new keeper. Returns (listener, the keeper's control connection or None)."""
    path = layout.proxy_socket
    taken = handover.take_listener(keeper_control(layout), path)
    if taken is not None:
        log.info("listening on {} (the socket the keeper held)", path)
        return taken
    listener = handover.bind_listener(path)
    try:
        pid = handover.spawn_keeper(listener, path, keeper_control(layout), linger_s)
    except OSError as exc:
        # Serving matters more than the handover: without a keeper a restart refuses
        # connections for as long as it takes (the runner waits them out).
        log.warning("no socket keeper ({}): restarts will refuse connections briefly", exc)
        return listener, None
    log.info("listening on {} (new socket, keeper pid {})", path, pid)
    # Attach to the keeper like any later proxy: its control connection is our liveness.
    attached = handover.take_listener(keeper_control(layout), path, timeout_s=15.0)
    if attached is None:
        log.warning("the socket keeper did not answer: restarts will refuse connections briefly")
        return listener, None
    attached[0].close()  # the same socket as ours
    return listener, attached[1]
