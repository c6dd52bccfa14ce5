"""Blocking work awaited from an event loop: the one mechanism the router and delivery use
for every call that may wait (SQLite commits and their fsyncs, ``central.db``'s busy
timeout, Podman, image builds).

A ``Lane`` is a small pool of threads for one kind of work, so a slow kind never queues
behind another: the router's session commits, its wakes, the central reads and the central
writes each have their own (``store.async_central`` builds the central ones). ``inline``
lanes (tests) run the call in the caller's thread, which keeps a test deterministic; the
call still counts as off the loop (``store.sqlite.inline_door``), as it would be on a lane.

A store is used by one thread at a time: apsw connections must not be shared across threads
while in use, and a store's nested-transaction counter belongs to one caller. ``PerThread``
gives each thread of a lane its own store, opened on first use and closed together.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Generic, ParamSpec, Protocol, TypeVar

from nanoclaw_common.store.sqlite import inline_door

P = ParamSpec("P")
T = TypeVar("T")


class Closeable(Protocol):
    def close(self) -> None: ...


S = TypeVar("S", bound=Closeable)


class Lane:
    """``threads`` threads named ``<name>-N`` for one kind of blocking call."""

    def __init__(self, name: str, threads: int, *, inline: bool = False) -> None:
        self.name = name
        self.inline = inline
        self._pool = None if inline else ThreadPoolExecutor(threads, thread_name_prefix=name)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on one of the lane's threads; its result or its exception.
        A cancelled caller stops waiting, but a call that started runs to its end."""
        if self._pool is None:
            with inline_door():
                return fn(*args, **kwargs)
        call = partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def submit(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> None:
        """Run ``fn`` on the lane without waiting for it (shutdown work)."""
        if self._pool is None:
            with inline_door():
                fn(*args, **kwargs)
        else:
            self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, *, wait: bool = True, cancel_pending: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=cancel_pending)


class PerThread(Generic[S]):
    """One ``S`` per thread, made by ``open`` on the thread's first ``get``."""

    def __init__(self, open_one: Callable[[], S]) -> None:
        self._open = open_one
        self._local = threading.local()
        self._opened: list[S] = []
        self._lock = threading.Lock()

    def get(self) -> S:
        item: S | None = getattr(self._local, "item", None)
        if item is None:
            item = self._open()
            self._local.item = item
            with self._lock:
                self._opened.append(item)
        return item

    def close_all(self) -> None:
        """Close every thread's item; only once no thread uses them (the lane is shut
        down)."""
        with self._lock:
            opened, self._opened = self._opened, []
        for item in opened:
            item.close()
