"""Scheduling actions: schedule, update, pause, resume and cancel a task.

Authorization, decided on the host: an agent acts only on tasks in its **own** session's
``inbound.db`` (the session the row came from; a container cannot name another session), and
a task that will reply somewhere needs that address to pass the destination ACL, exactly as
a message would. Update, pause, resume and cancel are series-wide: every live occurrence of a
recurring task changes together.

**Task ids live in a namespace of their own.** The row a task becomes in ``messages_in`` has
an id the host derives, ``task-<session>-<seq of the outbound row>`` (``host_task_id``), never
the id the agent chose: that id was once the row's, and an agent could schedule a task under
the id of a message yet to come (``t<chat>_<n>:<group>`` on Telegram is predictable,
``wh-<source>-<delivery>:<group>`` too), and the real message would then have been dropped as
a duplicate (issue 8). Every row the router writes has ``:<agent group>`` in its id; a host
task id has no ``:``, so the two can never meet. The agent's own id is the task's
``series_id``, which is what ``list_tasks`` shows and update, pause, resume and cancel name
(``kind = 'task'`` rows only). The seq is unique per session, so a re-run after a crash
finds the row it wrote.
"""

from __future__ import annotations

from croniter import croniter

from nanoclaw_common import messages as m
from nanoclaw_common.ids import is_safe_id
from nanoclaw_common.store import NewInbound
from nanoclaw_common.untrusted import escaped
from nanoclaw_delivery.acl import task_address
from nanoclaw_delivery.job import Job
from nanoclaw_delivery.outcome import Denied, Sent

TaskAction = m.ScheduleTask | m.UpdateTask | m.PauseTask | m.ResumeTask | m.CancelTask


def _valid_cron(expression: str) -> bool:
    """A cron expression croniter accepts, with no control character: croniter splits on
    any whitespace, so ``"0\n9 * * *"`` would pass, and the expression is shown in the
    sweeper's log and in ``list_tasks``."""
    return escaped(expression) == expression and bool(croniter.is_valid(expression))


def host_task_id(session_id: str, seq: int) -> str:
    """The ``messages_in`` id of the task an outbound row schedules (module docstring)."""
    return f"task-{session_id}-{seq}"


async def schedule(job: Job, action: m.ScheduleTask) -> Sent:
    if not is_safe_id(action.task_id):
        raise Denied(f"schedule_task: invalid task id {action.task_id!r}", notify_owner=False)
    if action.recurrence is not None and not _valid_cron(action.recurrence):
        raise Denied(
            f"schedule_task: {action.recurrence!r} is not a valid cron expression",
            notify_owner=False,
        )
    job.guard_texts(action.prompt, action.script or "")
    address = await job.deps.central.read(task_address, job.session, job.row)
    row_id = host_task_id(job.session.id, job.row.seq)
    if job.inbound.get_message(row_id) is None and job.inbound.task_statuses(action.task_id) & {
        "pending",
        "paused",
    }:
        # Another live task answers to this id: two would be one series by accident.
        raise Denied(
            f"schedule_task: a task with id {action.task_id!r} is already scheduled",
            notify_owner=False,
        )
    job.inbound.insert_message(
        NewInbound(
            id=row_id,
            content=m.TaskContent(prompt=action.prompt, script=action.script),
            timestamp_ms=job.deps.clock(),
            channel_type=address.channel_type if address else None,
            platform_id=address.platform_id if address else None,
            thread_id=address.thread_id if address else None,
            process_after_ms=action.process_after_ms,
            recurrence=action.recurrence,
            series_id=action.task_id,
        ),
        now=job.deps.clock(),
    )
    # Not created: this row's own task, written before a crash (the id is derived from it).
    return Sent(action.task_id)


async def change(job: Job, action: TaskAction) -> Sent:
    if isinstance(action, m.ScheduleTask):
        return await schedule(job, action)
    inbound = job.inbound
    if isinstance(action, m.UpdateTask):
        if isinstance(action.recurrence, str) and not _valid_cron(action.recurrence):
            raise Denied(
                f"update_task: {action.recurrence!r} is not a valid cron expression",
                notify_owner=False,
            )
        if isinstance(action.prompt, str):
            job.guard_texts(action.prompt)
        if isinstance(action.script, str):
            job.guard_texts(action.script)
        changed = inbound.update_task(
            action.task_id,
            prompt=action.prompt,
            script=action.script,
            process_after_ms=action.process_after_ms,
            recurrence=action.recurrence,
        )
        verb = "update_task"
    elif isinstance(action, m.PauseTask):
        changed, verb = inbound.pause_task(action.task_id), "pause_task"
    elif isinstance(action, m.ResumeTask):
        changed, verb = inbound.resume_task(action.task_id), "resume_task"
    else:
        changed, verb = inbound.cancel_task(action.task_id), "cancel_task"
    if not changed and not already_done(action, inbound.task_statuses(action.task_id)):
        raise Denied(f"{verb}: no live task matched id {action.task_id!r}", notify_owner=False)
    return Sent(action.task_id)


def already_done(action: TaskAction, statuses: set[str]) -> bool:
    """Whether the task is already where the action would put it. A row re-run after a crash
    (its change applied, ``delivered`` not yet recorded) finds nothing left to change; that
    is success, not a refusal: pausing a paused task, resuming one that is pending, and
    cancelling one with no live occurrence left (cancelled or finished: it will not run
    again). ``statuses`` are the series' occurrences' (empty: no such task)."""
    if isinstance(action, m.PauseTask):
        return "paused" in statuses and "pending" not in statuses
    if isinstance(action, m.ResumeTask):
        return "pending" in statuses and "paused" not in statuses
    if isinstance(action, m.CancelTask):
        return bool(statuses) and not statuses & {"pending", "paused"}
    return False
