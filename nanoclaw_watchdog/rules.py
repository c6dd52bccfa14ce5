"""The watchdog's decisions: a pure function of what it saw at this tick, what it remembers from
earlier ticks, its limits and ``now``. No clock, no I/O; ``watchdog.Watchdog`` observes and acts.

A program is judged only while supervisord reports it RUNNING (STARTING, BACKOFF, STOPPED,
EXITED and FATAL are supervisord's business). Then, in this order:

1. **Hung**: a program that beats (``Limits.stale_s`` names it) and whose proof of life is older
   than its limit, or, when it has not beaten since its start, whose start is older than the
   start-up grace. Either way the proof must also be unchanged since the previous tick: a wall
   clock stepped forward makes every proof look old for a moment, and a healthy program beats
   again within a second, long before the next tick.
2. **Too big**: its RSS passed its ceiling.

A restart is not repeated in a tight loop: the first comes at once; after it, the same program
is restarted again no sooner than ``backoff_s`` later, doubling with each further restart up to
``backoff_max_s``. In between, the trouble is logged once per wait (``Hold``). The count goes back
to zero once the program has been in health (no trouble seen) for ``backoff_max_s``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import msgspec

from nanoclaw_common.alive import BEATING_PROGRAMS
from nanoclaw_common.settings import Settings


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """The watchdog's settings, per program."""

    stale_s: dict[str, float]  # the programs judged for liveness, and their limit
    rss_max_mb: dict[str, int]  # per-program ceilings; 0 means none
    default_rss_max_mb: int  # for every other program
    start_grace_s: float
    backoff_s: float
    backoff_max_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        stale = dict.fromkeys(BEATING_PROGRAMS, settings.watchdog_stale_s)
        stale.update(settings.watchdog_program_stale_s)
        return cls(
            stale_s={name: limit for name, limit in stale.items() if limit > 0},
            rss_max_mb=dict(settings.watchdog_program_rss_max_mb),
            default_rss_max_mb=settings.watchdog_rss_max_mb,
            start_grace_s=settings.watchdog_start_grace_s,
            backoff_s=settings.watchdog_backoff_s,
            backoff_max_s=settings.watchdog_backoff_max_s,
        )

    def rss_ceiling_mb(self, program: str) -> int | None:
        ceiling = self.rss_max_mb.get(program, self.default_rss_max_mb)
        return ceiling or None

    def backoff_after(self, restarts: int) -> float:
        """How long after its ``restarts``-th restart a program may be restarted again."""
        doubled: float = self.backoff_s * 2.0 ** max(restarts - 1, 0)
        return min(doubled, self.backoff_max_s)


@dataclass(frozen=True)
class Observation:
    """One supervised program at one tick. Times are epoch seconds (supervisord's own)."""

    name: str
    running: bool  # supervisord says RUNNING
    pid: int
    started_s: float  # when supervisord started this pid
    proof_s: float | None  # the proof of life's mtime; None: no proof file
    rss_mb: float | None  # None: unknown (the process just ended)


@dataclass(frozen=True)
class Memory:
    """What the watchdog keeps about one program from tick to tick."""

    looked: bool = False  # it was observed at an earlier tick
    proof_s: float | None = None  # the proof's mtime then
    restarts: int = 0  # restarts since it was last in health for backoff_max_s
    last_restart_s: float | None = None
    last_trouble_s: float | None = None
    held_until_s: float | None = None  # a Hold was logged for the wait ending then


# -- why a program is restarted ---------------------------------------------------------------


@dataclass(frozen=True)
class Stale:
    age_s: float
    limit_s: float

    def __str__(self) -> str:
        return f"no proof of life for {self.age_s:.0f} s (limit {self.limit_s:g} s)"


@dataclass(frozen=True)
class NoFirstProof:
    age_s: float
    grace_s: float

    def __str__(self) -> str:
        return (
            f"no proof of life since it started {self.age_s:.0f} s ago"
            f" (start-up grace {self.grace_s:g} s)"
        )


