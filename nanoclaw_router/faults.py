"""Test-only hooks, switched on by environment variables that ``main()`` reads. Production
never sets them; with none set, nothing here does anything.

- ``NANOCLAW_TEST_CRASH=after_commit`` kills the router (SIGKILL) right after an event's
  rows are committed, before any wake and before the platform is acknowledged.
  ``before_ack`` kills it after the commit *and* the wakes, just before the adapter would
  acknowledge. Either way the platform must re-send, and the re-sent event must end up as
  exactly one row and one wake. The crash happens once: the test restarts the router
  without the variable.
- ``NANOCLAW_TEST_FAULTS=<folder>`` (``nanoclaw_common.faults``): the same points, and
  ``before_commit`` (the event reached the router, nothing is committed), armed one at a
  time while the router runs under supervisord, as ``router.<point>``: the chaos suite's
  way to hit them.
- ``NANOCLAW_TEST_WAKE_LOG=<file>`` replaces the Podman waker with ``RecordingWaker``: it
  marks the session's container ``starting`` (as ``Sandbox.wake`` does) and appends the
  session id to the file, fsynced, so a test counts wakes across router processes.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from nanoclaw_common.faults import CrashPoints, Fact
from nanoclaw_common.ids import new_id
from nanoclaw_common.states import ContainerStatus
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.rows import Session

CRASH_ENV: Final = "NANOCLAW_TEST_CRASH"
WAKE_LOG_ENV: Final = "NANOCLAW_TEST_WAKE_LOG"
CRASH_POINTS: Final = ("after_commit", "before_ack")


@dataclass(frozen=True)
class Faults:
    crash_point: str | None = None
    points: CrashPoints = field(default_factory=CrashPoints)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Faults:
        point = environ.get(CRASH_ENV) or None
        if point is not None and point not in CRASH_POINTS:
            raise ValueError(f"{CRASH_ENV} must be one of {CRASH_POINTS}, not {point!r}")
        return cls(point, CrashPoints.from_environ(environ, "router"))

    def armed(self, point: str) -> bool:
        return self.crash_point == point or self.points.armed(f"router.{point}")

    def crash(self, point: str, **facts: Fact) -> None:
        if self.crash_point == point:
            os.kill(os.getpid(), signal.SIGKILL)
        self.points.crash(f"router.{point}", **facts)


class RecordingWaker:
    """A ``Waker`` for tests of the real router process (no Podman)."""

    def __init__(self, log_path: Path, central_path: Path) -> None:
        self.log_path = log_path
        self.central_path = central_path

    def wake(self, session: Session) -> bool:
        central = CentralStore(self.central_path)
        try:
            central.set_container_status(session.id, ContainerStatus.STARTING, run_id=new_id("run"))
        finally:
            central.close()
        with self.log_path.open("a") as handle:
            handle.write(session.id + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return True
