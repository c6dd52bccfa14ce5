"""The sweeper's passes over real session DBs, with a recording fake sandbox and `now`; and the
restart requests it carries out for delivery (the store verbs, the decision, the pass)."""

from __future__ import annotations

import pytest

from nanoclaw_common import messages as m
from nanoclaw_common.paths import SessionPaths
from nanoclaw_common.states import ContainerStatus
from nanoclaw_common.store import (
    InboundReader,
    InboundStore,
    NewInbound,
    OutboundStore,
    rows,
)
from nanoclaw_sweeper.liveness import Policy, RestartAction, judge_restart
from nanoclaw_sweeper.sweeper import Sweeper
from tests.central_verbs import close_session
from tests.sweeper_world import (
    T0,
    FakeContainer,
    World,
    add_message,
    beat,
    claim,
    inbound_row,
    world,
)

__all__ = ["world"]  # the fixture, from tests/sweeper_world.py


def test_due_work_wakes_a_stopped_session(world: World) -> None:
    session, paths = world.session()
    add_message(paths, "m1")
    report = world.sweeper.sweep(T0)
    assert report.woken == [session.id]
    assert world.sandbox.calls == [("wake", session.id)]
    # Projections were refreshed before the wake.
    assert InboundReader(paths.inbound_db).routing() == rows.Routing(None, None, None)


def test_spawn_grace_then_dead_run_is_stopped_and_retried(world: World) -> None:
    session, paths = world.session()
    add_message(paths, "m1")
    world.sandbox.start(session)
    claim(paths, "run-1", "m1")
    assert world.sweeper.sweep(T0 + 10_000).killed == []  # no heartbeat yet, within grace
    assert world.refreshed(session).container_status == "starting"
    beat(paths, T0 + 15_000)
    assert world.sweeper.sweep(T0 + 20_000).killed == []  # beating
    assert world.refreshed(session).container_status == "running"
    report = world.sweeper.sweep(T0 + 15_000 + 60_001)  # the heartbeat went stale
    assert report.killed == [session.id]
    assert ("stop", session.id) in world.sandbox.calls
    row = inbound_row(paths, "m1")
    assert (row.status, row.tries) == ("pending", 1)
    assert row.process_after_ms is not None and row.process_after_ms > T0 + 75_001
    # Not woken before the backoff has passed, then woken.
    assert world.sweeper.sweep(T0 + 75_002).woken == []
    assert world.sweeper.sweep(row.process_after_ms).woken == [session.id]


def test_a_message_that_kills_every_run_fails_after_max_tries(world: World) -> None:
    session, paths = world.session()
    add_message(paths, "poison")
    now = T0
    for attempt in range(1, 4):
        run_id = world.sandbox.start(world.refreshed(session))
        claim(paths, run_id, "poison", now=now)
        world.sandbox.live.pop(session.id)  # the container died on it
        world.sweeper.sweep(now + 1_000)
        row = inbound_row(paths, "poison")
        if attempt < 3:
            assert (row.status, row.tries) == ("pending", attempt)
            now = row.process_after_ms or now
        else:
            assert (row.status, row.tries) == ("failed", 3)
    # The agent is told (so it can tell the user) with a system note in the same session.
    note = inbound_row(paths, "failed:poison")
    assert "could not be processed" in note.content


def test_idle_container_is_stopped(world: World) -> None:
    session, paths = world.session()
    world.sandbox.start(session)
    idle_timeout = int(world.settings.idle_timeout_s * 1000)
    beat(paths, T0 + idle_timeout)
    assert world.sweeper.sweep(T0 + idle_timeout - 1).stopped_idle == []
    assert world.sweeper.sweep(T0 + idle_timeout).stopped_idle == [session.id]


def test_acks_are_synced(world: World) -> None:
    session, paths = world.session()
    add_message(paths, "m1")
    add_message(paths, "m2")
    world.sandbox.start(session)
    store = OutboundStore(paths.outbound_db)
    store.start_run("run-1", now=T0)
    store.complete(["m1"], "run-1", now=T0)
    store.fail(["m2"], "run-1", now=T0)
    store.close()
    beat(paths, T0 + 1_000)
    assert world.sweeper.sweep(T0 + 2_000).acks_synced == 2
    assert (inbound_row(paths, "m1").status, inbound_row(paths, "m2").status) == (
        "completed",
        "failed",
    )


