"""Proof of life (``nanoclaw_common.alive``): a throttled ``utime`` of ``run/alive/<program>``,
beaten from an asyncio loop's own timer, so a blocked loop stops it."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from loguru import logger

from nanoclaw_common.alive import Proof, beating
from nanoclaw_common.paths import Layout


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_beat_creates_the_proof_and_moves_its_mtime(tmp_path: Path) -> None:
    proof = Proof.of(Layout(tmp_path), "sweeper")
    assert proof.path == tmp_path / "run" / "alive" / "sweeper"
    assert proof.beat()
    assert proof.path.is_file()
    os.utime(proof.path, (1, 1))
    proof.touch()
    assert proof.path.stat().st_mtime > time.time() - 60


def test_beats_are_throttled_to_one_a_second(tmp_path: Path) -> None:
    clock = Clock()
    proof = Proof(tmp_path / "alive" / "sweeper", clock=clock)
    assert proof.beat()
    os.utime(proof.path, (1, 1))
    clock.now += 0.5
    assert not proof.beat()  # a clock read, no system call
    assert proof.path.stat().st_mtime == 1
    clock.now += 0.5
    assert proof.beat()
    assert proof.path.stat().st_mtime > 1


def test_a_link_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("x")
    os.utime(target, (1, 1))
    (tmp_path / "alive").mkdir()
    (tmp_path / "alive" / "router").symlink_to(target)
    Proof(tmp_path / "alive" / "router").touch()
    assert target.stat().st_mtime == 1


def test_a_proof_that_cannot_be_written_is_logged_once_and_never_raises(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    clock = Clock()
    proof = Proof(blocked / "sweeper", clock=clock)
    lines: list[str] = []
    sink = logger.add(lines.append, format="{message}")
    try:
        for _ in range(3):
            assert not proof.beat()
            clock.now += 1
    finally:
        logger.remove(sink)
    assert len([line for line in lines if "cannot write the proof of life" in line]) == 1


def test_the_loop_beats_and_a_blocked_loop_stops(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    path = layout.alive_dir / "router"

    async def scenario() -> tuple[int, int, int]:
        async with beating(layout, "router", interval_s=0.02):
            await asyncio.sleep(0.01)
            first = path.stat().st_mtime_ns
            await asyncio.sleep(0.2)  # ten beats' worth
            second = path.stat().st_mtime_ns
            time.sleep(0.2)  # the loop is blocked: nothing can beat
            blocked = path.stat().st_mtime_ns
        return first, second, blocked

    first, second, blocked = asyncio.run(scenario())
    assert second > first
    assert blocked == second


def test_beating_stops_when_the_block_ends(tmp_path: Path) -> None:
    layout = Layout(tmp_path)

    async def scenario() -> int:
        async with beating(layout, "proxy"):
            await asyncio.sleep(0)
        return len([t for t in asyncio.all_tasks() if t is not asyncio.current_task()])

    assert asyncio.run(scenario()) == 0
