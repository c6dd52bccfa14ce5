"""File tools confined to the workspace: read_file, write_file, edit_file, list_files, grep.

Every path is resolved with ``realpath`` (symlinks included) and must stay under the real
workspace root; the final open uses ``O_NOFOLLOW``, so a symlink swapped in after the check
is refused rather than followed. Walks never follow symlinked directories, and a symlinked
file is read only when it resolves inside the workspace.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import time
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from agent_runner.tools.base import Tool, ToolContext, ToolError, integer, schema, string

MAX_READ_BYTES = 10_000_000
MAX_OUTPUT_CHARS = 100_000
MAX_LIST_ENTRIES = 500
MAX_GREP_RESULTS = 200
MAX_GREP_FILE_BYTES = 5_000_000
GREP_TIME_BUDGET_S = 20.0
SKIPPED_DIRS = frozenset({".git", "__pycache__", "node_modules", ".venv"})


def confine(ctx: ToolContext, raw: str) -> Path:
    """The real path of ``raw`` (relative to the workspace, or absolute under it)."""
    if not raw or "\0" in raw:
        raise ToolError("path is required")
    root = Path(os.path.realpath(ctx.workspace))
    real = Path(os.path.realpath(ctx.workspace_path(raw)))
    if real != root and root not in real.parents:
        raise ToolError(f"{raw} is outside the workspace (/workspace)")
    return real


def shown(ctx: ToolContext, real: Path) -> str:
    """A path as the agent knows it: relative to the workspace."""
    root = Path(os.path.realpath(ctx.workspace))
    rel = real.relative_to(root)
    return str(rel) if str(rel) != "." else "."


def open_regular(real: Path, shown_as: str) -> BinaryIO:
    """Open a regular file for reading, refusing symlinks (at the last step), folders, FIFOs
    and devices."""
    try:
        # O_NONBLOCK: opening a FIFO must not hang the runner (no effect on regular files).
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ToolError(f"File not found: {shown_as}") from None
    except OSError as exc:
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
        fd = os.open(
            real,
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            0o644,
        )
    except OSError as exc:
        raise ToolError(f"cannot write {real.name}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ToolError(f"{real.name} is not a regular file")
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
    real = confine(ctx, args.path)
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
    real = confine(ctx, args.path)
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
        regex = re.compile(args.pattern, re.IGNORECASE if args.ignore_case else 0)
    except re.error as exc:
        raise ToolError(f"invalid regular expression: {exc}") from None
    top = confine(ctx, args.path)
    root = Path(os.path.realpath(ctx.workspace))
    candidates = [top] if top.is_file() else [p for p in walk(ctx, top) if not p.is_dir()]
    results: list[str] = []
    deadline = time.monotonic() + GREP_TIME_BUDGET_S
    for path in candidates:
        if len(results) >= MAX_GREP_RESULTS or time.monotonic() > deadline:
            results.append("[stopped: too many results or taking too long; narrow the search]")
            break
        if not fnmatch.fnmatch(path.name, args.glob):
            continue
        real = Path(os.path.realpath(path))
        if real != root and root not in real.parents:
            continue  # a symlink leading out of the workspace
        try:
            if real.stat().st_size > MAX_GREP_FILE_BYTES:
                continue
            data = real.read_bytes()
        except OSError:
            continue
        if b"\0" in data[:8192]:
            continue
        text = data.decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if regex.search(line):
                results.append(f"{shown(ctx, real)}:{number}: {line[:500]}")
                if len(results) >= MAX_GREP_RESULTS:
                    break
    return clip("\n".join(results)) if results else "No matches."


TOOLS: list[Tool[Any]] = [
    Tool(
        "read_file",
        "Read a UTF-8 text file under /workspace. Lines come numbered; use offset/limit for "
        "long files.",
        schema(
            {
                "path": string("Path relative to /workspace, or absolute under it."),
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
        "List files and folders under a folder of /workspace (recursively by default), "
        "optionally filtered by a glob pattern such as '*.md'.",
        schema(
            {
                "path": string("Folder relative to /workspace. Default: the workspace."),
                "pattern": string("Glob pattern matched against names and relative paths."),
                "recursive": {"type": "boolean", "description": "Descend into subfolders."},
            }
        ),
        ListInput,
        list_files,
    ),
    Tool(
        "grep",
        "Search files under /workspace for a regular expression; prints path:line: text.",
        schema(
            {
                "pattern": string("A Python regular expression."),
                "path": string("File or folder relative to /workspace. Default: everything."),
                "glob": string("Only files whose name matches this glob, e.g. '*.py'."),
                "ignore_case": {"type": "boolean", "description": "Case-insensitive match."},
            },
            ["pattern"],
        ),
        GrepInput,
        grep,
    ),
]
