"""bash and the workspace file tools: behaviour and confinement."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent_runner.reaper import Proc, descendants, parse_stat, process_table
from agent_runner.tools import ToolContext, execute
from agent_runner.tools.files import MAX_GREP_RESULTS
from agent_runner.tools.shell import clip_output, run_command
from nanoclaw_common.store.outbound import OutboundReader

from .conftest import Session


def run(ctx: ToolContext, name: str, /, **arguments: object) -> str:
    text, is_error = execute(ctx, name, arguments)
    assert not is_error, text
    return text


def refused(ctx: ToolContext, name: str, /, **arguments: object) -> str:
    text, is_error = execute(ctx, name, arguments)
    assert is_error, text
    return text


@pytest.fixture
def outside(session: Session) -> Path:
    path = session.paths.workspace.parent / "outside"
    path.mkdir()
    (path / "secret.txt").write_text("top secret")
    return path


def test_bash_runs_in_the_workspace(session: Session, ctx: ToolContext) -> None:
    assert run(ctx, "bash", command="pwd") == str(session.paths.workspace)
    assert run(ctx, "bash", command="echo out; echo err >&2; exit 3") == "out\nerr\n[exit code 3]"
    assert run(ctx, "bash", command="true") == "(no output)"
    assert refused(ctx, "bash", command=" ") == "Error: command is required"


def test_bash_hides_the_runs_private_variables(
    ctx: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NANOCLAW_TOKEN_FD", "7")
    monkeypatch.setenv("NANOCLAW_RUN_ID", "run-9")
    monkeypatch.setenv("NANOCLAW_REEXEC", "/session/agent/heartbeat")
    monkeypatch.setenv("DEMO_SETTING", "kept")
    command = 'echo "[$NANOCLAW_TOKEN_FD][$NANOCLAW_RUN_ID][$NANOCLAW_REEXEC][$DEMO_SETTING]"'
    assert run(ctx, "bash", command=command) == "[][][][kept]"


def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "survived"
    started = time.monotonic()
    output, code = run_command(
        f"echo started; (sleep 5; touch {marker}) & sleep 5", str(tmp_path), 0.3
    )
    assert code is None and output == "started\n"
    assert time.monotonic() - started < 4
    # The background child died with the call: the marker never appears.
    probe, _ = run_command(f"sleep 0.1; test -e {marker} && echo yes || echo no", ".", 5)
    assert probe == "no\n"


def test_bash_timeout_is_an_error_and_declares_its_timeout(
    session: Session, ctx: ToolContext
) -> None:
    text = refused(ctx, "bash", command="echo partial; sleep 10", timeout_s=1)
    assert text == "Error: command timed out after 1s\npartial"
    assert session.outbound.container_state().current_tool is None  # type: ignore[union-attr]


def test_clip_keeps_head_and_tail() -> None:
    clipped = clip_output("a" * 20_000 + "b" * 20_000)
    assert clipped.startswith("a" * 15_000) and clipped.endswith("b" * 15_000)
    assert "characters cut" in clipped


def test_read_write_edit(session: Session, ctx: ToolContext) -> None:
    assert run(ctx, "write_file", path="notes/a.txt", content="one\ntwo\nthree\n") == (
        "Wrote 14 bytes to notes/a.txt"
    )
    assert run(ctx, "read_file", path="notes/a.txt") == "     1\tone\n     2\ttwo\n     3\tthree"
    assert run(ctx, "read_file", path="/workspace/notes/a.txt", offset=2, limit=1) == (
        "     2\ttwo\n[1 more lines; read on with offset=3]"
    )
    assert run(ctx, "edit_file", path="notes/a.txt", old_text="two", new_text="2") == (
        "Replaced 1 occurrence(s) in notes/a.txt"
    )
    assert (session.paths.workspace / "notes/a.txt").read_text() == "one\n2\nthree\n"
    run(ctx, "write_file", path="dup.txt", content="x x x")
    assert "appears 3 times" in refused(
        ctx, "edit_file", path="dup.txt", old_text="x", new_text="y"
    )
    assert run(ctx, "edit_file", path="dup.txt", old_text="x", new_text="y", replace_all=True) == (
        "Replaced 3 occurrence(s) in dup.txt"
    )
    assert "was not found" in refused(ctx, "edit_file", path="dup.txt", old_text="z", new_text="")
    (session.paths.workspace / "bin.dat").write_bytes(b"\0\1\2")
    assert "binary" in refused(ctx, "read_file", path="bin.dat")
    assert "File not found" in refused(ctx, "read_file", path="nope.txt")
    assert "not a regular file" in refused(ctx, "read_file", path="notes")


def test_paths_cannot_escape_the_workspace(
    session: Session, ctx: ToolContext, outside: Path
) -> None:
    workspace = session.paths.workspace
    (workspace / "escape").symlink_to(outside)
    (workspace / "secret-link.txt").symlink_to(outside / "secret.txt")
    (workspace / "inside-link.txt").symlink_to(workspace / "ok.txt")
    (workspace / "ok.txt").write_text("fine")
    for path in (
        "../outside/secret.txt",
        str(outside / "secret.txt"),
        "escape/secret.txt",
        "secret-link.txt",
        "/etc/passwd",
        "/workspace/../etc/passwd",
    ):
        assert "outside the workspace" in refused(ctx, "read_file", path=path), path
    assert "outside the workspace" in refused(ctx, "write_file", path="escape/new.txt", content="x")
    assert "outside the workspace" in refused(
        ctx, "edit_file", path="secret-link.txt", old_text="top", new_text="no"
    )
    assert "outside the workspace" in refused(ctx, "list_files", path="escape")
    assert "outside the workspace" in refused(ctx, "grep", pattern="secret", path="../outside")
    assert not (outside / "new.txt").exists()
    assert (outside / "secret.txt").read_text() == "top secret"
    # A symlink that stays inside is fine.
    assert run(ctx, "read_file", path="inside-link.txt") == "     1\tfine"


def test_list_and_grep(session: Session, ctx: ToolContext, outside: Path) -> None:
    workspace = session.paths.workspace
    (workspace / "src").mkdir()
    (workspace / "src" / "main.py").write_text("def main():\n    return 'Hello'\n")
    (workspace / "README.md").write_text("hello world\n")
    (workspace / ".git").mkdir()
    (workspace / ".git" / "config").write_text("hello git")
    (workspace / "escape").symlink_to(outside)
    listing = run(ctx, "list_files")
    assert listing.splitlines() == [
        "escape -> " + str(outside),
        "src/",
        "README.md",
        "src/main.py",
    ]
    assert run(ctx, "list_files", pattern="*.py") == "src/main.py"
    assert run(ctx, "list_files", path="src", recursive=False) == "main.py"
    assert run(ctx, "grep", pattern="hello", ignore_case=True) == (
        "README.md:1: hello world\nsrc/main.py:2:     return 'Hello'"
    )
    assert run(ctx, "grep", pattern="hello", glob="*.py") == "No matches."
    assert run(ctx, "grep", pattern="secret") == "No matches."  # never through the symlink
    assert "invalid regular expression" in refused(ctx, "grep", pattern="(")
    assert os.path.islink(workspace / "escape")


def test_file_tools_never_open_a_fifo_or_a_socket(session: Session, ctx: ToolContext) -> None:
    workspace = session.paths.workspace
    (workspace / "notes.txt").write_text("hello there\n")
    os.mkfifo(workspace / "pipe.txt")  # a plain open() for reading would wait for a writer
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(workspace / "sock.txt"))
    try:
        assert run(ctx, "grep", pattern="hello") == "notes.txt:1: hello there"
        assert run(ctx, "grep", pattern="hello", path="pipe.txt") == "No matches."
        assert "not a regular file" in refused(ctx, "read_file", path="pipe.txt")
        assert "not a regular file" in refused(ctx, "read_file", path="sock.txt")
        # Writing: no reader, so the non-blocking open fails at once; nothing waits.
        assert "cannot write" in refused(ctx, "write_file", path="pipe.txt", content="x")
        assert "pipe.txt" in run(ctx, "list_files")
    finally:
        server.close()


def test_a_catastrophic_regex_is_stopped(
    session: Session, make_ctx: Callable[..., ToolContext]
) -> None:
    ctx = make_ctx(grep_timeout_s=0.5)
    (session.paths.workspace / "a.txt").write_text("a" * 40 + "!\n")
    seen: list[tuple[str | None, int | None]] = []
    done = threading.Event()

    def watch() -> None:
        # The host's view of the call, from another connection, while it runs.
        reader = OutboundReader(session.paths.session.outbound_db)
        try:
            while not done.wait(0.02):
                state = reader.container_state()
                assert state is not None
                seen.append((state.current_tool, state.tool_declared_timeout_ms))
        finally:
            reader.close()

    # Other tests may leave long-lived children of pytest (the podman service, the
    # multiprocessing resource tracker); only processes this call started count.
    before = {p.pid for p in descendants(process_table(), os.getpid())}
    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    try:
        text = refused(ctx, "grep", pattern="(a+)+$")
    finally:
        done.set()
        watcher.join()
    assert text.startswith("Error: grep timed out after 0.5s and was stopped")
    assert time.monotonic() - started < 5
    assert ("grep", 500) in seen
    # The search process was killed, not left running.
    left = descendants(process_table(), os.getpid())
    assert [p for p in left if p.state != "Z" and p.pid not in before] == []
    # The runner is free again at once.
    (session.paths.workspace / "b.txt").write_text("quick\n")
    assert run(ctx, "grep", pattern="quick") == "b.txt:1: quick"


def test_grep_results_are_capped(session: Session, ctx: ToolContext) -> None:
    (session.paths.workspace / "many.txt").write_text("x\n" * 300)
    lines = run(ctx, "grep", pattern="x").splitlines()
    assert len(lines) == MAX_GREP_RESULTS + 1
    assert lines[-1] == "[stopped: too many results; narrow the search]"


def test_parse_stat_copes_with_odd_command_names() -> None:
    line = "4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 0"
    assert parse_stat(line) == Proc(pid=4242, ppid=17, start=987654, state="S")
    assert parse_stat("garbage") is None


def test_descendants_leave_spared_subtrees_out() -> None:
    table = {
        p.pid: p
        for p in (
            Proc(10, 1, 0, "S"),  # the runner
            Proc(11, 10, 0, "S"),  # a tool's bash
            Proc(12, 11, 0, "S"),  # its child
            Proc(13, 10, 0, "S"),  # an orphan reparented to the runner
            Proc(20, 10, 0, "S"),  # an MCP server
            Proc(21, 20, 0, "S"),  # its child
            Proc(30, 1, 0, "S"),  # someone else's
        )
    }
    assert sorted(p.pid for p in descendants(table, 10)) == [11, 12, 13, 20, 21]
    assert sorted(p.pid for p in descendants(table, 10, spare={20})) == [11, 12, 13]


def test_attachments_in_the_inbox_can_be_read_not_written(
    session: Session, ctx: ToolContext, outside: Path
) -> None:
    inbox = session.paths.session.inbox / "m1"
    inbox.mkdir(parents=True)
    (inbox / "report.txt").write_text("quarterly numbers\n")
    (inbox / "escape.txt").symlink_to(outside / "secret.txt")
    (session.paths.session.root / "runner.json").write_text('{"secret": "config"}')
    assert run(ctx, "read_file", path="/session/inbox/m1/report.txt") == (
        "     1\tquarterly numbers"
    )
    assert run(ctx, "list_files", path="/session/inbox").splitlines() == [
        "m1/",
        f"m1/escape.txt -> {outside / 'secret.txt'}",
        "m1/report.txt",
    ]
    assert run(ctx, "grep", pattern="quarterly", path="/session/inbox") == (
        "/session/inbox/m1/report.txt:1: quarterly numbers"
    )
    # Never through a symlink out of the inbox, never the rest of the session folder.
    assert run(ctx, "grep", pattern="secret", path="/session/inbox") == "No matches."
    assert "outside the workspace" in refused(ctx, "read_file", path="/session/inbox/m1/escape.txt")
    assert "only attachments under /session/inbox can be read" in refused(
        ctx, "read_file", path="/session/runner.json"
    )
    assert "outside the workspace" in refused(ctx, "grep", pattern="x", path="/session")
    # Read-only: writes stay in the workspace.
    assert "outside the workspace" in refused(
        ctx, "write_file", path="/session/inbox/m1/new.txt", content="x"
    )
    assert "outside the workspace" in refused(
        ctx, "edit_file", path="/session/inbox/m1/report.txt", old_text="q", new_text="Q"
    )
    assert not (inbox / "new.txt").exists()
    assert (inbox / "report.txt").read_text() == "quarterly numbers\n"
