"""Test-only crash points, armed one at a time by a test (docs/delivery.md, "Crash points and
their outcomes"; the chaos suite, tests/chaos/).

Production never sets ``NANOCLAW_TEST_FAULTS``; without it ``CrashPoints.crash`` returns at
once and nothing here does anything. With it set to a folder, a test **arms** a point by
creating the file ``<folder>/<point>`` (for example ``delivery.after_sending``), empty or
holding a JSON object of facts the crash must match (``{"content": "add_mcp_server"}``: only
a row of that type). The first process that reaches an armed point with matching facts takes
the file (``unlink``: one winner, even among several threads or processes), appends one JSON
line to ``<folder>/fired.jsonl`` (the point, the program, its pid, the wall-clock time in ms
and the facts the call site passed: session, message, seq…), fsyncs it, and SIGKILLs itself,
exactly as ``kill -9`` would. An armed point therefore fires once per arming, never again in
the process supervisord restarts.

Point names are ``<program>.<moment>``; each call site documents its moment. ``armed``
lets a call site do extra work only when a crash is coming (the router waits for its wakes
before ``before_ack``).

The agent runner takes part too: a host program that has the variable starts containers
with ``NANOCLAW_TEST_FAULTS`` = ``CONTAINER_FOLDER`` (``<session>/agent/.test-faults`` on the
host: the one place the runner may write), so a test arms ``runner.<moment>`` per session.
That gives a prompt-injected agent nothing it lacks: it runs as the runner's user and can
kill it anyway, and production never sets the variable.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from nanoclaw_common.paths import CONTAINER

FAULTS_ENV: Final = "NANOCLAW_TEST_FAULTS"
FIRED_LOG: Final = "fired.jsonl"
SESSION_FOLDER: Final = ".test-faults"  # under a session's agent/ folder
CONTAINER_FOLDER: Final = str(CONTAINER.session.agent_dir / SESSION_FOLDER)

Fact = str | int | None


class CrashPoints:
    """The armed points of one program. ``folder`` None (production) disarms everything."""

    def __init__(self, folder: Path | None = None, program: str = "") -> None:
        self.folder = folder
        self.program = program

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], program: str) -> CrashPoints:
        raw = environ.get(FAULTS_ENV) or ""
        return cls(Path(raw) if raw else None, program)

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def armed(self, point: str) -> bool:
        return self.folder is not None and (self.folder / point).exists()

    def crash(self, point: str, **facts: Fact) -> None:
        """SIGKILL this process if ``point`` is armed (see the module docstring)."""
        if self.folder is None:
            return
        armed = self.folder / point
        try:
            wanted = armed.read_text()
        except FileNotFoundError:
            return
        if wanted.strip():
            try:
                required = json.loads(wanted)
            except ValueError:
                required = {"": "an unreadable filter never matches"}
            if any(str(facts.get(key)) != str(value) for key, value in required.items()):
                return
        try:
            armed.unlink()
        except FileNotFoundError:
            return  # another thread or process took it
        record = {
            "point": point,
            "program": self.program,
            "pid": os.getpid(),
            "at_ms": int(time.time() * 1000),
            **facts,
        }
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(self.folder / FIRED_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