def test_recurring_task_gets_its_next_occurrence(world: World) -> None:
    assert world.settings.tz == "UTC"
    _, paths = world.session()
    daily_9 = 1_800_057_600_000 - 1_800_057_600_000 % 86_400_000 + 9 * 3_600_000
    store = InboundStore(paths.inbound_db)
    store.insert_message(
        NewInbound(
            id="task-1",
            content=m.TaskContent(prompt="morning report"),
            timestamp_ms=T0,
            process_after_ms=daily_9,
            recurrence="0 9 * * *",
        )
    )
    store.set_status("task-1", "completed")
    store.close()
    report = world.sweeper.sweep(daily_9 + 60_000)
    assert report.recurrences == 1
    reader = InboundReader(paths.inbound_db)
    (nxt,) = [r for r in reader.list_messages() if r.id != "task-1"]
    assert (nxt.status, nxt.series_id, nxt.recurrence) == ("pending", "task-1", "0 9 * * *")
    assert nxt.process_after_ms == daily_9 + 86_400_000
    assert reader.get_message("task-1").recurrence is None  # type: ignore[union-attr]
    reader.close()
    assert world.sweeper.sweep(daily_9 + 120_000).recurrences == 0


def test_capacity_stops_idle_containers_for_due_work(world: World) -> None:
    idle, idle_paths = world.session()
    busy, busy_paths = world.session()
    waiting_a, a_paths = world.session()
    waiting_b, b_paths = world.session()
    for session, paths in ((idle, idle_paths), (busy, busy_paths)):
        world.sandbox.start(session)
        beat(paths, T0 + 1_000)
    add_message(busy_paths, "busy-work")
    claim(busy_paths, "run-2", "busy-work")
    add_message(a_paths, "a")
    add_message(b_paths, "b")
    report = world.sweeper.sweep(T0 + 2_000)
    # Cap 2: the idle container makes room for one; the busy one finishes its work.
    assert report.stopped_idle == [idle.id]
    assert report.woken == [waiting_a.id]
    assert report.deferred == [waiting_b.id]
    assert busy.id in world.sandbox.live


def test_orphans_are_removed(world: World) -> None:
    session, _ = world.session()
    world.sandbox.live["sess-gone"] = FakeContainer("nanoclaw-test-sess-gone", "sess-gone", "r")
    world.sandbox.start(session)
    report = world.sweeper.sweep(T0 + 1_000)
    assert report.orphans_removed == ["nanoclaw-test-sess-gone"]
    assert session.id in world.sandbox.live


def test_quiet_stopped_sessions_are_not_opened(world: World) -> None:
    for _ in range(5):
        _, paths = world.session()
        add_message(paths, "done")
        store = InboundStore(paths.inbound_db)
        store.set_status("done", "completed")
        store.close()
    assert world.sweeper.sweep(T0).examined == 5
    assert world.sweeper.sweep(T0 + 1_000).examined == 0
    # A scheduled row wakes its session at its time, without any file changing.
    session, paths = world.session()
    add_message(paths, "later", process_after_ms=T0 + 60_000)
    assert world.sweeper.sweep(T0 + 2_000).woken == []
    assert world.sweeper.sweep(T0 + 3_000).examined == 0
    assert world.sweeper.sweep(T0 + 60_000).woken == [session.id]


def test_gone_container_is_recorded_stopped(world: World) -> None:
    session, _ = world.session()
    world.sandbox.start(session)
    world.central.set_container_status(session.id, "running", now=T0)
    world.sandbox.live.pop(session.id)  # exited on its own, nothing pending
    world.sweeper.sweep(T0 + 5_000)
    assert world.refreshed(session).container_status == "stopped"


# -- restart requests (written by delivery after an approval) -------------------------------


def run_session(world: World, at: int) -> tuple[rows.Session, SessionPaths]:
    """A session whose container started at ``at`` and is beating."""
    session, paths = world.session()
    world.sandbox.now = at
    world.sandbox.start(session)
    beat(paths, at + 1_000)
    return world.refreshed(session), paths


