"""Scheduling tools and requests for the host: the system rows they write."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from msgspec import UNSET

from agent_runner.tools import ToolContext, execute
from agent_runner.tools.admin import check_packages
from agent_runner.tools.base import ToolError
from agent_runner.tools.scheduling import parse_when
from nanoclaw_common import messages
from nanoclaw_common.store import NewInbound

from .conftest import NOW, Session


def run(ctx: ToolContext, name: str, /, **arguments: object) -> str:
    text, is_error = execute(ctx, name, arguments)
    assert not is_error, text
    return text


def refused(ctx: ToolContext, name: str, /, **arguments: object) -> str:
    text, is_error = execute(ctx, name, arguments)
    assert is_error, text
    return text


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp() * 1000)


def test_parse_when_zones() -> None:
    assert parse_when("2026-01-15T09:00:00", "America/New_York") == ms(2026, 1, 15, 14)
    assert parse_when("2026-06-15T09:00:00", "Asia/Tokyo") == ms(2026, 6, 15, 0)
    assert parse_when("2026-01-15T09:00:00Z", "Asia/Tokyo") == ms(2026, 1, 15, 9)
    assert parse_when("2026-01-15T09:00:00+0200", "UTC") == ms(2026, 1, 15, 7)
    assert parse_when("2026-01-15T09:00:00", "Not/AZone") == ms(2026, 1, 15, 9)
    # Around a DST change zoneinfo resolves the wall clock exactly.
    assert parse_when("2026-03-08T09:00:00", "America/New_York") == ms(2026, 3, 8, 13)
    with pytest.raises(ToolError, match="invalid process_after: tomorrow"):
        parse_when("tomorrow", "UTC")


def test_schedule_task_row(session: Session, ctx: ToolContext) -> None:
    text = run(
        ctx,
        "schedule_task",
        prompt="Water the plants",
        process_after="2026-01-15T09:00:00Z",
        recurrence="0  9 * * 1-5",
        script="echo '{\"wakeAgent\": true}'",
    )
    (row,) = session.rows()
    content = messages.decode_outbound_content(row.content)
    assert isinstance(content, messages.ScheduleTask)
    assert text == (
        f"Task scheduled (id: {content.task_id}, runs at: 2026-01-15T09:00+00:00, "
        "recurrence: 0 9 * * 1-5)"
    )
    assert content == messages.ScheduleTask(
        task_id=content.task_id,
        prompt="Water the plants",
        process_after_ms=ms(2026, 1, 15, 9),
        script="echo '{\"wakeAgent\": true}'",
        recurrence="0 9 * * 1-5",
    )
    assert row.kind == "system"
    assert (row.channel_type, row.platform_id, row.thread_id) == ("cli", "chat-1", "thread-9")
    assert "invalid recurrence" in refused(
        ctx, "schedule_task", prompt="p", process_after="2026-01-15T09:00:00Z", recurrence="daily"
    )
    assert "required" in refused(ctx, "schedule_task", prompt="", process_after="x")


def test_list_tasks(session: Session, ctx: ToolContext) -> None:
    assert run(ctx, "list_tasks") == "No tasks found."
    for task_id, recurrence in (("task-a", "0 9 * * *"), ("task-b", None)):
        session.inbound.insert_message(
            NewInbound(
                id=task_id,
                content=messages.TaskContent(prompt="Check the mail " + "x" * 100),
                timestamp_ms=NOW,
                process_after_ms=ms(2026, 2, 1, 8),
                recurrence=recurrence,
            )
        )
    session.inbound.set_status("task-b", "paused")
    listing = run(ctx, "list_tasks")
    assert listing.splitlines() == [
        "- task-a [pending] at=2026-02-01T08:00+00:00 recur=0 9 * * * → Check the mail " + "x" * 65,
        "- task-b [paused] at=2026-02-01T08:00+00:00 → Check the mail " + "x" * 65,
    ]
    assert run(ctx, "list_tasks", status="paused").startswith("- task-b")
    assert "pending or paused" in refused(ctx, "list_tasks", status="done")


def test_update_pause_resume_cancel(session: Session, ctx: ToolContext) -> None:
    assert run(ctx, "update_task", task_id="task-a", recurrence="", prompt="new") == (
        "Task update requested: task-a"
    )
    run(ctx, "update_task", task_id="task-a", process_after="2026-01-15T09:00:00Z", script="")
    assert run(ctx, "pause_task", task_id="task-a") == "Task pause requested: task-a"
    assert run(ctx, "resume_task", task_id="task-a") == "Task resume requested: task-a"
    assert run(ctx, "cancel_task", task_id="task-a") == "Task cancellation requested: task-a"
    first, second, pause, resume, cancel = session.contents()
    assert first == messages.UpdateTask(task_id="task-a", prompt="new", recurrence=None)
    assert isinstance(first, messages.UpdateTask) and first.script is UNSET
    assert second == messages.UpdateTask(
        task_id="task-a", process_after_ms=ms(2026, 1, 15, 9), script=None
    )
    assert (pause, resume, cancel) == (
        messages.PauseTask(task_id="task-a"),
        messages.ResumeTask(task_id="task-a"),
        messages.CancelTask(task_id="task-a"),
    )
    assert {r.kind for r in session.rows()} == {"system"}
    assert "at least one field" in refused(ctx, "update_task", task_id="task-a")
    assert "task_id is required" in refused(ctx, "cancel_task", task_id=" ")


def test_create_agent(session: Session, ctx: ToolContext) -> None:
    assert run(ctx, "create_agent", name="Research Buddy", instructions="Be curious") == (
        'Creating agent "Research Buddy". You will be notified when it is ready.'
    )
    (content,) = session.contents()
    assert isinstance(content, messages.CreateAgent)
    assert (content.name, content.instructions) == ("Research Buddy", "Be curious")
    assert content.request_id.startswith("req-")
    assert refused(ctx, "create_agent", name=" ") == "Error: name is required"


@pytest.mark.parametrize(
    ("apt", "pip", "problem"),
    [
        ([], [], "name at least one apt or pip package"),
        (["ab"] * 11, ["cd"] * 10, "21 packages named; at most 20 per request"),
        (["curl; rm -rf /"], [], "invalid apt package name 'curl; rm -rf /'"),
        (["Curl"], [], "invalid apt package name"),
        (["-o"], [], "invalid apt package name"),
        (["x"], [], "invalid apt package name"),  # Debian names have two characters at least
        ([], ["requests==2.0"], "invalid pip package name 'requests==2.0'"),
        ([], ["requests[socks]"], "invalid pip package name"),
        ([], ["git+https://x/y"], "invalid pip package name"),
        ([], ["pkg-"], "invalid pip package name"),
        ([], ["$(id)"], "invalid pip package name"),
    ],
)
def test_install_packages_refusals(apt: list[str], pip: list[str], problem: str) -> None:
    with pytest.raises(ToolError, match=re.escape(problem)):
        check_packages(apt, pip)


def test_install_packages_and_mcp_rows(session: Session, ctx: ToolContext) -> None:
    text = run(
        ctx,
        "install_packages",
        apt=["ffmpeg", "libc6-dev", "g++"],
        pip=["Pillow", "zope.interface", "typing_extensions"],
        reason="video",
    )
    assert text.startswith("Package install request submitted.")
    assert "invalid apt" in refused(ctx, "install_packages", apt=["bad name"])
    assert run(
        ctx, "add_mcp_server", name="github", command="npx", args=["-y", "srv"], env={"A": "b"}
    ).startswith("MCP server request submitted.")
    assert "invalid server name" in refused(ctx, "add_mcp_server", name="a/b", command="x")
    assert "invalid environment variable name(s): A B" in refused(
        ctx, "add_mcp_server", name="ok", command="x", env={"A B": "1"}
    )
    assert "required" in refused(ctx, "add_mcp_server", name="ok", command=" ")
    assert "loads code are refused" in refused(
        ctx, "add_mcp_server", name="ok", command="npx", env={"NODE_OPTIONS": "--require x"}
    )
    install, mcp = session.contents()
    assert install == messages.InstallPackages(
        apt=["ffmpeg", "libc6-dev", "g++"],
        pip=["Pillow", "zope.interface", "typing_extensions"],
        reason="video",
    )
    assert mcp == messages.AddMcpServer(
        name="github", command="npx", args=["-y", "srv"], env={"A": "b"}
    )
    assert {r.kind for r in session.rows()} == {"system"}
