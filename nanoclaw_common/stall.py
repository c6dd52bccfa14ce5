"""Per-session file work with a deadline: one session's files can never stall a loop.

The sweeper's pass, delivery's session tasks and the router's typing indicator read files a
container controls. ``hostfs`` and ``store.session_vfs`` refuse what could block (a FIFO, a
link), but one race is left (a FIFO renamed over ``outbound.db`` between our check and
SQLite's own open), and a loop that serves every session must not bet on it. So that work
runs here, on a worker thread, and the caller waits at most ``limit_s``:

- on time: the result (or the exception) comes back as if called directly;
- late: the session is **cut off**: ``Stalled`` is raised, every later call for that
  session raises ``Stalled`` at once (no second thread gets stuck on the same files), the
  caller's ``release`` runs (it opens the session's FIFOs for writing, which makes a blocked
  ``open`` return: ``hostfs.Dir.release_fifo_readers``), and a fresh worker takes the stuck
  one's place. The caller records the session as quarantined (``store.quarantine``).

Workers are daemon threads: a thread stuck for good never keeps the program from exiting.
A call costs a thread hand-off (tens of microseconds), paid once per session per pass or
per drain step, not per row.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Final, TypeVar

from loguru import logger

from nanoclaw_common.errors import NanoclawError

T = TypeVar("T")
log = logger.bind(component="stall")

DEFAULT_THREADS: Final = 4

_Job = tuple[Callable[[], Any], Future[Any]]


class Stalled(NanoclawError):
    """A session's file work did not finish within its limit (or the session was already
    cut off for that). The session is to be quarantined, never retried in a loop."""

    def __init__(self, session_id: str, what: str, limit_s: float) -> None:
        super().__init__(f"{what} took longer than {limit_s:g} s (a stalled file?)")
        self.session_id = session_id
        self.what = what


class StallGuard:
    """Runs callables on worker threads and waits for each at most ``limit_s``."""

    def __init__(
        self,
        limit_s: float,
        *,
        threads: int = DEFAULT_THREADS,
        name: str = "io",
        inline: bool = False,
    ) -> None:
        """``inline=True`` (tests that drive one step at a time) calls in the caller's
        thread, with no deadline."""
        self.limit_s = limit_s
        self.name = name
        self.inline = inline
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._cut_off: dict[str, str] = {}  # session id -> what stalled
        self._workers = 0
        self.in_flight = 0  # calls running on a worker now (a stuck one counts until freed)
        self._closed = False
        for _ in range(0 if inline else max(1, threads)):
            self._start_worker()

    # -- workers -----------------------------------------------------------------------------

    def _start_worker(self) -> None:
        with self._lock:
            self._workers += 1
            number = self._workers
        thread = threading.Thread(target=self._work, name=f"{self.name}-{number}", daemon=True)
        thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            func, future = job
            if not future.set_running_or_notify_cancel():
                continue
            with self._lock:
                self.in_flight += 1
            try:
                future.set_result(func())
            except BaseException as exc:  # handed to the caller, whatever it is
                future.set_exception(exc)
            finally:
                with self._lock:
                    self.in_flight -= 1

    def close(self) -> None:
        """Let idle workers end (a stuck one stays stuck: it is a daemon thread). Calls after
        this are refused."""
        self._closed = True
        with self._lock:
            count = self._workers
        for _ in range(count):
            self._jobs.put(None)

    # -- calls -------------------------------------------------------------------------------

    def is_cut_off(self, session_id: str) -> bool:
        return session_id in self._cut_off

    def forget(self, session_id: str) -> None:
        """Serve the session again (an operator released it from quarantine)."""
        with self._lock:
            self._cut_off.pop(session_id, None)

    def _check(self, session_id: str, what: str) -> None:
        stalled = self._cut_off.get(session_id)
        if stalled is not None:
            raise Stalled(session_id, f"{what} (the session is cut off: {stalled})", self.limit_s)

    def _submit(self, session_id: str, what: str, func: Callable[[], T]) -> Future[T]:
        if self._closed:
            raise RuntimeError(f"the {self.name} guard is closed")
        self._check(session_id, what)
        future: Future[T] = Future()
        self._jobs.put((func, future))
        return future

    def _stalled(self, session_id: str, what: str, release: Callable[[], object] | None) -> Stalled:
        with self._lock:
            self._cut_off[session_id] = what
        self._start_worker()  # the stuck worker's replacement
        if release is not None:
            try:
                release()
            except Exception as exc:  # the cut-off stands whether or not the thread returns
                log.warning("could not release the stalled call: {!r}", exc, session=session_id)
        return Stalled(session_id, what, self.limit_s)

    def call(
        self,
        session_id: str,
        what: str,
        func: Callable[[], T],
        *,
        release: Callable[[], object] | None = None,
    ) -> T:
        """``func()`` on a worker, waited for at most ``limit_s`` (see the module docstring);
        ``release`` runs once if it stalls."""
        if self.inline:
            self._check(session_id, what)
            return func()
        future = self._submit(session_id, what, func)
        try:
            return future.result(timeout=self.limit_s)
        except FutureTimeout:
            future.cancel()
            raise self._stalled(session_id, what, release) from None

    async def acall(
        self,
        session_id: str,
        what: str,
        func: Callable[[], T],
        *,
        release: Callable[[], object] | None = None,
    ) -> T:
        """``call`` for the event loop: awaits the worker without blocking the loop."""
        if self.inline:
            self._check(session_id, what)
            return func()
        future = self._submit(session_id, what, func)
        # asyncio.timeout, not wait_for (3.11's can swallow a cancellation) nor asyncio.wait
        # (a waiter, a set and callbacks per call: this runs on delivery's hot path).
        deadline = asyncio.timeout(self.limit_s)
        try:
            async with deadline:
                return await asyncio.wrap_future(future)
        except TimeoutError:
            if not deadline.expired():
                raise  # the call's own TimeoutError: handed to the caller like any other
            future.cancel()
            raise self._stalled(session_id, what, release) from None