def test_restart_request_verbs(world: World) -> None:
    central = world.central
    running, _ = run_session(world, T0)
    starting, _ = world.session()
    central.set_container_status(starting.id, "starting", run_id="run-x", now=T0)
    world.session()  # stopped: needs no restart
    other_group = central.create_agent_group("Other", "other", now=T0)
    elsewhere = central.create_session(other_group.id, None, now=T0)
    central.set_container_status(elsewhere.id, "starting", run_id="run-y", now=T0)
    closed, _ = run_session(world, T0)
    close_session(central, closed.id)

    asked = central.request_group_restart(world.group.id, "approval a", now=T0 + 10)
    assert sorted(asked) == sorted([running.id, starting.id])
    assert {
        (r.session_id, r.requested_at_ms, r.reason) for r in central.list_restart_requests()
    } == {
        (running.id, T0 + 10, "approval a"),
        (starting.id, T0 + 10, "approval a"),
    }
    # A newer request replaces the older one; a late writer with an older clock never moves
    # the time back.
    central.request_group_restart(world.group.id, "approval b", now=T0 + 20)
    central.request_group_restart(world.group.id, "approval c", now=T0 + 15)
    (first, second) = central.list_restart_requests()
    assert (first.requested_at_ms, second.requested_at_ms) == (T0 + 20, T0 + 20)
    # Clearing is guarded: a request newer than the one acted on stays.
    assert not central.clear_restart_request(running.id, T0 + 19)
    assert central.clear_restart_request(running.id, T0 + 20)
    assert [r.session_id for r in central.list_restart_requests()] == [starting.id]
    assert not central.clear_restart_request(running.id, T0 + 20)


def test_judge_restart() -> None:
    policy = Policy(
        spawn_grace_ms=30_000, heartbeat_timeout_ms=60_000, idle_timeout_ms=1, max_turns=1
    )

    def judge(running: bool, status: str, started: int | None, now: int = T0 + 1_000) -> str:
        return judge_restart(
            T0,
            running=running,
            container_status=status,
            run_started_at_ms=started,
            policy=policy,
            now=now,
        )

    assert judge(True, "running", T0 - 1) is RestartAction.STOP  # the old image's run
    assert judge(True, "running", T0) is RestartAction.DROP  # started with the new config
    assert judge(False, "stopped", T0 - 1) is RestartAction.DROP  # next run starts anew
    assert judge(False, "stopped", None) is RestartAction.DROP
    # Podman does not list a run that is still being created: wait, within the spawn grace.
    assert judge(False, "starting", T0 - 1) is RestartAction.WAIT
    assert judge(False, "starting", T0 - 1, now=T0 - 1 + 30_000) is RestartAction.DROP


def test_restart_request_stops_the_old_run_and_the_note_wakes_a_fresh_one(world: World) -> None:
    session, paths = run_session(world, T0)
    add_message(paths, "approval-1", on_wake=True)  # delivery's note: due, for a new run only
    world.central.request_group_restart(world.group.id, "approval 1", now=T0 + 5_000)
    world.sandbox.now = T0 + 6_000
    report = world.sweeper.sweep(T0 + 6_000)
    assert report.restarted == [session.id]
    assert report.woken == [session.id]  # same pass: the old run left no claims
    assert world.sandbox.calls == [("stop", session.id), ("wake", session.id)]
    assert world.sandbox.live[session.id].run_id == "run-2"
    assert world.central.list_restart_requests() == []
    # The fresh run started after the request: no second restart.
    beat(paths, T0 + 7_000)
    assert world.sweeper.sweep(T0 + 8_000).restarted == []


def test_restart_of_a_busy_run_settles_its_claims_then_wakes(world: World) -> None:
    session, paths = run_session(world, T0)
    add_message(paths, "m1")
    claim(paths, "run-1", "m1")
    add_message(paths, "approval-1", on_wake=True)
    world.central.request_group_restart(world.group.id, "approval 1", now=T0 + 5_000)
    report = world.sweeper.sweep(T0 + 6_000)
    assert (report.restarted, report.settled, report.woken) == ([session.id], [session.id], [])
    row = inbound_row(paths, "m1")
    assert (row.status, row.tries) == ("pending", 1)  # interrupted: retried with backoff
    # Next pass: the claims are settled, the note is due: a fresh run.
    assert world.sweeper.sweep(T0 + 7_000).woken == [session.id]


