"""The chaos run (issue 9 §5): the real assistant under real supervisord and real Podman,
Telegram (four group chats, python-telegram-bot against the fake Bot API) and the terminal
chat, the real SDK through the real proxy to the fake Messages API (``ChaosModel``). While
at least ``MESSAGES`` messages stream in, the run SIGKILLs the router, delivery, the
sweeper, the proxy and agent containers at random (``KILLS``), restarts every program
gracefully once, and forces every crash point of docs/delivery.md's table (``SCENES``).

Then, from what the platforms showed and what is on disk (``Ledger``, ``Checker``):
0 messages lost, 0 error notices, every reply in its own chat, duplicates only inside the
documented window (each explained by the delivery death that caused it), and every row of
the crash table hit with the outcome it promises. Every failure names the message, its
chat, the acts of the run nearest in time and the rows concerned; the figures (messages,
kills per program, lost, duplicates, drain time) are printed either way.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

import pytest

from tests.chaos.contract import ROWS, Checker, Result
from tests.chaos.harness import (
    CHATS,
    KILLED_PROGRAMS,
    RESTARTED_PROGRAMS,
    ChaosStack,
    close_chaos_stack,
    start_chaos_stack,
)
from tests.chaos.ledger import Ledger, Problem
from tests.chaos.scenes import SCENES, Forced
from tests.stack import PROGRAMS
from tests.waiting import wait_until

pytestmark = pytest.mark.podman

SEED: Final = 20261209
MESSAGES: Final = 500  # streamed plain pings; the scenes add their own
STREAM_S: Final = 100.0  # over about this long
KILLS: Final = {"router": 6, "delivery": 6, "sweeper": 6, "proxy": 6, "container": 6}
PAUSE_S: Final = (0.2, 0.9)  # between two acts of the run
WARM_S: Final = 120.0
DRAIN_S: Final = 120.0
REST_S: Final = 25.0
ENVIRONMENT: Final = {
    # Retries of a refused send (the terminal away) come quickly: row 11 needs a reply to
    # use up its six attempts within seconds, not the default minute.
    "NANOCLAW_DELIVERY_BACKOFF_BASE_S": "0.1",
}


@pytest.fixture
def chaos() -> Iterator[ChaosStack]:
    made = start_chaos_stack(ENVIRONMENT)
    try:
        yield made
    finally:
        # NANOCLAW_CHAOS_KEEP=1 keeps the data folder (logs, session DBs) for a post-mortem.
        close_chaos_stack(made, keep=os.environ.get("NANOCLAW_CHAOS_KEEP") == "1")


def warm_up(chaos: ChaosStack) -> None:
    """One message per chat, answered: every session's container runs."""
    first = [chaos.send(chat.name) for chat in CHATS]

    def answered() -> bool:
        return all(
            any(text == f"pong {m.tag}" for _at, text, _held in chaos.platform_texts(m.chat))
            for m in first
        )

    wait_until(
        answered,
        timeout_s=WARM_S,
        what="warm-up: every chat answered",
        poll_s=0.1,
        detail=chaos.logs,
    )


def stream(chaos: ChaosStack, stop: threading.Event, rng: random.Random) -> None:
    """``MESSAGES`` plain pings, round robin over the chats, spread over ``STREAM_S``."""
    gap_s = STREAM_S / MESSAGES
    for n in range(MESSAGES):
        if stop.is_set():
            return
        chaos.send(CHATS[n % len(CHATS)].name)
        time.sleep(rng.uniform(0.5, 1.5) * gap_s)


def plan(rng: random.Random) -> list[tuple[str, str | Callable[[ChaosStack], Forced]]]:
    """The acts of the run in a random order: kills, graceful restarts and scenes."""
    acts: list[tuple[str, str | Callable[[ChaosStack], Forced]]] = []
    for program, count in KILLS.items():
        acts += [("kill", program)] * count
    acts += [("restart", program) for program in RESTARTED_PROGRAMS]
    acts += [("scene", scene) for scene in SCENES]
    rng.shuffle(acts)
    return acts


def act(
    chaos: ChaosStack, kind: str, what: str | Callable[[ChaosStack], Forced], rng: random.Random
) -> Forced | None:
    if kind == "scene":
        assert callable(what)
        return what(chaos)
    assert isinstance(what, str)
    if kind == "restart":
        chaos.restart(what)
    elif what == "container":
        # A running one, chosen at random; none running (all idle-stopped) is no kill.
        for chat in rng.sample([c.name for c in CHATS], len(CHATS)):
            if chaos.kill_container(chat, "at random") is not None:
                break
    else:
        chaos.sigkill(what, "at random")
    return None


