"""One skeleton for the supervised programs: router, delivery, sweeper, proxy, watchdog.

Each program's ``main()`` is ``sys.exit(run_program(name, serve))``. ``run_program`` does,
in this order, what every program needs and none should do its own way:

1. logging first, to stderr through the masking sink (``logs.setup_logging``), so that even
   a bad setting is reported as a log record, never with ``print``;
2. the settings (``settings.load_from_process``); a bad one is logged and the program exits
   ``EXIT_CONFIG`` (2), which supervisord reports as FATAL after ``startretries``;
3. logging again, now with the configured level and every secret masked;
4. the data folder (``Layout.ensure``) and the program's lock, ``run/<name>.lock``: a second
   instance on the same data folder logs who holds it and exits ``EXIT_LOCKED`` (3) without
   touching anything the first one serves;
5. ``serve(settings, layout)``, whose return value is the exit code (None means 0). A
   ``ConfigError`` raised by it (a setting the program checks itself) exits 2 like a bad
   setting; any other uncaught error is logged as "<name> died" with its traceback (masked)
   and exits ``EXIT_DIED`` (1), and supervisord restarts the program.

The lock is an ``flock`` on a descriptor that is closed on exec: the kernel drops it when
the holder dies, even by SIGKILL, so a restart is never blocked by a dead predecessor, and
no child process (the proxy's socket keeper, podman) ever holds it.

Nothing here writes to stdout: the watchdog's stdout is supervisord's event protocol.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Final

from loguru import logger

from nanoclaw_common.errors import ConfigError, NanoclawError
from nanoclaw_common.logs import setup_logging
from nanoclaw_common.paths import Layout
from nanoclaw_common.settings import Settings, load_from_process

EXIT_OK: Final = 0
EXIT_DIED: Final = 1
EXIT_CONFIG: Final = 2
EXIT_LOCKED: Final = 3

Serve = Callable[[Settings, Layout], "int | None"]


class AlreadyRunning(NanoclawError):
    """Another process holds the program's lock on this data folder."""

    def __init__(self, name: str, lock_path: Path, holder: str) -> None:
        super().__init__(f"another {name} (pid {holder}) holds {lock_path}: not starting")
        self.name = name
        self.lock_path = lock_path
        self.holder = holder


def lock_path(layout: Layout, name: str) -> Path:
    return layout.run_dir / f"{name}.lock"


def take_lock(layout: Layout, name: str) -> int:
    """Hold ``run/<name>.lock`` (an exclusive ``flock``) and write our pid into it; the
    descriptor, to keep open for the life of the process. Raises ``AlreadyRunning``, naming
    the holder's pid, when another process holds it."""
    path = lock_path(layout, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AlreadyRunning(name, path, holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def run_program(name: str, serve: Serve) -> int:
    """Run one supervised program (see the module docstring); its exit code. ``name`` is the
    program's name in logs, in supervisord.conf and in ``run/<name>.lock``."""
    setup_logging(name)
    try:
        settings = load_from_process()
    except ConfigError as exc:
        logger.error("bad settings: {}", exc)
        return EXIT_CONFIG
    setup_logging(name, settings.log_level, settings.secrets())
    try:
        layout = Layout(settings.home_path)
        layout.ensure()
        lock = take_lock(layout, name)
    except AlreadyRunning as exc:
        logger.error("{}", exc)
        return EXIT_LOCKED
    except Exception as exc:
        logger.opt(exception=exc).critical("{} died: {!r}", name, exc)
        return EXIT_DIED
    try:
        code = serve(settings, layout)
    except ConfigError as exc:
        logger.error("bad settings: {}", exc)
        return EXIT_CONFIG
    except Exception as exc:
        logger.opt(exception=exc).critical("{} died: {!r}", name, exc)
        return EXIT_DIED
    finally:
        os.close(lock)
    return EXIT_OK if code is None else code
