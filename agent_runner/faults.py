"""Test-only hooks, switched on by an environment variable that ``app.run`` reads. Production
never sets it; with it unset, nothing here does anything.

``NANOCLAW_TEST_CRASH=<point>`` kills the runner (SIGKILL, as a container kill) at one point
of a turn; the test then starts a new run (without the variable), which must answer each
message exactly once (docs/delivery.md, "Crash points", rows 3a-3d):

- ``before_model_call``: the batch is claimed and its prompt is in the conversation, no model
  call has been made;
- ``after_send``: a row written mid-turn (``send_message``, output before a tool call) has
  committed, the turn goes on;
- ``before_batch_ack``: the turn ran to its end, its final output and ack are not written yet:
  the moment a kill is most likely to leave an answer without its ack.

A kill *during* a model call needs no hook: the test holds the call in the fake API and kills.

``NANOCLAW_TEST_FAULTS`` (``nanoclaw_common.faults``) arms the same points at run time as
``runner.<point>``, one at a time, in a container the chaos suite did not start itself.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from nanoclaw_common.faults import CrashPoints

CRASH_ENV: Final = "NANOCLAW_TEST_CRASH"
CRASH_POINTS: Final = ("before_model_call", "after_send", "before_batch_ack")


@dataclass(frozen=True)
class Faults:
    crash_point: str | None = None
    points: CrashPoints = field(default_factory=CrashPoints)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Faults:
        point = environ.get(CRASH_ENV) or None
        if point is not None and point not in CRASH_POINTS:
            raise ValueError(f"{CRASH_ENV} must be one of {CRASH_POINTS}, not {point!r}")
        return cls(point, CrashPoints.from_environ(environ, "runner"))

    def crash(self, point: str, messages: Sequence[str] = ()) -> None:
        """``messages``: the rows the turn answers (named in an armed point's marker)."""
        if self.crash_point == point:
            os.kill(os.getpid(), signal.SIGKILL)
        self.points.crash(f"runner.{point}", messages=",".join(messages))
