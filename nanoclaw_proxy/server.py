"""Running the proxy app: one proxy per data folder, its listening socket, graceful stops.

Start-up (``__main__``), in this order:
1. ``acquire_lock``: ``run/proxy.lock`` (flock, as router and delivery). A second proxy on
   the same data folder exits at once and never touches the live socket;
2. ``raise_nofile_limit``: the soft descriptor limit up to the hard one (every connection
   is a descriptor); the guard keeps the total below it;
3. ``open_listener``: the socket from the keeper when one holds it, else a new one and a
   new keeper (``handover``).

``serve`` accepts through the guard until stopped. A graceful stop keeps accepting and
serving while calls are in flight (a message that comes during a restart is answered at
once, by the stopping proxy; its response says ``Connection: close``), then stops
accepting as soon as none is in flight, or at ``drain_s``: the keeper's copy of the socket
keeps new connections waiting in the backlog for the next proxy.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import resource
import socket
import sys
import time
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from loguru import logger

from nanoclaw_common.paths import Layout
from nanoclaw_proxy import handover
from nanoclaw_proxy.app import STATE
from nanoclaw_proxy.guard import ConnectionGuard, install_accept_error_log

log = logger.bind(component="proxy")

RESERVED_FDS: Final = 256  # upstream connections, the database, logs: never given to clients
MAX_HEAD_LINE: Final = 16 * 1024
LOCK_FILE: Final = "proxy.lock"


def acquire_lock(layout: Layout) -> int | None:
    """Hold ``run/proxy.lock`` for the life of the process; None if another proxy has it."""
    fd = os.open(layout.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


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


def _server_kwargs() -> dict[str, Any]:
    # Python 3.13 unlinks a Unix server's socket file on close by default; the keeper's
    # copy of the socket must stay reachable at its path.
    return {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}


async def serve(
    app: web.Application,
    listener: socket.socket,
    stopped: asyncio.Event,
    *,
    drain_s: float,
) -> None:
    """Serve ``app`` on ``listener`` through its guard until ``stopped``; then drain (see
    the module docstring) and clean up."""
    state = app[STATE]
    guard: ConnectionGuard = state.guard
    runner = web.AppRunner(
        app,
        handle_signals=False,
        # The guard cuts idle connections first; this is aiohttp's own backstop.
        keepalive_timeout=guard.idle_timeout_s * 2,
        max_line_size=MAX_HEAD_LINE,
        max_field_size=MAX_HEAD_LINE,
        access_log=None,
    )
    await runner.setup()
    loop = asyncio.get_running_loop()
    install_accept_error_log(loop, guard.logs)
    assert runner.server is not None
    listener.setblocking(False)
    server = await loop.create_unix_server(
        guard.factory(runner.server), sock=listener, backlog=handover.BACKLOG, **_server_kwargs()
    )
    log.info("serving (up to {} connections, {} per container)", guard.total, guard.per_peer)
    try:
        await stopped.wait()
        state.draining = True
        deadline = time.monotonic() + drain_s
        if state.in_flight:
            log.info("stopping: {} call(s) in flight, still accepting meanwhile", state.in_flight)
        await _wait_idle(state, deadline)
        server.close()  # our copy of the socket: the keeper's stays open
        # Connections accepted just before the close may carry a request already.
        await asyncio.sleep(0)
        await _wait_idle(state, deadline)
        if state.in_flight:
            log.warning(
                "stopping with {} call(s) still in flight after {:.0f} s", state.in_flight, drain_s
            )
    finally:
        await runner.cleanup()


async def _wait_idle(state: Any, deadline: float) -> None:
    while state.in_flight and time.monotonic() < deadline:
        try:
            await asyncio.wait_for(state.idle.wait(), timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return
