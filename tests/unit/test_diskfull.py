"""``nanoclaw_common.diskfull``: what counts as a full disk, one log line per condition (with
``now`` as a parameter), and the in-place wait for a record that follows an effect outside."""

from __future__ import annotations

import asyncio
import errno

import apsw
import pytest
from loguru import logger

from nanoclaw_common.diskfull import FullDiskLog, is_disk_full, until_written


def test_what_a_full_disk_is() -> None:
    assert is_disk_full(apsw.FullError("database or disk is full"))
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    wrapped = RuntimeError("commit failed")
    wrapped.__cause__ = apsw.FullError("database or disk is full")
    assert is_disk_full(wrapped)
    assert not is_disk_full(apsw.BusyError("database is locked"))
    assert not is_disk_full(OSError(errno.EIO, "I/O error"))
    assert not is_disk_full(ValueError("full"))


def _capture() -> tuple[list[str], int]:
    lines: list[str] = []
    return lines, logger.add(lambda m: lines.append(m.record["message"]), level="INFO")


def test_a_condition_is_one_line_then_one_a_minute_then_its_end() -> None:
    now = [0.0]
    disk = FullDiskLog(clock=lambda: now[0])
    lines, sink = _capture()
    try:
        for second in range(0, 150):
            now[0] = float(second)
            assert disk.refused("the outbox", apsw.FullError("database or disk is full"))
        assert not disk.refused("the outbox", apsw.BusyError("locked"))  # not counted
        assert disk.waiting == ["the outbox"]
        disk.written("the outbox")
        disk.written("the outbox")  # no condition any more: nothing
    finally:
        logger.remove(sink)
    assert lines[0].startswith("disk full: the outbox waits until there is room")
    assert [line.split(" has")[0] for line in lines[1:3]] == ["disk still full: the outbox"] * 2
    assert lines[3] == "disk has room again: the outbox written after 149 s (150 writes refused)"
    assert len(lines) == 4 and disk.waiting == []


def test_conditions_are_kept_apart() -> None:
    disk = FullDiskLog(clock=lambda: 0.0)
    lines, sink = _capture()
    try:
        disk.refused("a", OSError(errno.ENOSPC, "full"))
        disk.refused("b", OSError(errno.ENOSPC, "full"))
        disk.written("a")
    finally:
        logger.remove(sink)
    assert len(lines) == 3 and disk.waiting == ["b"]


def test_a_record_after_an_effect_waits_in_place_until_written() -> None:
    attempts: list[int] = []
    slept: list[float] = []

    async def record() -> str:
        attempts.append(1)
        if len(attempts) < 8:
            raise apsw.FullError("database or disk is full")
        return "recorded"

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    disk = FullDiskLog(clock=lambda: 0.0)
    result = asyncio.run(until_written(record, "the delivery of out-1", disk, sleep=sleep))
    assert result == "recorded" and len(attempts) == 8
    assert slept == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]  # capped backoff
    assert disk.waiting == []


def test_other_errors_and_a_stop_end_the_wait() -> None:
    async def busy() -> None:
        raise apsw.BusyError("database is locked")

    async def full() -> None:
        raise apsw.FullError("database or disk is full")

    async def no_sleep(_seconds: float) -> None:
        return None

    disk = FullDiskLog(clock=lambda: 0.0)
    with pytest.raises(apsw.BusyError):
        asyncio.run(until_written(busy, "x", disk, sleep=no_sleep))
    with pytest.raises(apsw.FullError):
        asyncio.run(until_written(full, "y", disk, stopping=lambda: True, sleep=no_sleep))
