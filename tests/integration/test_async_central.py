"""``AsyncCentral`` against a real second process that holds ``central.db``'s write lock: a
write waits for the lock on the writer thread while the event loop goes on, reads and the
``data_version`` probe answer at once, and the write lands after the lock is released."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import apsw
import pytest

from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.async_central import AsyncCentral
from nanoclaw_common.store.rows import User
from tests.fakes.central_lock import CentralLock

BOUND_S = 10.0  # an upper bound for "soon"; passing runs take milliseconds


@pytest.fixture
def lock(central: CentralStore) -> Iterator[CentralLock]:
    holder = CentralLock(central.db.path, hold_s=60)
    yield holder
    holder.stop()


async def until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + BOUND_S
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def user(store: CentralStore, user_id: str) -> User | None:
    return store.get_user(user_id)


def test_a_locked_write_waits_off_the_loop_while_reads_go_on(
    central: CentralStore, lock: CentralLock
) -> None:
    central.upsert_user("chat:before", "chat", "Before")
    doors = AsyncCentral(central.db.path)
    started = threading.Event()

    def write(store: CentralStore) -> str:
        started.set()
        store.upsert_user("chat:during", "chat", "During")  # waits for the lock here
        return "written"

    async def scenario() -> None:
        before = doors.version()
        pending = asyncio.ensure_future(doors.write(write))
        await until(started.is_set)
        # The write is inside SQLite's busy wait now. The loop goes round…
        for _ in range(20):
            await asyncio.sleep(0.005)
        # …reads answer (WAL: a reader never waits for a writer), the probe too…
        found = await doors.read(user, "chat:before")
        assert found is not None and found.display_name == "Before"
        assert await doors.read(user, "chat:during") is None
        assert doors.version() == before
        assert not pending.done()
        held_s = await asyncio.to_thread(lock.release)
        # …and the write lands once the lock is gone.
        assert await asyncio.wait_for(pending, BOUND_S) == "written"
        assert held_s < 5.0, "released past the busy timeout: the write would have failed"
        assert await doors.read(user, "chat:during") is not None
        assert doors.version() != before

    lock.hold()
    try:
        asyncio.run(scenario())
    finally:
        doors.close()


def test_writes_run_one_at_a_time_in_order(central: CentralStore) -> None:
    doors = AsyncCentral(central.db.path)
    seen: list[tuple[int, str]] = []

    def write(store: CentralStore, n: int) -> None:
        seen.append((n, threading.current_thread().name))
        store.upsert_user(f"chat:u{n}", "chat", f"U{n}")

    async def scenario() -> None:
        await asyncio.gather(*(doors.write(write, n) for n in range(20)))

    try:
        asyncio.run(scenario())
    finally:
        doors.close()
    assert [n for n, _ in seen] == list(range(20))
    assert len({thread for _, thread in seen}) == 1
    assert len(central.list_users()) == 20


def test_a_read_that_writes_fails_at_once_even_while_locked(
    central: CentralStore, lock: CentralLock
) -> None:
    """A write that slipped into ``read`` is a bug: it fails at once (``query_only``) rather
    than waiting on a reader thread."""
    doors = AsyncCentral(central.db.path)

    def sneaky(store: CentralStore) -> None:
        store.upsert_user("chat:sneaky", "chat", "Sneaky")

    async def scenario() -> float:
        started = time.monotonic()
        with pytest.raises(apsw.ReadOnlyError):
            await doors.read(sneaky)
        return time.monotonic() - started

    lock.hold()
    try:
        elapsed = asyncio.run(scenario())
    finally:
        doors.close()
    assert elapsed < 2.0  # not the 5 s busy timeout
    assert lock.holding
    lock.release()
    assert central.get_user("chat:sneaky") is None


def test_the_inline_doors_keep_the_same_rules(central: CentralStore) -> None:
    doors = AsyncCentral.inline(central)

    async def scenario() -> None:
        with pytest.raises(apsw.ReadOnlyError):
            await doors.read(lambda store: store.upsert_user("chat:x", "chat", "X"))
        await doors.write(lambda store: store.upsert_user("chat:y", "chat", "Y"))
        assert await doors.read(user, "chat:y") is not None

    asyncio.run(scenario())
    assert central.get_user("chat:x") is None
    central.upsert_user("chat:z", "chat", "Z")  # the store writes again outside the doors


def test_the_probe_is_a_connection_of_its_own(central: CentralStore) -> None:
    """``version`` moves for every commit, this process's own included."""
    doors = AsyncCentral(central.db.path)
    try:
        first = doors.version()
        asyncio.run(doors.write(lambda store: store.upsert_user("chat:a", "chat", "A")))
        second = doors.version()
        central.upsert_user("chat:b", "chat", "B")
        third = doors.version()
    finally:
        doors.close()
    assert first != second != third
