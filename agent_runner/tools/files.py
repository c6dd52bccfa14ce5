"""File tools: read_file, write_file, edit_file, list_files, grep.

Writes (write_file, edit_file) are confined to the workspace. Reads (read_file, list_files,
grep) also reach the session's ``/session/inbox``, where the attachments people send are
saved (read-only). Every path is resolved with ``realpath`` (symlinks included) and must stay
under the real root it names; the final open uses ``O_NOFOLLOW``, so a symlink swapped in
after the check is refused rather than followed. Walks never follow symlinked directories,
and a symlinked file is read only when it resolves inside a readable folder.

Only regular files are ever opened, and never in a way that can block: ``O_NONBLOCK`` and an
``fstat`` check refuse FIFOs, devices and sockets (a FIFO planted in the workspace would
otherwise hang the runner). ``grep`` searches in a child process (``grep_child``) that is
killed after ``ToolContext.grep_timeout_s``: a regular expression can take exponential time,
and nothing can interrupt Python's ``re`` inside the runner.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import re
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from agent_runner import grep_child
from agent_runner.hardening import tool_environment
from agent_runner.tools.base import (
    GREP_TIMEOUT_S,
    Tool,
    ToolContext,
    ToolError,
    integer,
    schema,
    string,
)
from nanoclaw_common.paths import CONTAINER

MAX_READ_BYTES = 10_000_000
MAX_OUTPUT_CHARS = 100_000
MAX_LIST_ENTRIES = 500
MAX_GREP_RESULTS = 200
MAX_GREP_FILE_BYTES = 5_000_000
MAX_GREP_LINE_CHARS = 500
SKIPPED_DIRS = frozenset({".git", "__pycache__", "node_modules", ".venv"})
# The child is started with -I (no environment variables, no user site, nothing from the
# working folder on sys.path) and -S (no site-packages): it needs only the stdlib.
GREP_COMMAND = (sys.executable, "-I", "-S", "-B", grep_child.__file__)


@dataclass(frozen=True)
class Root:
    """A folder the file tools reach."""

    real: Path  # its real path
    shown: str  # how the agent knows it: "" for the workspace (relative paths)
    writable: bool


def roots(ctx: ToolContext) -> list[Root]:
    return [
        Root(Path(os.path.realpath(ctx.workspace)), "", writable=True),
        Root(Path(os.path.realpath(ctx.session.inbox)), str(CONTAINER.session.inbox), False),
    ]


def root_of(ctx: ToolContext, real: Path, *, write: bool = False) -> Root | None:
    for root in roots(ctx):
        if (root.writable or not write) and (real == root.real or root.real in real.parents):
            return root
    return None


def confine(ctx: ToolContext, raw: str, *, write: bool = False) -> Path:
    """The real path of ``raw`` (relative to the workspace, or absolute under it; for reads,
    also under ``/session/inbox``)."""
    if not raw or "\0" in raw:
        raise ToolError("path is required")
    real = Path(os.path.realpath(ctx.workspace_path(raw)))
    if root_of(ctx, real, write=write) is None:
        in_session = Path(raw).is_relative_to(CONTAINER.session.root) or real.is_relative_to(
            Path(os.path.realpath(ctx.session.root))
        )
        if write or not in_session:
            raise ToolError(f"{raw} is outside the workspace (/workspace)")
        raise ToolError(
            f"{raw} is outside the workspace (/workspace); of the session folder only "
            "attachments under /session/inbox can be read"
        )
    return real


def shown(ctx: ToolContext, real: Path) -> str:
    """A path as the agent knows it: relative to the workspace, or under /session/inbox."""
    root = root_of(ctx, real)
    if root is None:
        return str(real)
    rel = str(real.relative_to(root.real))
    if root.shown:
        return root.shown if rel == "." else f"{root.shown}/{rel}"
    return rel


def open_regular(real: Path, shown_as: str) -> BinaryIO:
    """Open a regular file for reading, refusing symlinks (at the last step), folders, FIFOs
    and devices."""
    try:
        # O_NONBLOCK: opening a FIFO must not hang the runner (no effect on regular files).
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ToolError(f"File not found: {shown_as}") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket (or a FIFO opened for writing)
            raise ToolError(f"{shown_as} is not a regular file") from None
        raise ToolError(f"cannot open {shown_as}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ToolError(f"{shown_as} is not a regular file")
    return os.fdopen(fd, "rb")


def read_bytes(real: Path, limit: int, shown_as: str) -> bytes:
    with open_regular(real, shown_as) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ToolError(f"{shown_as} is larger than {limit} bytes")
    return data


def write_bytes(real: Path, data: bytes) -> None:
    real.parent.mkdir(parents=True, exist_ok=True)
    try:
        # No O_TRUNC: the type is checked before anything is changed. O_NONBLOCK: opening
        # a FIFO for writing fails at once (no reader) instead of waiting for one.
        fd = os.open(
            real, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644
        )
    except OSError as exc:
        raise ToolError(f"cannot write {real.name}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ToolError(f"{real.name} is not a regular file")
        os.ftruncate(fd, 0)
        handle.write(data)


def decode_text(data: bytes, name: str) -> str:
    if b"\0" in data[:8192]:
        raise ToolError(f"{name} looks like a binary file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ToolError(f"{name} is not UTF-8 text") from None


def clip(text: str, limit: int = MAX_OUTPUT_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit} more characters not shown]"


# -- read_file ----------------------------------------------------------------------------


class ReadInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: str
    offset: int = 1
    limit: int = 2000


def read_file(ctx: ToolContext, args: ReadInput) -> str:
    real = confine(ctx, args.path)
    text = decode_text(read_bytes(real, MAX_READ_BYTES, args.path), args.path)
    lines = text.splitlines()
    start = max(args.offset, 1)
    picked = lines[start - 1 : start - 1 + max(args.limit, 1)]
    if not picked:
        return f"{args.path}: {len(lines)} lines; nothing at line {start}" if lines else "(empty)"
    numbered = "\n".join(f"{n:>6}\t{line}" for n, line in enumerate(picked, start))
    more = len(lines) - (start - 1 + len(picked))
    if more > 0:
        numbered += f"\n[{more} more lines; read on with offset={start + len(picked)}]"
    return clip(numbered)


# -- write_file ---------------------------------------------------------------------------


class WriteInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: str
    content: str


def write_file(ctx: ToolContext, args: WriteInput) -> str:
    real = confine(ctx, args.path, write=True)
    if real.is_dir():
        raise ToolError(f"{args.path} is a directory")
    data = args.content.encode()
    write_bytes(real, data)
    return f"Wrote {len(data)} bytes to {shown(ctx, real)}"


# -- edit_file ----------------------------------------------------------------------------


class EditInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: str
    old_text: str
    new_text: str
    replace_all: bool = False


def edit_file(ctx: ToolContext, args: EditInput) -> str:
    if not args.old_text:
        raise ToolError("old_text is required (use write_file to create a file)")
    real = confine(ctx, args.path, write=True)
    text = decode_text(read_bytes(real, MAX_READ_BYTES, args.path), args.path)
    count = text.count(args.old_text)
    if count == 0:
        raise ToolError(f"old_text was not found in {args.path}")
    if count > 1 and not args.replace_all:
        raise ToolError(
            f"old_text appears {count} times in {args.path}; include more context to make it "
            "unique, or set replace_all"
        )
    write_bytes(real, text.replace(args.old_text, args.new_text).encode())
    return f"Replaced {count if args.replace_all else 1} occurrence(s) in {shown(ctx, real)}"


# -- list_files and grep ------------------------------------------------------------------


def walk(ctx: ToolContext, top: Path) -> list[Path]:
    """Files and folders under ``top`` (never following symlinked folders), sorted."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(top, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        base = Path(folder)
        found += [base / d for d in dirs]
        found += [base / f for f in sorted(files)]
    return found


class ListInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: str = "."
    pattern: str = "*"
    recursive: bool = True


def list_files(ctx: ToolContext, args: ListInput) -> str:
    top = confine(ctx, args.path)
    if not top.is_dir():
        raise ToolError(f"{args.path} is not a directory")
    entries = walk(ctx, top) if args.recursive else sorted(top.iterdir())
    lines: list[str] = []
    total = 0
    for entry in entries:
        rel = str(entry.relative_to(top))
        if not fnmatch.fnmatch(rel, args.pattern) and not fnmatch.fnmatch(entry.name, args.pattern):
            continue
        total += 1
        if len(lines) < MAX_LIST_ENTRIES:
            if entry.is_symlink():
                lines.append(f"{rel} -> {os.readlink(entry)}")
            else:
                lines.append(rel + ("/" if entry.is_dir() else ""))
    if not lines:
        return "No files found."
    if total > len(lines):
        lines.append(f"[{total - len(lines)} more entries not shown]")
    return "\n".join(lines)


class GrepInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pattern: str
    path: str = "."
    glob: str = "*"
    ignore_case: bool = False


def grep(ctx: ToolContext, args: GrepInput) -> str:
    try:
        re.compile(args.pattern, re.IGNORECASE if args.ignore_case else 0)
    except re.error as exc:
        raise ToolError(f"invalid regular expression: {exc}") from None
    top = confine(ctx, args.path)
    readable = roots(ctx)
    request = {
        "pattern": args.pattern,
        "ignore_case": args.ignore_case,
        "glob": args.glob,
        "top": str(top),
        "roots": [str(r.real) for r in readable],
        "shown": [[str(r.real), r.shown] for r in readable],
        "skipped_dirs": sorted(SKIPPED_DIRS),
        "max_results": MAX_GREP_RESULTS,
        "max_file_bytes": MAX_GREP_FILE_BYTES,
        "max_line_chars": MAX_GREP_LINE_CHARS,
    }
    lines, finished = run_grep(request, str(ctx.workspace), ctx.grep_timeout_s)
    if not finished:
        found = "\n".join(lines)
        raise ToolError(
            f"grep timed out after {ctx.grep_timeout_s:g}s and was stopped: the pattern is "
            "too slow (nested repetition such as (a+)+ can take forever) or there is too much "
            "to search; simplify the pattern or narrow path or glob"
            + (f". Matches found before it was stopped:\n{clip(found)}" if found else "")
        )
    return clip("\n".join(lines)) if lines else "No matches."


