"""Test-only hooks, switched on by an environment variable that ``app.run`` reads. Production
never sets it; with it unset, nothing here does anything.

- ``NANOCLAW_TEST_CRASH=before_batch_ack`` kills the runner (SIGKILL) just before it writes a
  batch's final output and ack: the moment a container kill is most likely to leave an answer
  without its ack. The test then starts a new run (without the variable), which must answer
  the batch exactly once.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

CRASH_ENV: Final = "NANOCLAW_TEST_CRASH"
CRASH_POINTS: Final = ("before_batch_ack",)


@dataclass(frozen=True)
class Faults:
    crash_point: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Faults:
        point = environ.get(CRASH_ENV) or None
        if point is not None and point not in CRASH_POINTS:
            raise ValueError(f"{CRASH_ENV} must be one of {CRASH_POINTS}, not {point!r}")
        return cls(point)

    def crash(self, point: str) -> None:
        if self.crash_point == point:
            os.kill(os.getpid(), signal.SIGKILL)
