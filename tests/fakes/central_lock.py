"""Another process holding ``central.db``'s write lock: ``BEGIN IMMEDIATE``, then nothing,
as a long CLI command, a backup or a stuck program would.

``CentralLock(path).hold()`` starts ``python -m tests.fakes.central_lock <path>`` and
returns once the lock is taken. The child keeps it until ``release()`` (a line on its stdin)
or until ``hold_s`` has passed, whichever comes first. It says ``releasing`` before its
ROLLBACK and ``released`` after: whatever a test saw while ``holding`` was still True
happened while the lock was held. So a test waits for events, never for a time.

``Beats`` watches a program's proof of life meanwhile: beaten from its event loop every
second (``nanoclaw_common.alive``), so the largest gap between two beats is how long the
loop stood still, give or take a second.
"""

from __future__ import annotations

import itertools
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

import apsw

#: Longer than the busy timeout (5 s): a write that waits for the lock on the loop fails.
LOCK_S: Final = 6.0
#: The proof is beaten every second; a loop that stalled for the busy timeout shows a gap of
#: five seconds or more. Under this bound, the loop kept going round.
MAX_BEAT_GAP_S: Final = 2.5
LOCKED: Final = "locked"
RELEASING: Final = "releasing"
RELEASED: Final = "released"
REPO: Final = Path(__file__).resolve().parents[2]


class CentralLock:
    def __init__(self, path: Path, *, hold_s: float = 60.0) -> None:
        self.path = path
        self.hold_s = hold_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.locked_at: float | None = None  # time.monotonic() of the test process
        self.releasing = False  # the child said it is about to let go
        self.released_at: float | None = None
        self._pending = b""  # bytes read from the child, not yet a whole line

    def hold(self, timeout_s: float = 20.0) -> CentralLock:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.central_lock", str(self.path), str(self.hold_s)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        line = self._line(timeout_s)
        assert line == LOCKED, f"the lock holder said {line!r}"
        self.locked_at = time.monotonic()
        return self

    @property
    def holding(self) -> bool:
        """Still holding for sure: the child has not said it is about to let go (it says so
        before its ROLLBACK, so whatever a test saw before this turned False happened while
        the lock was held)."""
        assert self.proc is not None
        if not self.releasing and self._readable(0):
            line = self._line(0)
            assert line == RELEASING, f"the lock holder said {line!r}"
            self.releasing = True
        return not self.releasing

    def release(self, timeout_s: float = 20.0) -> float:
        """Let go now (if not already); returns how long the lock was held, in seconds."""
        assert self.proc is not None and self.proc.stdin is not None and self.locked_at
        if self.released_at is None:
            if self.proc.poll() is None:
                try:
                    self.proc.stdin.write(b"\n")
                    self.proc.stdin.flush()
                except BrokenPipeError:
                    pass  # it let go by itself a moment ago
            self.wait_released(timeout_s)
        assert self.released_at is not None
        return self.released_at - self.locked_at

    def wait_released(self, timeout_s: float) -> None:
        """Wait until the child has let go (at ``hold_s`` at the latest)."""
        if not self.releasing:
            line = self._line(timeout_s)
            assert line == RELEASING, f"the lock holder said {line!r}"
            self.releasing = True
        line = self._line(timeout_s)
        assert line == RELEASED, f"the lock holder said {line!r}"
        self.released_at = time.monotonic()
        assert self.proc is not None
        self.proc.wait(timeout_s)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()

    def _readable(self, timeout_s: float) -> bool:
        """A whole line is waiting (read raw: a buffered reader would hide what it holds
        from ``select``)."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._pending:
            left = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if not ready:
                return False
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                return False  # the child is gone
            self._pending += chunk
        return True

    def _line(self, timeout_s: float) -> str:
        if not self._readable(timeout_s):
            raise AssertionError(f"the lock holder said nothing within {timeout_s} s")
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode().strip()


class Beats:
    """The mtimes of a program's proof of life (``run/alive/<program>``), sampled."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: list[float] = []  # each beat's mtime, once
        self.last_sample = 0.0  # wall clock, like the mtimes

    def sample(self) -> None:
        self.last_sample = time.time()
        try:
            mtime = os.stat(self.path).st_mtime
        except FileNotFoundError:
            return
        if not self.seen or mtime != self.seen[-1]:
            self.seen.append(mtime)

    def largest_gap_s(self) -> float:
        """The longest time between two beats, or from the last beat to the last look (a
        loop that stopped beating for good shows that as a gap too)."""
        points = [*self.seen, self.last_sample]
        return max(b - a for a, b in itertools.pairwise(points))


def main(path: str, hold_s: float) -> None:
    connection = apsw.Connection(path)
    connection.setbusytimeout(30_000)
    connection.execute("BEGIN IMMEDIATE")
    print(LOCKED, flush=True)
    select.select([sys.stdin], [], [], hold_s)  # a line from the test, or the hold is over
    print(RELEASING, flush=True)  # first: a test may trust what it saw before this line
    connection.execute("ROLLBACK")
    print(RELEASED, flush=True)
    connection.close()


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
