"""Scheduling actions through the engine: schedule, update, pause, resume, cancel (series-wide),
and their refusals."""

from __future__ import annotations

from nanoclaw_common import messages as m
from nanoclaw_delivery.tasks import host_task_id
from tests.delivery_world import SECRET, World


def task_rows(world: World) -> dict[str, tuple[str, int | None, str | None]]:
    """Task rows by their (host) id: (status, process_after_ms, recurrence)."""
    return {row_id: (st, due, rec) for row_id, (_series, st, due, rec) in _task_rows(world).items()}


def _task_rows(world: World) -> dict[str, tuple[str | None, str, int | None, str | None]]:
    store = world.inbound()
    try:
        return {
            r.id: (r.series_id, r.status, r.process_after_ms, r.recurrence)
            for r in store.list_messages()
            if r.kind == "task"
        }
    finally:
        store.close()


def schedule(world: World, task_id: str = "task-1", **fields: object) -> str:
    return world.write(
        m.ScheduleTask(
            task_id=task_id,
            prompt="water the plants",
            process_after_ms=world.clock() + 60_000,
            **fields,  # type: ignore[arg-type]
        )
    ).id


def test_schedule_inserts_a_task_row_with_the_session_routing(world: World) -> None:
    out = schedule(world, recurrence="0 9 * * *")
    world.drain()
    assert world.delivery(out).status == "delivered"
    store = world.inbound()
    row = store.get_message(host_task_id(world.session.id, world.delivery(out).seq))
    store.close()
    assert row is not None
    assert (row.kind, row.series_id, row.recurrence) == ("task", "task-1", "0 9 * * *")
    assert (row.channel_type, row.platform_id) == ("telegram", "100")
    assert row.process_after_ms == world.clock() + 60_000
    assert world.deps.counters.actions == 1
    assert world.telegram.calls == []


def test_schedule_is_idempotent_after_a_crash(world: World) -> None:
    schedule(world)
    world.drain()
    store = world.inbound()
    store.db.execute("UPDATE deliveries SET status = 'sending'")  # as if we died mid-action
    store.close()
    world.drain()
    assert [series for series, *_ in _task_rows(world).values()] == ["task-1"]


def test_schedule_refusals(world: World) -> None:
    bad_cron = schedule(world, "task-2", recurrence="every day")
    bad_id = schedule(world, "../etc")
    first = schedule(world, "twice")
    taken = schedule(world, "twice")
    leak = world.write(
        m.ScheduleTask(task_id="task-3", prompt=SECRET, process_after_ms=world.clock())
    ).id
    elsewhere = world.write(
        m.ScheduleTask(task_id="task-4", prompt="x", process_after_ms=world.clock()),
        channel_type="telegram",
        platform_id="200",
    ).id
    world.drain()
    for out, reason in (
        (bad_cron, "not a valid cron"),
        (bad_id, "invalid task id"),
        (taken, "already scheduled"),
        (leak, "leak guard"),
        (elsewhere, "no destination grants"),
    ):
        row = world.delivery(out)
        assert row.status == "denied", out
        assert reason in row.last_error
    assert world.delivery(first).status == "delivered"
    assert [series for series, *_ in _task_rows(world).values()] == ["twice"]


def test_pause_resume_update_cancel_are_series_wide(world: World) -> None:
    schedule(world, recurrence="0 9 * * *")
    world.drain()
    # the sweeper's next occurrence of the same series
    from nanoclaw_common.store import NewInbound

    store = world.inbound()
    store.insert_message(
        NewInbound(
            id="task-1-next",
            content=m.TaskContent(prompt="water the plants"),
            timestamp_ms=world.clock(),
            series_id="task-1",
            recurrence="0 9 * * *",
        )
    )
    store.close()
    world.write(m.PauseTask(task_id="task-1"))
    world.drain()
    assert {s for s, _p, _r in task_rows(world).values()} == {"paused"}
    world.write(m.ResumeTask(task_id="task-1"))
    world.write(m.UpdateTask(task_id="task-1", process_after_ms=world.clock() + 5, recurrence=None))
    world.drain()
    assert set(task_rows(world).values()) == {("pending", world.clock() + 5, None)}
    world.write(m.CancelTask(task_id="task-1"))
    world.drain()
    assert {s for s, _p, _r in task_rows(world).values()} == {"completed"}


