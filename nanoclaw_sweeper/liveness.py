"""The liveness state machine: a pure function from what the sweeper observed about one
session to what it should do. No clock, no I/O; tests drive it with ``now``.

Why each rule exists (reference/pain-points.md §3.1.4):
- A run is not judged before its first heartbeat, up to ``spawn_grace_ms``: a cold start or a
  slow resume must not be killed for silence it could not avoid.
- The heartbeat comes from the runner's own timer thread, independent of the model, so a long
  tool call or a rate-limited API keeps it fresh; only a hung or dead process lets it go stale.
- A heartbeat older than the run's start belongs to an earlier run and counts as none.
- Claims belong to a run id: a dead run's leftovers are settled (retry with backoff, or failed),
  never held against the run that replaced it.
- Because the heartbeat proves only that the process lives, a tool or a turn that hangs (a
  blocked read, a runaway regex, a model loop) needs its own limit: wall-clock ceilings on the
  tool in flight and on the oldest claim, widened by the tool's declared timeout (a long
  bash command or a question waiting for its answer is not a hang).
"""

from __future__ import annotations

import enum

import msgspec

from nanoclaw_common.settings import Settings
from nanoclaw_common.states import ContainerStatus


class Verdict(enum.StrEnum):
    OK = "ok"  # running and healthy, or stopped with nothing to do
    GRACE = "grace"  # running, not yet judged (no heartbeat within spawn grace)
    KILL_NO_HEARTBEAT = "kill-no-heartbeat"  # spawn grace passed without any heartbeat
    KILL_STALE = "kill-stale-heartbeat"  # the runner stopped beating: hung or dead
    KILL_TURNS = "kill-turn-ceiling"  # a runaway tool loop
    KILL_TOOL_TIME = "kill-tool-ceiling"  # one tool call ran far past any declared timeout
    KILL_CLAIM_TIME = "kill-claim-ceiling"  # a batch has been in work for too long
    STOP_IDLE = "stop-idle"  # nothing pending and no activity for the idle timeout
    SETTLE = "settle"  # stopped, but a run left processing claims: retry or fail them
    WAKE = "wake"  # stopped, and due work is waiting


KILLS = frozenset(
    {
        Verdict.KILL_NO_HEARTBEAT,
        Verdict.KILL_STALE,
        Verdict.KILL_TURNS,
        Verdict.KILL_TOOL_TIME,
        Verdict.KILL_CLAIM_TIME,
    }
)


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    spawn_grace_ms: int
    heartbeat_timeout_ms: int
    idle_timeout_ms: int
    max_turns: int
    tool_ceiling_ms: int = 900_000  # a tool with no declared timeout
    claim_ceiling_ms: int = 1_800_000  # a batch, unless a tool declared longer
    ceiling_grace_ms: int = 60_000  # past a declared timeout, before we call it hung

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            spawn_grace_ms=int(settings.spawn_grace_s * 1000),
            heartbeat_timeout_ms=int(settings.heartbeat_timeout_s * 1000),
            idle_timeout_ms=int(settings.idle_timeout_s * 1000),
            max_turns=settings.max_turns_per_batch,
            tool_ceiling_ms=int(settings.tool_ceiling_s * 1000),
            claim_ceiling_ms=int(settings.claim_ceiling_s * 1000),
        )


class Observation(msgspec.Struct, frozen=True, kw_only=True):
    """What the sweeper saw for one session in one pass."""

    running: bool  # Podman has a live container for this session
    run_started_at_ms: int | None  # from sessions.run_started_at_ms
    heartbeat_ms: int | None  # mtime of agent/heartbeat, None when absent
    claims: int  # processing claims in outbound.db (any run)
    due: int  # pending trigger rows whose time has come
    pending: int  # pending rows at all (due or not, claimed or not)
    turns: int  # model turns in the current run (container_state.turns)
    tool_started_at_ms: int | None = None  # the tool in flight (container_state), if any
    tool_declared_timeout_ms: int | None = None  # what that tool said it may take
    oldest_claim_ms: int | None = None  # the current run's oldest processing claim
    last_activity_ms: int | None  # newest of: inbound write, ack, outbound write, heartbeat start


