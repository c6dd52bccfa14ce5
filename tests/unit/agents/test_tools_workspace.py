"""bash and the workspace file tools: behaviour and confinement."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agent_runner.tools import ToolContext, execute
from agent_runner.tools.shell import clip_output, run_command

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
