"""The connection policy, applied to every SQLite connection we open, and the one way to
write: ``with db.write():`` (``BEGIN IMMEDIATE``, commit on success, roll back on anything).

apsw never opens a transaction implicitly, and its ``with conn:`` starts a *deferred*
savepoint. A deferred transaction that reads and then writes can fail to upgrade its lock
(SQLITE_BUSY without waiting), so every write here takes the write lock up front.

A ``central.db`` connection waits up to ``BUSY_TIMEOUT_MS`` for another process's lock, so it
is never used on a thread that runs an asyncio event loop: async code goes through
``async_central.AsyncCentral`` (docs/internals.md, "Central DB from async code"). Each call
checks it (``off_the_loop``): a call on a loop is logged with where it came from, once per
place, and raises ``OnEventLoop`` when ``NANOCLAW_TEST_CENTRAL_OFF_LOOP=1`` (every test run
sets it, so a test that reaches such a call fails). The one exception is a connection made
``loop_safe``: its busy timeout is zero, so it never waits (the ``data_version`` probe).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any, Final

import apsw
from loguru import logger

from nanoclaw_common.errors import AlreadyExists
from nanoclaw_common.store import session_vfs

BUSY_TIMEOUT_MS = (
    5000  # three processes share central.db; apsw's helper default (100 ms) is too short
)
# For the host's connections to a container's database: the runner holds its lock for a
# commit (milliseconds); a container that holds it longer is attacking, and each host read
# that waits for it must end soon (a reader waits on a worker, never a loop: stall.py).
CONTAINER_FILE_BUSY_TIMEOUT_MS = 1000
STRICT_ENV: Final = "NANOCLAW_TEST_CENTRAL_OFF_LOOP"
#: Tests: a central.db call on an event loop raises instead of being logged.
strict_off_loop = os.environ.get(STRICT_ENV) == "1"
#: Calls made directly from these folders are let through (tests, looking at central.db
#: from outside the program under test, as another process would).
exempt_callers: tuple[str, ...] = ()
# Where a reported call is said to come from: the first frame outside the stores (and the
# context managers their transactions are).
_SKIPPED: Final = (os.path.dirname(os.path.abspath(__file__)), contextlib.__file__)
_door = threading.local()  # ``door.open``: an inline door runs a call on this thread
_reported: set[tuple[str, int]] = set()


class OnEventLoop(RuntimeError):
    """A central.db call on a thread that runs an asyncio event loop (tests only)."""


@contextmanager
def inline_door() -> Iterator[None]:
    """Calls on this thread are a door's (``AsyncCentral.inline``, tests), even on a loop."""
    was = getattr(_door, "open", False)
    _door.open = True
    try:
        yield
    finally:
        _door.open = was


def off_the_loop() -> None:
    """Refuse (tests) or report (production) a central.db call on an event loop's thread."""
    events = sys.modules.get("asyncio.events")
    # asyncio may not even be imported (the sweeper, the CLI): then there is no loop.
    if events is None or events._get_running_loop() is None or getattr(_door, "open", False):
        return
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_SKIPPED):
        frame = frame.f_back
    where = (frame.f_code.co_filename, frame.f_lineno)
    if exempt_callers and where[0].startswith(exempt_callers):
        return
    message = f"central.db used on the event loop at {where[0]}:{where[1]}"
    if strict_off_loop:
        raise OnEventLoop(message + " (docs/internals.md, 'Central DB from async code')")
    if where not in _reported:
        _reported.add(where)
        logger.bind(component="store").warning("{}: it can stall the loop", message)


SqlParams = Sequence[Any] | dict[str, Any]
# Any SQLite error (busy past the timeout, a damaged file, a missing table), for callers
# outside the store, which never import apsw.
StoreError = apsw.Error


@contextmanager
def refusing_duplicates(what: str) -> Iterator[None]:
    """A UNIQUE (or primary key) constraint failing in the block raises ``AlreadyExists(what)``,
    so a caller outside the store refuses a duplicate without matching SQLite's error text."""
    try:
        yield
    except apsw.ConstraintError as exc:
        # The extended result code names the constraint (apsw's stubs do not declare it).
        code = getattr(exc, "extendedresult", None)
        if code in (apsw.SQLITE_CONSTRAINT_UNIQUE, apsw.SQLITE_CONSTRAINT_PRIMARYKEY):
            raise AlreadyExists(what) from exc
        raise


class Mode(Enum):
    CENTRAL = "central"  # WAL, synchronous=NORMAL (safe in WAL)
    SESSION = "session"  # journal_mode=DELETE: read across a bind mount, maybe read-only
    SESSION_READONLY = "session-readonly"