def run_grep(request: dict[str, Any], cwd: str, timeout_s: float) -> tuple[list[str], bool]:
    """Run ``grep_child`` on ``request``: (the matches it printed, whether it finished
    within ``timeout_s``; if not, it was killed)."""
    process = subprocess.Popen(
        GREP_COMMAND,
        cwd=cwd,
        env=tool_environment(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    finished = True
    try:
        out, err = process.communicate(json.dumps(request).encode(), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        finished = False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
    if finished and process.returncode != 0:
        raise ToolError(f"grep failed: {err.decode(errors='replace').strip()[-500:]}")
    lines: list[str] = []
    for raw in out.decode("utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            lines.append(str(json.loads(raw)))
    return lines, finished


TOOLS: list[Tool[Any]] = [
    Tool(
        "read_file",
        "Read a UTF-8 text file under /workspace, or an attachment under /session/inbox. "
        "Lines come numbered; use offset/limit for long files.",
        schema(
            {
                "path": string(
                    "Path relative to /workspace, or absolute under /workspace or /session/inbox."
                ),
                "offset": integer("First line to show (1-based). Default 1."),
                "limit": integer("How many lines to show. Default 2000."),
            },
            ["path"],
        ),
        ReadInput,
        read_file,
    ),
    Tool(
        "write_file",
        "Create or overwrite a file under /workspace (parent folders are created).",
        schema(
            {
                "path": string("Path relative to /workspace, or absolute under it."),
                "content": string("The whole new content of the file."),
            },
            ["path", "content"],
        ),
        WriteInput,
        write_file,
    ),
    Tool(
        "edit_file",
        "Replace exact text in a file under /workspace. old_text must occur exactly once "
        "unless replace_all is set.",
        schema(
            {
                "path": string("Path relative to /workspace, or absolute under it."),
                "old_text": string("The exact text to replace."),
                "new_text": string("The replacement text."),
                "replace_all": {"type": "boolean", "description": "Replace every occurrence."},
            },
            ["path", "old_text", "new_text"],
        ),
        EditInput,
        edit_file,
    ),
    Tool(
        "list_files",
        "List files and folders under a folder of /workspace or /session/inbox (recursively "
        "by default), optionally filtered by a glob pattern such as '*.md'.",
        schema(
            {
                "path": string(
                    "Folder relative to /workspace, or /session/inbox (attachments). "
                    "Default: the workspace."
                ),
                "pattern": string("Glob pattern matched against names and relative paths."),
                "recursive": {"type": "boolean", "description": "Descend into subfolders."},
            }
        ),
        ListInput,
        list_files,
    ),
    Tool(
        "grep",
        "Search files under /workspace (or /session/inbox) for a regular expression; prints "
        f"path:line: text. Stopped after {GREP_TIMEOUT_S:g}s.",
        schema(
            {
                "pattern": string("A Python regular expression."),
                "path": string(
                    "File or folder relative to /workspace, or under /session/inbox. "
                    "Default: the whole workspace."
                ),
                "glob": string("Only files whose name matches this glob, e.g. '*.py'."),
                "ignore_case": {"type": "boolean", "description": "Case-insensitive match."},
            },
            ["pattern"],
        ),
        GrepInput,
        grep,
        # The child's hard limit (the host tolerates the call that long).
        declared_timeout_ms=lambda ctx, _args: int(ctx.grep_timeout_s * 1000),
    ),
]
