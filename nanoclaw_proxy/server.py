"""Running the proxy app: one proxy per data folder, its listening socket, graceful stops.

Start-up happens before this module (and aiohttp) is imported: ``startup``.

``serve`` accepts through the guard until stopped. A graceful stop keeps accepting and
serving while calls are in flight (a message that comes during a restart is answered at
once, by the stopping proxy; its response says ``Connection: close``), then stops
accepting as soon as none is in flight, or at ``drain_s``: the keeper's copy of the socket
keeps new connections waiting in the backlog for the next proxy.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from typing import Any, Final

from aiohttp import web
from loguru import logger

from nanoclaw_proxy import handover
from nanoclaw_proxy.app import STATE
from nanoclaw_proxy.guard import ConnectionGuard, install_accept_error_log

log = logger.bind(component="proxy")

MAX_HEAD_LINE: Final = 16 * 1024
# After it stops accepting, a stopping proxy waits this long for requests on connections it
# accepted just before: their bytes may be written but not yet read (a loaded machine takes
# its time), and closing such a connection loses the request (the client sees EOF).
FRESH_GRACE_S: Final = 0.5


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
        await _stop_accepting(loop, server, listener)
        # Connections accepted just before may carry a request already.
        await _wait_fresh(guard, deadline)
        await _wait_idle(state, deadline)
        if state.in_flight:
            log.warning(
                "stopping with {} call(s) still in flight after {:.0f} s", state.in_flight, drain_s
            )
    finally:
        await runner.cleanup()


async def _stop_accepting(
    loop: asyncio.AbstractEventLoop, server: asyncio.Server, listener: socket.socket
) -> None:
    """Stop accepting, then close our copy of the socket (the keeper's stays open).

    asyncio makes the transport of an accepted connection in a task that runs one loop
    iteration after the ``accept()``, and that fails once the server is closed: the
    connection is neither served nor closed (its descriptor leaks, and its number, reused,
    can later unregister another socket). So accepting stops first, the pending tasks run,
    and only then does the server close. Closing at once lost about one connection in
    twenty restarts under a tight loop of clients (tests/integration/agents/test_proxy_drain.py).
    """
    loop.remove_reader(listener.fileno())
    await asyncio.sleep(0)  # the accept tasks already scheduled make their transports
    server.close()


async def _wait_fresh(guard: ConnectionGuard, deadline: float) -> None:
    """Until no connection may still carry an unread request: none opening (made, its
    ``connection_made`` still to come), none ``fresh``."""
    loop = asyncio.get_running_loop()
    while time.monotonic() < deadline:
        if not guard.may_carry_a_request(loop.time(), FRESH_GRACE_S):
            return
        await asyncio.sleep(0.02)


async def _wait_idle(state: Any, deadline: float) -> None:
    while state.in_flight and time.monotonic() < deadline:
        try:
            await asyncio.wait_for(state.idle.wait(), timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return