def test_changes_to_unknown_tasks_are_refused_and_reported_to_the_agent(world: World) -> None:
    outs = [
        world.write(action).id
        for action in (
            m.PauseTask(task_id="nope"),
            m.ResumeTask(task_id="nope"),
            m.CancelTask(task_id="nope"),
            m.UpdateTask(task_id="nope", prompt="x"),
            m.UpdateTask(task_id="nope", recurrence="bad cron"),
        )
    ]
    world.drain()
    errors = [world.delivery(out).last_error for out in outs]
    assert [e.split(":")[0] for e in errors[:4]] == [
        "pause_task",
        "resume_task",
        "cancel_task",
        "update_task",
    ]
    assert "no live task matched" in errors[0]
    assert "not a valid cron" in errors[4]
    assert len(world.notes()) == 5
    # a plain mistake: the owner is not bothered
    assert all(not c[1].startswith("dm-") for c in world.telegram.calls)


def _crash_before_delivered(world: World, out_id: str) -> None:
    """The crash point of docs/delivery.md row 12: the action was applied, ``delivered``
    was not recorded; the restarted delivery finds the row in ``sending``."""
    store = world.inbound()
    store.db.execute("UPDATE deliveries SET status = 'sending' WHERE message_out_id = ?", (out_id,))
    store.close()


def test_pause_resume_cancel_are_idempotent_after_a_crash(world: World) -> None:
    schedule(world, recurrence="0 9 * * *")
    world.drain()
    for action, wanted in (
        (m.PauseTask(task_id="task-1"), "paused"),
        (m.ResumeTask(task_id="task-1"), "pending"),
        (m.CancelTask(task_id="task-1"), "completed"),
    ):
        out = world.write(action).id
        world.drain()
        assert world.delivery(out).status == "delivered"
        _crash_before_delivered(world, out)
        world.drain()  # applied again: nothing left to change, and that is success
        row = world.delivery(out)
        assert (row.status, row.attempts) == ("delivered", 2), action
        assert {s for s, _p, _r in task_rows(world).values()} == {wanted}
    assert world.notes() == []  # no refusal was reported


def test_a_pause_of_a_finished_task_is_still_refused(world: World) -> None:
    schedule(world)
    world.drain()
    cancel = world.write(m.CancelTask(task_id="task-1")).id
    world.drain()
    assert world.delivery(cancel).status == "delivered"
    pause = world.write(m.PauseTask(task_id="task-1")).id
    resume = world.write(m.ResumeTask(task_id="task-1")).id
    again = world.write(m.CancelTask(task_id="task-1")).id
    world.drain()
    assert world.delivery(pause).status == "denied"  # nothing live to pause
    assert world.delivery(resume).status == "denied"  # nor to resume
    assert world.delivery(again).status == "delivered"  # it will not run: already so


def test_a_task_id_is_never_a_row_id_a_message_will_take(world: World) -> None:
    """Issue 8: an agent scheduled a task under the id of a message yet to come (Telegram's
    ``t<chat>_<n>:<group>`` is predictable); the real message was then dropped as a
    duplicate. Task rows get ids of their own: the future message's id stays free, and the
    agent still names the task by its own id."""
    future = f"t100_43:{world.group.id}"
    out = schedule(world, future)
    world.drain()
    assert world.delivery(out).status == "delivered"
    store = world.inbound()
    try:
        assert store.get_message(future) is None  # the message's id is still free
        [task] = [r for r in store.list_messages() if r.kind == "task"]
        assert task.series_id == future and ":" not in task.id
    finally:
        store.close()
    world.user_message(future, "telegram:owner", "the real message")
    store = world.inbound()
    try:
        arrived = store.get_message(future)
        assert arrived is not None and arrived.kind == "chat"
    finally:
        store.close()
    world.write(m.PauseTask(task_id=future))  # the agent's own id still names it
    world.drain()
    assert {status for status, _p, _r in task_rows(world).values()} == {"paused"}


def test_a_cron_expression_with_a_control_character_is_refused(world: World) -> None:
    """croniter splits on any whitespace, so ``"0\\n9 * * *"`` is valid to it; the expression
    is shown in logs and in list_tasks, so it must be one line."""
    out = schedule(world, "nightly", recurrence="0\n9 * * *")
    world.drain()
    row = world.delivery(out)
    assert row.status == "denied" and "not a valid cron" in (row.last_error or "")
    assert "\n" not in (row.last_error or "")
