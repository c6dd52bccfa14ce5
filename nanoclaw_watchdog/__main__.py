"""``nanoclaw-watchdog``: supervisord runs it as ``[eventlistener:watchdog]`` (``events=TICK_5``).

stdout is supervisord's protocol channel: this module takes the binary stream for the
protocol and points ``sys.stdout`` at stderr before anything else can print, so a stray
``print`` lands in the log instead of breaking the protocol. Logs go to stderr, which
supervisord writes to ``logs/watchdog.log``.

No signal handler: SIGTERM ends it at once (the default). It holds nothing a kill can lose:
a restart it was in the middle of is finished by the next watchdog (``Watchdog.resume``).
Errors talking to supervisord are logged and the next tick tries again; anything else ends
the process ("watchdog died", ``nanoclaw_common.program``) and supervisord restarts it.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import xmlrpc.client
from typing import NoReturn

from loguru import logger

from nanoclaw_common.errors import ConfigError
from nanoclaw_common.paths import Layout
from nanoclaw_common.program import run_program
from nanoclaw_common.settings import Settings
from nanoclaw_watchdog.rules import Limits
from nanoclaw_watchdog.supervisor import EventListener, Supervisor
from nanoclaw_watchdog.watchdog import Watchdog

log = logger.bind(component="watchdog")


def serve(watchdog: Watchdog, listener: EventListener) -> None:
    """Handle events until supervisord closes the pipe: a tick is a round of the rules;
    every other event (none is subscribed in our config) is acknowledged and ignored."""
    watchdog.resume()
    while (event := listener.next_event()) is not None:
        if event.name.startswith("TICK"):
            try:
                watchdog.tick(time.time())
            except (OSError, xmlrpc.client.Error) as exc:
                log.error("tick failed (supervisord unreachable?): {!r}", exc)
        listener.done()


def watch(listener: EventListener, settings: Settings, layout: Layout) -> None:
    if "SUPERVISOR_SERVER_URL" not in os.environ:
        raise ConfigError("run under supervisord, as an [eventlistener] (no SUPERVISOR_SERVER_URL)")
    watchdog = Watchdog(
        Limits.from_settings(settings),
        Supervisor.from_environ(os.environ),
        layout,
        self_name=os.environ.get("SUPERVISOR_PROCESS_NAME", "watchdog"),
    )
    log.info("watching: {}", watchdog.describe())
    serve(watchdog, listener)
    log.info("supervisord closed the event pipe: stopping")


def main() -> NoReturn:
    # The protocol's stream is taken before anything can print; a stray print lands in the
    # log (stderr), and run_program itself writes only to stderr.
    listener = EventListener(sys.stdin.buffer, sys.stdout.buffer)
    sys.stdout = sys.stderr
    sys.exit(run_program("watchdog", functools.partial(watch, listener)))


if __name__ == "__main__":
    main()