def drain(chaos: ChaosStack) -> tuple[Ledger, float]:
    """Wait until every expected reply was shown (or ``DRAIN_S``); the ledger, read after
    a last quiet moment (a late duplicate must be seen too), and how long it took."""
    started = time.monotonic()
    ledger = Ledger(chaos)
    deadline = started + DRAIN_S
    resting_since: float | None = None
    while True:
        ledger.read()
        if not ledger.missing() or time.monotonic() > deadline:
            break
        # Something is missing, and nothing is on its way: do not wait out DRAIN_S (a
        # retried batch waits 5-20 s, so "at rest" must last longer than that).
        if ledger.at_rest():
            resting_since = resting_since or time.monotonic()
            if time.monotonic() - resting_since > REST_S:
                break
        else:
            resting_since = None
        time.sleep(0.5)
    took = time.monotonic() - started
    time.sleep(2.0)
    ledger.read()
    return ledger, took


@dataclass
class Outcome:
    ledger: Ledger
    problems: list[Problem]
    explained: list[str]
    results: dict[str, Result]
    drain_s: float
    run_s: float


def figures(chaos: ChaosStack, outcome: Outcome) -> str:
    kills = Counter(
        e.program.split(":")[0] for e in chaos.events if e.action in ("sigkill", "container-kill")
    )
    forced = Counter(e.program for e in chaos.events if e.action == "forced")
    restarts = Counter(e.program for e in chaos.events if e.action == "restart")
    kinds = Counter(p.kind for p in outcome.problems)
    per_chat = Counter(m.chat for m in chaos.messages)
    lines = [
        "== chaos run ==",
        f"messages sent: {len(chaos.messages)} ({dict(per_chat)})",
        f"model calls: {chaos.model.calls}",
        f"SIGKILLs at random or held: {sum(kills.values())} ({dict(sorted(kills.items()))})",
        f"forced crash points: {sum(forced.values())} ({dict(sorted(forced.items()))})",
        f"graceful restarts: {dict(sorted(restarts.items()))}",
        f"lost: {kinds['lost']}, unexplained duplicates: {kinds['duplicate']},"
        f" wrong chat: {kinds['wrong chat']}, unexpected notices: {kinds['notice']},"
        f" failed rows: {kinds['failed']}, watchdog restarts: {kinds['watchdog']}",
        f"duplicates inside the window: {len(outcome.explained)}",
        *[f"  {line}" for line in outcome.explained],
        f"drain: {outcome.drain_s:.1f}s; whole run: {outcome.run_s:.1f}s",
        "crash table:",
    ]
    for row, result in outcome.results.items():
        lines.append(f"  row {row:>2} {'ok  ' if result.ok else 'FAIL'} {ROWS[row]}")
        lines += [f"          {line}" for line in result.evidence + result.failures]
    for problem in outcome.problems:
        rows = problem.rows or "?"
        lines.append(f"PROBLEM {problem.kind} in {problem.chat} (rows {rows}): {problem.what}")
        lines += [f"    {line}" for line in problem.detail]
    return "\n".join(lines)


@pytest.mark.timeout(900)
def test_nothing_lost_nothing_doubled_beyond_the_window(
    chaos: ChaosStack, capsys: pytest.CaptureFixture[str]
) -> None:
    began = time.monotonic()
    rng = random.Random(SEED)
    warm_up(chaos)
    stop = threading.Event()
    streamer = threading.Thread(
        target=stream, args=(chaos, stop, random.Random(rng.random())), name="stream"
    )
    forced: list[Forced] = []
    streamer.start()
    try:
        for kind, what in plan(rng):
            done = act(chaos, kind, what, rng)
            if done is not None:
                forced.append(done)
            time.sleep(rng.uniform(*PAUSE_S))
    finally:
        streamer.join(STREAM_S * 3)
        stop.set()
    ledger, drain_s = drain(chaos)
    problems, explained = ledger.problems()
    results = Checker(ledger, forced).run()
    outcome = Outcome(ledger, problems, explained, results, drain_s, time.monotonic() - began)
    report = figures(chaos, outcome)
    with capsys.disabled():
        print("\n" + report)

    states = {name: info["statename"] for name, info in chaos.stack.processes().items()}
    assert states == dict.fromkeys(PROGRAMS, "RUNNING"), f"{states}\n{report}"
    assert len(chaos.messages) >= MESSAGES, report
    kills = Counter(
        e.program.split(":")[0] for e in chaos.events if e.action in ("sigkill", "container-kill")
    )
    assert sum(kills.values()) >= 30, report
    for program in (*KILLED_PROGRAMS, "container"):
        assert kills[program] >= 3, f"{program} killed {kills[program]} times\n{report}"
    restarted = {e.program for e in chaos.events if e.action == "restart"}
    assert restarted >= set(RESTARTED_PROGRAMS), report
    assert not problems, report
    missed = [row for row, result in results.items() if not result.ok]
    assert not missed, f"crash table rows not hit as promised: {missed}\n{report}"