def test_restart_requests_that_need_nothing_are_dropped(world: World) -> None:
    stopped, _ = world.session()
    world.central.set_container_status(stopped.id, "running", now=T0)
    world.central.request_group_restart(world.group.id, "approval 1", now=T0 + 5_000)
    world.central.set_container_status(stopped.id, "stopped", now=T0 + 5_500)
    fresh, _ = run_session(world, T0 + 6_000)  # started after its request
    world.central.request_group_restart(world.group.id, "approval 2", now=T0 + 6_000)
    report = world.sweeper.sweep(T0 + 8_000)
    assert report.restarted == [] and ("stop", fresh.id) not in world.sandbox.calls
    assert world.central.list_restart_requests() == []


def test_a_starting_run_is_restarted_once_podman_lists_it(world: World) -> None:
    session, paths = world.session()
    world.central.set_container_status(session.id, "starting", run_id="run-1", now=T0)
    world.central.request_group_restart(world.group.id, "approval 1", now=T0 + 1_000)
    report = world.sweeper.sweep(T0 + 2_000)  # not listed by Podman yet, within the grace
    assert report.restarted == [] and len(world.central.list_restart_requests()) == 1
    world.sandbox.live[session.id] = FakeContainer(
        f"nanoclaw-test-{session.id}", session.id, "run-1"
    )
    beat(paths, T0 + 2_500)
    assert world.sweeper.sweep(T0 + 3_000).restarted == [session.id]
    assert world.refreshed(session).container_status == ContainerStatus.STOPPED
    assert world.central.list_restart_requests() == []


def test_a_failed_stop_keeps_the_request(world: World) -> None:
    session, _ = run_session(world, T0)
    world.central.request_group_restart(world.group.id, "approval 1", now=T0 + 5_000)
    world.sandbox.stop_error = OSError("podman: connection refused")
    with pytest.raises(OSError, match="connection refused"):
        world.sweeper.sweep(T0 + 6_000)
    assert len(world.central.list_restart_requests()) == 1
    assert world.sweeper.sweep(T0 + 7_000).restarted == [session.id]
    assert world.central.list_restart_requests() == []


class RacingSweeper(Sweeper):
    """Another program commits a due row while this pass is still reading the session: after
    the sweeper counted due rows, before it finishes with the session."""

    racing_paths: SessionPaths | None = None

    def _act(self, session: rows.Session, *args: object, **kwargs: object) -> None:
        super()._act(session, *args, **kwargs)  # type: ignore[arg-type]
        if self.racing_paths is not None:
            paths, self.racing_paths = self.racing_paths, None
            add_message(paths, "a2a-mid-pass")


def test_a_row_committed_during_the_pass_is_seen_next_pass(world: World) -> None:
    sweeper = RacingSweeper(world.settings, world.central, world.sandbox)
    session, paths = world.session()
    add_message(paths, "old")
    store = InboundStore(paths.inbound_db)
    store.set_status("old", "completed")
    store.close()
    sweeper.racing_paths = paths
    assert sweeper.sweep(T0).woken == []  # the row landed after the due count was taken
    assert sweeper.sweep(T0 + 1_000).woken == [session.id]


def test_a_hung_tool_gets_its_run_stopped_and_the_message_retried(world: World) -> None:
    session, paths = world.session()
    add_message(paths, "m1")
    run_id = world.sandbox.start(session)
    store = OutboundStore(paths.outbound_db)
    store.start_run(run_id, now=T0)
    store.claim(["m1"], run_id, now=T0 + 1_000)
    store.set_tool("grep", now=T0 + 2_000)  # and it never returns
    store.close()
    ceiling = int(world.settings.tool_ceiling_s * 1000) + 60_000
    now = T0 + 2_000 + ceiling + 1
    beat(paths, now - 500)  # the heartbeat thread is still alive
    report = world.sweeper.sweep(now)
    assert report.killed == [session.id]
    row = inbound_row(paths, "m1")
    assert (row.status, row.tries) == ("pending", 1)
