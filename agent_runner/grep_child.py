"""The ``grep`` tool's search, run as a child process the runner can kill.

A regular expression can take exponential time on one line (``(a+)+$``), and Python's ``re``
cannot be interrupted from another thread: searched in the runner, such a pattern would wedge
the session for good. So the runner starts this program (``python -I -S <this file>``: stdlib
only, nothing from the workspace on ``sys.path``), writes the request as JSON to its stdin,
and kills it when its time is up. Matches are written to stdout one per line as they are
found, so what was found before a kill is not lost.

Request fields: ``pattern``, ``ignore_case``, ``glob``, ``top`` (the real path to search, a
file or a folder), ``roots`` (real folders a file may resolve into: a symlink leading
anywhere else is skipped), ``shown`` (pairs of real root and the prefix the agent knows it
by; ``""`` means paths relative to that root), ``skipped_dirs``, ``max_results``,
``max_file_bytes``, ``max_line_chars``.

Only regular files are opened, without following a last-component symlink and without
blocking (a FIFO or a device in the workspace must not hang the search either).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import stat
import sys
from collections.abc import Iterator
from typing import Any

TRUNCATED = "[stopped: too many results; narrow the search]"


def candidates(top: str, skipped: set[str]) -> Iterator[str]:
    if not os.path.isdir(top):
        yield top
        return
    for folder, dirs, files in os.walk(top, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in skipped)
        for name in sorted(files):
            yield os.path.join(folder, name)


def inside(real: str, roots: list[str]) -> str | None:
    """The root ``real`` lies under, if any."""
    for root in roots:
        if real == root or real.startswith(root.rstrip("/") + "/"):
            return root
    return None


def read_regular(path: str, limit: int) -> bytes | None:
    """The file's bytes when it is a regular file of at most ``limit`` bytes, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:  # grew while we read
                return None
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def search(request: dict[str, Any], emit: Any) -> None:
    regex = re.compile(request["pattern"], re.IGNORECASE if request["ignore_case"] else 0)
    roots = [str(r) for r in request["roots"]]
    shown = {str(root): str(prefix) for root, prefix in request["shown"]}
    results = 0
    for path in candidates(request["top"], set(request["skipped_dirs"])):
        if not fnmatch.fnmatch(os.path.basename(path), request["glob"]):
            continue
        real = os.path.realpath(path)
        root = inside(real, roots)
        if root is None:
            continue  # a symlink leading out of the readable folders
        data = read_regular(real, request["max_file_bytes"])
        if data is None or b"\0" in data[:8192]:
            continue
        rel = os.path.relpath(real, root)
        prefix = shown.get(root, "")
        name = f"{prefix.rstrip('/')}/{rel}" if prefix else rel
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if regex.search(line):
                emit(f"{name}:{number}: {line[: request['max_line_chars']]}")
                results += 1
                if results >= request["max_results"]:
                    emit(TRUNCATED)
                    return


def main() -> int:
    request = json.loads(sys.stdin.buffer.read())

    def emit(line: str) -> None:
        # One JSON string per line: a matched line may hold anything, newlines excepted.
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    search(request, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
