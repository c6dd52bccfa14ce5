"""``nanoclaw_common.stall.StallGuard``: per-session work with a deadline."""

from __future__ import annotations

import asyncio
import functools
import threading
import time

import pytest

from nanoclaw_common.stall import Stalled, StallGuard


@pytest.fixture
def guard() -> StallGuard:
    return StallGuard(0.3, threads=2, name="test-io")


def test_on_time_results_and_errors_come_back(guard: StallGuard) -> None:
    assert guard.call("s1", "reading", lambda: 42) == 42
    with pytest.raises(ZeroDivisionError):
        guard.call("s1", "reading", lambda: 1 // 0)
    assert not guard.is_cut_off("s1")


def test_a_stalled_call_cuts_its_session_off_and_runs_release(guard: StallGuard) -> None:
    stuck = threading.Event()
    released: list[str] = []

    def hang() -> None:
        stuck.wait(30)

    started = time.monotonic()
    with pytest.raises(Stalled) as caught:
        guard.call("bad", "reading outbound.db", hang, release=lambda: released.append("x"))
    assert 0.3 <= time.monotonic() - started < 5
    assert caught.value.session_id == "bad" and "reading outbound.db" in str(caught.value)
    assert released == ["x"] and guard.is_cut_off("bad")
    # The cut-off session fails at once; no second thread gets stuck on it.
    calls: list[int] = []
    with pytest.raises(Stalled, match="cut off"):
        guard.call("bad", "again", lambda: calls.append(1))
    assert calls == []
    # Everyone else is served, by a replacement worker, even with both stuck at once.
    with pytest.raises(Stalled):
        guard.call("bad-2", "reading", hang)
    served = [guard.call(f"s{n}", "reading", functools.partial(int, n)) for n in range(5)]
    assert served == list(range(5))
    stuck.set()
    guard.forget("bad")
    assert guard.call("bad", "reading", lambda: "served again") == "served again"


def test_acall_never_blocks_the_event_loop(guard: StallGuard) -> None:
    stuck = threading.Event()

    async def scenario() -> tuple[list[str], float]:
        ticks: list[str] = []

        async def ticker() -> None:
            for _ in range(5):
                ticks.append("tick")
                await asyncio.sleep(0.02)

        beat = asyncio.create_task(ticker())
        started = time.monotonic()
        with pytest.raises(Stalled):
            await guard.acall("bad", "reading", lambda: stuck.wait(30))
        elapsed = time.monotonic() - started
        await beat
        assert await guard.acall("good", "reading", lambda: "ok") == "ok"
        return ticks, elapsed

    ticks, elapsed = asyncio.run(scenario())
    stuck.set()
    assert ticks == ["tick"] * 5 and elapsed < 5


def test_acall_hands_back_the_calls_own_errors_without_a_cut_off(guard: StallGuard) -> None:
    """A call that raises ``TimeoutError`` itself (a socket timeout) is not a stall."""

    def times_out() -> None:
        raise TimeoutError("the call's own")

    async def scenario() -> None:
        with pytest.raises(TimeoutError, match="the call's own"):
            await guard.acall("s1", "reading", times_out)
        with pytest.raises(ZeroDivisionError):
            await guard.acall("s1", "reading", lambda: 1 // 0)
        assert await guard.acall("s1", "reading", lambda: 42) == 42

    asyncio.run(scenario())
    assert not guard.is_cut_off("s1")


def test_inline_mode_calls_in_place() -> None:
    guard = StallGuard(0.1, inline=True)
    assert guard.call("s", "x", threading.current_thread) is threading.current_thread()
    assert asyncio.run(guard.acall("s", "x", lambda: 7)) == 7