def judge(obs: Observation, policy: Policy, now: int) -> Verdict:
    if obs.running:
        return _judge_running(obs, policy, now)
    if obs.claims:
        return Verdict.SETTLE
    if obs.due:
        return Verdict.WAKE
    return Verdict.OK


def _judge_running(obs: Observation, policy: Policy, now: int) -> Verdict:
    started = obs.run_started_at_ms or 0
    beat = (
        obs.heartbeat_ms if obs.heartbeat_ms is not None and obs.heartbeat_ms >= started else None
    )
    if beat is None:
        # No heartbeat from this run yet.
        if now - started < policy.spawn_grace_ms:
            return Verdict.GRACE
        return Verdict.KILL_NO_HEARTBEAT
    if now - beat > policy.heartbeat_timeout_ms:
        return Verdict.KILL_STALE
    if obs.turns > policy.max_turns:
        return Verdict.KILL_TURNS
    ceiling = _hang_verdict(obs, policy, now)
    if ceiling is not None:
        return ceiling
    idle_since = max(obs.last_activity_ms or 0, started)
    if obs.pending == 0 and obs.claims == 0 and now - idle_since >= policy.idle_timeout_ms:
        return Verdict.STOP_IDLE
    return Verdict.OK


def _hang_verdict(obs: Observation, policy: Policy, now: int) -> Verdict | None:
    declared = obs.tool_declared_timeout_ms or 0
    tool_deadline = None
    if obs.tool_started_at_ms is not None:
        tool_deadline = (
            obs.tool_started_at_ms + max(policy.tool_ceiling_ms, declared) + policy.ceiling_grace_ms
        )
        if now > tool_deadline:
            return Verdict.KILL_TOOL_TIME
    if obs.oldest_claim_ms is not None:
        claim_deadline = obs.oldest_claim_ms + policy.claim_ceiling_ms
        if tool_deadline is not None and declared:
            # A tool that declared a long timeout (bash, a question) may outlive the batch
            # ceiling; it is judged by its own deadline above.
            claim_deadline = max(claim_deadline, tool_deadline)
        if now > claim_deadline:
            return Verdict.KILL_CLAIM_TIME
    return None


def plan_capacity(
    wanted: list[str], running: int, idle_running: list[str], max_containers: int
) -> tuple[list[str], list[str]]:
    """Which ``wanted`` sessions to wake now, and which idle running ones to stop for room.

    ``running`` counts live containers; ``idle_running`` lists those with no pending work,
    longest idle first. Only idle containers are stopped for capacity; busy runs finish. Wakes
    beyond the cap wait for a later pass (their messages stay pending, nothing is lost).
    """
    free = max(0, max_containers - running)
    to_stop = idle_running[: max(0, len(wanted) - free)]
    return wanted[: free + len(to_stop)], to_stop


class RestartAction(enum.StrEnum):
    STOP = "stop"  # the run predates the request: stop it; due work then wakes a fresh run
    WAIT = "wait"  # a run may be starting and not visible in Podman yet: look next pass
    DROP = "drop"  # nothing to restart: not running, or the run began after the request


def judge_restart(
    requested_at_ms: int,
    *,
    running: bool,
    container_status: str,
    run_started_at_ms: int | None,
    policy: Policy,
    now: int,
) -> RestartAction:
    """What to do about a session's restart request (written after an approval changed its
    group's image or MCP config). A run that started at or after the request read the new
    config already; only an older run needs replacing."""
    if run_started_at_ms is not None and run_started_at_ms >= requested_at_ms:
        return RestartAction.DROP
    if running:
        return RestartAction.STOP
    if (
        container_status == ContainerStatus.STARTING
        and now - (run_started_at_ms or 0) < policy.spawn_grace_ms
    ):
        return RestartAction.WAIT
    return RestartAction.DROP
