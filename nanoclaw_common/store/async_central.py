"""``central.db`` from async code: the one rule (docs/internals.md, "Central DB from async
code").

Another process may hold ``central.db``'s write lock for seconds (a CLI command, a backup, a
sweeper pass), and a write waits up to the busy timeout (5 s) for it. On an event loop that
wait would stall everything the loop serves. So async code never holds a ``CentralStore``:
it holds an ``AsyncCentral``, whose only doors are

- ``await central.read(fn, *args)``: ``fn(store, *args)`` on a reader thread, whose
  connection is ``query_only`` (a write there fails at once: it belongs in ``write``). In
  WAL mode a read never waits for a writer, so reads go on while a lock is held;
- ``await central.write(fn, *args)``: ``fn(store, *args)`` on the one writer thread. Writes
  queue there, one at a time, as SQLite takes them anyway; only they wait for a lock;
- ``central.version()``: ``PRAGMA data_version`` on the loop, on a connection that never
  waits (busy timeout zero; busy means "changed"), so a cache that is still valid costs no
  thread hop.

``fn`` is a plain function of a store (it may call several methods, and any store built on
``CentralStore``: ``RouterOutbox``, ``OwnerNotices``). It runs off the loop, so it must not
touch the loop's objects; it returns what the loop needs. Every thread has its own
connection: apsw connections are never shared across threads, and a store's
nested-transaction counter belongs to one caller.

``AsyncCentral.inline(store)`` (tests) runs ``fn`` in the caller's thread on that store, with
the reader's ``query_only`` around ``read``: the same rules, deterministically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Concatenate, Generic, ParamSpec, Protocol, TypeVar

import apsw

from nanoclaw_common.offload import Lane, PerThread
from nanoclaw_common.store.central import CentralStore
from nanoclaw_common.store.sqlite import Database, Mode, inline_door

P = ParamSpec("P")
T = TypeVar("T")


class Store(Protocol):
    """What the doors need of a store: its one connection, and a close."""

    @property
    def db(self) -> Database: ...

    def close(self) -> None: ...


S = TypeVar("S", bound=Store)


class AsyncDoors(Generic[S]):
    """The doors over any store of ``central.db`` (``opener(path)`` makes one per thread):
    ``AsyncCentral`` for the whole ``CentralStore``, a narrower one for a program that uses
    only some parts (the proxy's ``ProxyCentral``)."""

    def __init__(
        self,
        path: Path | str,
        opener: Callable[[Path], S],
        *,
        readers: int = 2,
        inline: S | None = None,
    ) -> None:
        self.path = Path(path)
        self._inline = inline
        self._read_lane = Lane("central-read", readers, inline=inline is not None)
        self._write_lane = Lane("central-write", 1, inline=inline is not None)
        self._readers = PerThread(lambda: self._reader(opener))
        self._writers = PerThread(lambda: opener(self.path))
        self._probe: Database | None = None
        self._unknown = 0  # versions handed out while the probe was busy: -1, -2, …

    def _reader(self, opener: Callable[[Path], S]) -> S:
        store = opener(self.path)
        store.db.execute("PRAGMA query_only=1")
        return store

    async def read(
        self, fn: Callable[Concatenate[S, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``fn(store, *args, **kwargs)`` on a reader thread (see the module docstring)."""
        if self._inline is not None:
            with self._inline_call(self._inline, read_only=True):
                return fn(self._inline, *args, **kwargs)

        def call() -> T:
            return fn(self._readers.get(), *args, **kwargs)

        return await self._read_lane.run(call)

    async def write(
        self, fn: Callable[Concatenate[S, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``fn(store, *args, **kwargs)`` on the writer thread (see the module docstring)."""
        if self._inline is not None:
            with self._inline_call(self._inline, read_only=False):
                return fn(self._inline, *args, **kwargs)

        def call() -> T:
            return fn(self._writers.get(), *args, **kwargs)

        return await self._write_lane.run(call)

    @staticmethod
    @contextmanager
    def _inline_call(store: Store, *, read_only: bool) -> Iterator[None]:
        with inline_door():
            if not read_only:
                yield
                return
            # Restored to what it was: an inline read inside another inline read stays one.
            was = store.db.scalar("PRAGMA query_only")
            store.db.execute("PRAGMA query_only=1")
            try:
                yield
            finally:
                store.db.execute(f"PRAGMA query_only={int(was)}")

    def version(self) -> int:
        """``PRAGMA data_version``: it changes whenever a connection other than the probe's
        (this process's readers and writer included) commits. Never waits: while the file is
        busy it returns a number never returned before, so a cache is dropped rather than
        trusted."""
        try:
            if self._probe is None:
                self._probe = Database(self.path, Mode.CENTRAL, loop_safe=True)
            return self._probe.data_version()
        except (apsw.BusyError, apsw.LockedError):
            self._unknown -= 1
            return self._unknown

    def close(self) -> None:
        """Finish what is queued, then close every connection. Not on the loop: it waits."""
        self._write_lane.shutdown(wait=True)
        self._read_lane.shutdown(wait=True)
        self._writers.close_all()
        self._readers.close_all()
        if self._probe is not None:
            self._probe.close()
            self._probe = None


class AsyncCentral(AsyncDoors[CentralStore]):
    """The doors over the whole ``CentralStore`` (router, delivery, the terminal chat)."""

    def __init__(
        self, path: Path | str, *, readers: int = 2, inline: CentralStore | None = None
    ) -> None:
        super().__init__(path, CentralStore, readers=readers, inline=inline)

    @classmethod
    def inline(cls, store: CentralStore) -> AsyncCentral:
        """Doors that run in the caller's thread, on ``store`` (tests)."""
        return cls(store.db.path, inline=store)