class Database:
    """One apsw connection with our policy. Used only by the store modules, which hold the SQL."""

    def __init__(
        self,
        path: Path | str,
        mode: Mode,
        *,
        create: bool = True,
        max_value_bytes: int | None = None,
        container_file: bool = False,
        loop_safe: bool = False,
    ) -> None:
        """``max_value_bytes`` sets ``SQLITE_LIMIT_LENGTH`` on the connection: no string or
        blob longer than that is ever materialized by a query (``TooBigError`` instead). For
        connections to files a container writes, so a hostile row cannot make us allocate
        what it stored (a 100 MB column would otherwise be read whole). ``container_file``: the file
        sits in a folder the container writes (``outbound.db``, opened by the host): only
        regular files are opened, and no open can block (``session_vfs``).

        ``loop_safe`` (central.db only): a busy timeout of zero, so a call never waits for a
        lock (it raises ``apsw.BusyError`` instead) and may be made on an event loop."""
        self.path = Path(path)
        self.mode = mode
        # Only central.db's calls are checked: session DBs are the caller's business.
        self._guarded = mode is Mode.CENTRAL and not loop_safe
        self._check()
        if mode is Mode.SESSION_READONLY:
            flags = apsw.SQLITE_OPEN_READONLY
        else:
            flags = apsw.SQLITE_OPEN_READWRITE
            if create:
                flags |= apsw.SQLITE_OPEN_CREATE
        if mode is not Mode.CENTRAL:
            # Session files sit in folders the container can write (or next to them): a
            # planted symlink must not steer a (root) host process to another database, such
            # as central.db.
            flags |= apsw.SQLITE_OPEN_NOFOLLOW
        if mode is Mode.CENTRAL and create:
            _create_private(self.path)
        vfs = session_vfs.vfs_name() if container_file else None
        self.conn = apsw.Connection(str(self.path), flags=flags, vfs=vfs)
        if loop_safe:
            busy_timeout_ms = 0
        elif container_file:
            busy_timeout_ms = CONTAINER_FILE_BUSY_TIMEOUT_MS
        else:
            busy_timeout_ms = BUSY_TIMEOUT_MS
        self.conn.setbusytimeout(busy_timeout_ms)
        if max_value_bytes is not None:
            self.conn.limit(apsw.SQLITE_LIMIT_LENGTH, max_value_bytes)
        # Double-quoted strings are identifiers, never literals: a typo must fail loudly.
        self.conn.config(apsw.SQLITE_DBCONFIG_DQS_DML, 0)
        self.conn.config(apsw.SQLITE_DBCONFIG_DQS_DDL, 0)
        if mode is Mode.CENTRAL:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
        elif mode is Mode.SESSION:
            self.conn.execute("PRAGMA journal_mode=DELETE")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA foreign_keys=ON")
        self._depth = 0

    def _check(self) -> None:
        if self._guarded:
            off_the_loop()

    @contextmanager
    def write(self) -> Iterator[None]:
        """One write transaction: committed when the block ends, rolled back when it raises.
        A nested block is a savepoint inside the outer transaction: when it raises, its own
        writes are undone (and the error goes on to the outer block, which rolls back too
        unless it catches it); when it ends, its writes commit or roll back with the outer
        transaction."""
        self._check()
        if self._depth:
            savepoint = f"nested_{self._depth}"
            self.conn.execute(f"SAVEPOINT {savepoint}")
            self._depth += 1
            try:
                yield
            except BaseException:
                # After SQLITE_FULL and the like SQLite may have rolled back the whole
                # transaction, savepoints included: nothing is left to undo.
                if not self.conn.getautocommit():
                    self.conn.execute(f"ROLLBACK TO {savepoint}")
                    self.conn.execute(f"RELEASE {savepoint}")
                raise
            else:
                self.conn.execute(f"RELEASE {savepoint}")
            finally:
                self._depth -= 1
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            # SQLite rolls back by itself after some errors (SQLITE_FULL, SQLITE_IOERR, ...):
            # a ROLLBACK then fails and would hide the real error ("database or disk is full")
            # behind "cannot rollback - no transaction is active".
            if not self.conn.getautocommit():
                self.conn.execute("ROLLBACK")
            raise
        self._depth = 0
        try:
            self.conn.execute("COMMIT")
        except BaseException:
            # COMMIT can fail (busy past the timeout, disk full); never leave the tx open.
            if not self.conn.getautocommit():
                self.conn.execute("ROLLBACK")
            raise

    @contextmanager
    def read(self) -> Iterator[None]:
        """A consistent snapshot across several SELECTs (a deferred transaction)."""
        self._check()
        if self._depth:
            yield
            return
        self.conn.execute("BEGIN")
        self._depth = 1
        try:
            yield
        finally:
            self._depth = 0
            self.conn.execute("COMMIT")

    def execute(self, sql: str, params: SqlParams = ()) -> None:
        self._check()
        self.conn.execute(sql, params)

    def executescript(self, sql: str) -> None:
        self._check()
        self.conn.execute(sql)

    def all(self, sql: str, params: SqlParams = ()) -> list[tuple[Any, ...]]:
        self._check()
        return self.conn.execute(sql, params).fetchall()

    def one(self, sql: str, params: SqlParams = ()) -> tuple[Any, ...] | None:
        self._check()
        for row in self.conn.execute(sql, params):
            return tuple(row)
        return None

    def scalar(self, sql: str, params: SqlParams = ()) -> Any:
        row = self.one(sql, params)
        return None if row is None else row[0]

    def changes(self) -> int:
        return self.conn.changes()

    def data_version(self) -> int:
        """Changes whenever *another* connection commits to this file: a cheap change probe."""
        return int(self.scalar("PRAGMA data_version"))

    def close(self) -> None:
        self.conn.close()


def _create_private(path: Path) -> None:
    """Create an empty database file with mode 0600 before SQLite does (it would use 0644):
    ``central.db`` holds every conversation. SQLite gives its ``-wal`` and ``-shm`` the
    database file's mode."""
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
    except (FileExistsError, FileNotFoundError):
        return  # already there; or the folder is missing, which SQLite reports better
    os.close(fd)


def columns(struct_type: type[Any]) -> str:
    """The SELECT list for a row struct: its fields, in order, so ``Struct(*row)`` works."""
    return ", ".join(struct_type.__struct_fields__)