@dataclass(frozen=True)
class OverMemory:
    rss_mb: float
    ceiling_mb: int

    def __str__(self) -> str:
        return f"RSS {self.rss_mb:.0f} MB over its ceiling of {self.ceiling_mb} MB"


Reason = Stale | NoFirstProof | OverMemory


# -- what to do -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Restart:
    program: str
    pid: int
    reason: Reason
    restarts: int  # this one included


@dataclass(frozen=True)
class Hold:
    """A restart is due but held back by the backoff: log it, once per wait."""

    program: str
    pid: int
    reason: Reason
    restarts: int  # so far
    since_restart_s: float
    next_restart_s: float  # epoch seconds


Action = Restart | Hold


@dataclass
class Decision:
    actions: list[Action] = field(default_factory=list)
    memory: dict[str, Memory] = field(default_factory=dict)


def judge(
    observation: Observation, limits: Limits, previous: Memory, now_s: float
) -> Reason | None:
    """Why ``observation``'s program should be restarted now, or None."""
    if not observation.running:
        return None
    limit_s = limits.stale_s.get(observation.name)
    # Unchanged since the previous tick (see the module docstring): a proof that moved, or a
    # first look, is no evidence of a hang.
    unchanged = previous.looked and previous.proof_s == observation.proof_s
    if limit_s is not None and unchanged:
        proof_s = observation.proof_s
        if proof_s is not None and proof_s >= observation.started_s:
            if now_s - proof_s > limit_s:
                return Stale(age_s=now_s - proof_s, limit_s=limit_s)
        elif now_s - observation.started_s > max(limits.start_grace_s, limit_s):
            # Not a beat since this pid started (the file is an earlier run's, or missing).
            return NoFirstProof(
                age_s=now_s - observation.started_s,
                grace_s=max(limits.start_grace_s, limit_s),
            )
    ceiling_mb = limits.rss_ceiling_mb(observation.name)
    rss_mb = observation.rss_mb
    if ceiling_mb is not None and rss_mb is not None and rss_mb > ceiling_mb:
        return OverMemory(rss_mb=rss_mb, ceiling_mb=ceiling_mb)
    return None


def decide(
    observations: Iterable[Observation],
    memory: Mapping[str, Memory],
    limits: Limits,
    now_s: float,
) -> Decision:
    """The actions for this tick and the memory for the next. Programs no longer observed
    are forgotten."""
    decision = Decision()
    for observation in observations:
        previous = memory.get(observation.name, Memory())
        reason = judge(observation, limits, previous, now_s)
        seen = replace(previous, looked=True, proof_s=observation.proof_s)
        action, decision.memory[observation.name] = _act(observation, reason, seen, limits, now_s)
        if action is not None:
            decision.actions.append(action)
    return decision


def _act(
    observation: Observation,
    reason: Reason | None,
    memory: Memory,
    limits: Limits,
    now_s: float,
) -> tuple[Action | None, Memory]:
    if reason is None:
        healthy_since = memory.last_trouble_s
        if healthy_since is not None and now_s - healthy_since >= limits.backoff_max_s:
            # In health for the longest wait: the next trouble is a first one again.
            memory = replace(memory, restarts=0, last_trouble_s=None)
        return None, replace(memory, held_until_s=None)
    memory = replace(memory, last_trouble_s=now_s)
    next_restart_s = (
        memory.last_restart_s + limits.backoff_after(memory.restarts)
        if memory.restarts and memory.last_restart_s is not None
        else now_s
    )
    if now_s >= next_restart_s:
        restarts = memory.restarts + 1
        restart = Restart(observation.name, observation.pid, reason, restarts)
        return restart, replace(memory, restarts=restarts, last_restart_s=now_s, held_until_s=None)
    if memory.held_until_s == next_restart_s:
        return None, memory  # this wait was logged already
    hold = Hold(
        program=observation.name,
        pid=observation.pid,
        reason=reason,
        restarts=memory.restarts,
        since_restart_s=now_s - (memory.last_restart_s or now_s),
        next_restart_s=next_restart_s,
    )
    return hold, replace(memory, held_until_s=next_restart_s)
