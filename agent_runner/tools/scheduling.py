"""Scheduling tools (upstream-container.md §5.3). The container cannot write inbound.db, so
schedule/update/pause/resume/cancel are ``kind='system'`` rows the host authorizes and applies;
``list_tasks`` reads inbound.db directly.

Times: an ISO time with ``Z`` or an offset is taken as is; a naive one is wall-clock time in
the configured zone, resolved with zoneinfo (upstream's offset-inversion trick could be an hour
off around DST changes).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
from msgspec import UNSET, UnsetType

from agent_runner.formatter import resolve_zone
from agent_runner.tools.base import Tool, ToolContext, ToolError, schema, string
from nanoclaw_common import messages
from nanoclaw_common.errors import DecodeError
from nanoclaw_common.ids import new_id
from nanoclaw_common.store.outbound import NewOutbound

PREVIEW_CHARS = 80


def parse_when(text: str, zone_name: str) -> int:
    """Epoch ms of an ISO time; naive input is local to ``zone_name``."""
    raw = text.strip()
    try:
        moment = datetime.fromisoformat(raw.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise ToolError(f"invalid process_after: {text}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=resolve_zone(zone_name)[1])
    return int(moment.timestamp() * 1000)


def local_iso(stamp_ms: int, zone: ZoneInfo) -> str:
    moment = datetime.fromtimestamp(stamp_ms / 1000, tz=UTC).astimezone(zone)
    return moment.isoformat(timespec="minutes")


def check_cron(expression: str) -> str:
    """A courtesy check (the host parses it for real): five or six fields."""
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ToolError(
            f"invalid recurrence {expression!r}: give a cron expression such as '0 9 * * 1-5'"
        )
    return " ".join(fields)


def system_row(ctx: ToolContext, content: messages.SystemAction, **routing: Any) -> None:
    ctx.write(NewOutbound(content=content, **routing))


# -- schedule_task ------------------------------------------------------------------------


class ScheduleInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    prompt: str
    process_after: str
    recurrence: str | None = None
    script: str | None = None


def schedule_task(ctx: ToolContext, args: ScheduleInput) -> str:
    if not args.prompt.strip() or not args.process_after.strip():
        raise ToolError("prompt and process_after are required")
    when = parse_when(args.process_after, ctx.config.tz)
    recurrence = check_cron(args.recurrence) if args.recurrence else None
    task_id = new_id("task")
    routing = ctx.inbound.routing()
    system_row(
        ctx,
        messages.ScheduleTask(
            task_id=task_id,
            prompt=args.prompt,
            process_after_ms=when,
            script=args.script or None,
            recurrence=recurrence,
        ),
        channel_type=routing.channel_type,
        platform_id=routing.platform_id,
        thread_id=routing.thread_id,
    )
    zone = resolve_zone(ctx.config.tz)[1]
    text = f"Task scheduled (id: {task_id}, runs at: {local_iso(when, zone)}"
    return text + (f", recurrence: {recurrence})" if recurrence else ")")


# -- list_tasks ---------------------------------------------------------------------------


class ListInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    status: str | None = None


def list_tasks(ctx: ToolContext, args: ListInput) -> str:
    if args.status not in (None, "pending", "paused"):
        raise ToolError("status must be pending or paused")
    zone = resolve_zone(ctx.config.tz)[1]
    lines: list[str] = []
    for row in ctx.inbound.list_tasks(args.status):
        try:
            content = messages.decode_inbound_content(row.content)
            prompt = content.prompt if isinstance(content, messages.TaskContent) else ""
        except DecodeError:
            prompt = ""
        when = local_iso(row.process_after_ms, zone) if row.process_after_ms else "now"
        recur = f"recur={row.recurrence} " if row.recurrence else ""
        preview = prompt[:PREVIEW_CHARS].replace("\n", " ")
        lines.append(f"- {row.series_id or row.id} [{row.status}] at={when} {recur}→ {preview}")
    return "\n".join(lines) if lines else "No tasks found."


# -- update, pause, resume, cancel --------------------------------------------------------


class UpdateInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    task_id: str
    prompt: str | None = None
    process_after: str | None = None
    recurrence: str | None = None
    script: str | None = None


def update_task(ctx: ToolContext, args: UpdateInput) -> str:
    if not args.task_id.strip():
        raise ToolError("task_id is required")
    if all(v is None for v in (args.prompt, args.process_after, args.recurrence, args.script)):
        raise ToolError("at least one field to update is required")
    # An empty string clears recurrence (one-shot) or script; None leaves the field alone.
    recurrence: str | UnsetType | None = UNSET
    if args.recurrence is not None:
        recurrence = check_cron(args.recurrence) if args.recurrence else None
    script: str | UnsetType | None = UNSET
    if args.script is not None:
        script = args.script or None
    system_row(
        ctx,
        messages.UpdateTask(
            task_id=args.task_id,
            prompt=args.prompt if args.prompt is not None else UNSET,
            process_after_ms=(
                parse_when(args.process_after, ctx.config.tz) if args.process_after else UNSET
            ),
            recurrence=recurrence,
            script=script,
        ),
    )
    return f"Task update requested: {args.task_id}"


class TaskIdInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    task_id: str


def _simple(
    action: type[messages.PauseTask | messages.ResumeTask | messages.CancelTask], verb: str
) -> Any:
    def handler(ctx: ToolContext, args: TaskIdInput) -> str:
        if not args.task_id.strip():
            raise ToolError("task_id is required")
        system_row(ctx, action(task_id=args.task_id))
        return f"Task {verb} requested: {args.task_id}"

    return handler


TASK_ID = schema({"task_id": string("The task's id (from list_tasks).")}, ["task_id"])

TOOLS: list[Tool[Any]] = [
    Tool(
        "schedule_task",
        "Schedule a prompt to run later, once or on a cron schedule (evaluated in your time "
        "zone). An optional bash script runs first; its last output line must be JSON "
        '{"wakeAgent": true|false, "data": ...} and false skips that run.',
        schema(
            {
                "prompt": string("What to do when the task runs."),
                "process_after": string(
                    "ISO time of the (first) run, e.g. 2026-01-15T09:00:00 (your time zone) "
                    "or with Z/offset."
                ),
                "recurrence": string("Cron expression for repeating tasks, e.g. '0 9 * * 1-5'."),
                "script": string("Optional bash script deciding whether to wake you."),
            },
            ["prompt", "process_after"],
        ),
        ScheduleInput,
        schedule_task,
    ),
    Tool(
        "list_tasks",
        "List scheduled tasks (pending and paused, or one status).",
        schema({"status": string("pending or paused (default: both).")}),
        ListInput,
        list_tasks,
    ),
    Tool(
        "update_task",
        "Change a scheduled task. An empty recurrence makes it one-shot; an empty script "
        "removes the script.",
        schema(
            {
                "task_id": string("The task's id."),
                "prompt": string("New prompt."),
                "process_after": string("New time of the next run (ISO)."),
                "recurrence": string("New cron expression, or empty for one-shot."),
                "script": string("New script, or empty to remove it."),
            },
            ["task_id"],
        ),
        UpdateInput,
        update_task,
    ),
    Tool(
        "cancel_task",
        "Cancel a scheduled task (all its future runs).",
        TASK_ID,
        TaskIdInput,
        _simple(messages.CancelTask, "cancellation"),
    ),
    Tool(
        "pause_task",
        "Pause a scheduled task.",
        TASK_ID,
        TaskIdInput,
        _simple(messages.PauseTask, "pause"),
    ),
    Tool(
        "resume_task",
        "Resume a paused task.",
        TASK_ID,
        TaskIdInput,
        _simple(messages.ResumeTask, "resume"),
    ),
]
