"""Processes a tool call starts die with the call.

``bash`` runs its command in a process group of its own and kills the group, but a child
that calls ``setsid`` (or double-forks into a new session) leaves that group, outlives the
call and, holding the output pipe, can keep the next call waiting too. So:

- the runner is a *child subreaper* (``become_subreaper``): an orphan of a tool process is
  reparented to the runner instead of the container's init, so it stays a descendant of
  the runner, however it detached itself;
- ``ToolProcesses`` takes a snapshot of the runner's descendants when a call begins
  (``begin``) and, when it ends or times out (``sweep``), kills every descendant that was not
  there before, except the subtrees of the runner's long-lived children (MCP servers), and
  reaps the orphans that died (a subreaper owns their exit status, and unreaped zombies
  would use up the container's pids limit).

Processes are told apart by (pid, start time), so a pid reused after an old process exited
is not mistaken for it. Stdlib only, like ``hardening``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

_PR_SET_CHILD_SUBREAPER: Final = 36
SWEEP_DEADLINE_S: Final = 2.0  # a SIGKILLed process is gone in milliseconds
_SWEEP_PAUSE_S: Final = 0.005  # between rounds: lets the kernel finish the kills


def become_subreaper() -> bool:
    """Make this process a child subreaper; False where that is not possible (not Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    start: int  # clock ticks after boot: with the pid, identifies the process
    state: str  # "Z" for a zombie

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start)


def parse_stat(text: str) -> Proc | None:
    """One ``/proc/<pid>/stat`` line. The command name is in parentheses and may itself hold
    spaces and parentheses, so the fields are counted from the last ``)``."""
    head, sep, tail = text.rpartition(")")
    if not sep:
        return None
    fields = tail.split()
    try:
        pid = int(head.split("(", 1)[0])
        # After the name: state(3) ppid(4) ... starttime(22), counted from 1 in proc(5).
        return Proc(pid=pid, ppid=int(fields[1]), start=int(fields[19]), state=fields[0])
    except (ValueError, IndexError):
        return None


def process_table(proc: Path = Path("/proc")) -> dict[int, Proc]:
    """Every process we can see, by pid. Processes that exit while we read are left out."""
    table: dict[int, Proc] = {}
    try:
        names = os.listdir(proc)
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            found = parse_stat((proc / name / "stat").read_text(errors="replace"))
        except OSError:
            continue
        if found is not None:
            table[found.pid] = found
    return table


def descendants(table: Mapping[int, Proc], root: int, *, spare: Collection[int] = ()) -> list[Proc]:
    """The processes below ``root`` (not ``root`` itself), without the subtrees of the pids
    in ``spare`` (those pids included)."""
    children: dict[int, list[Proc]] = {}
    for entry in table.values():
        children.setdefault(entry.ppid, []).append(entry)
    found: list[Proc] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child.pid in spare or child.pid == root:
                continue
            found.append(child)
            stack.append(child.pid)
    return found


class ToolProcesses:
    """Descendants of this process that one tool call left behind, killed when it ends.

    ``spare``: pids whose subtrees outlive calls (MCP servers); asked at each sweep, since
    servers start and stop. ``table`` reads the process table (tests pass a fake ``/proc``).
    """

    def __init__(
        self,
        *,
        spare: Callable[[], Collection[int]] = frozenset,
        pid: int | None = None,
        table: Callable[[], Mapping[int, Proc]] = process_table,
    ) -> None:
        self.pid = os.getpid() if pid is None else pid
        self._spare = spare
        self._table = table
        self._before: frozenset[tuple[int, int]] = frozenset()

    def begin(self) -> None:
        """Remember what runs now: none of it belongs to the call about to start."""
        table = self._table()
        self._before = frozenset(p.key for p in descendants(table, self.pid))

    def leftovers(self, table: Mapping[int, Proc]) -> list[Proc]:
        """Live descendants started since ``begin``, outside the spared subtrees."""
        spared = set(self._spare())
        return [
            p
            for p in descendants(table, self.pid, spare=spared)
            if p.key not in self._before and p.state != "Z"
        ]

    def sweep(self, *, exclude: Collection[int] = ()) -> int:
        """Kill what the call left and reap our dead orphans; returns how many were killed.
        ``exclude``: children a ``subprocess.Popen`` still has to wait for (reaping them here
        would take their exit status away)."""
        killed = 0
        deadline = time.monotonic() + SWEEP_DEADLINE_S
        while True:
            table = self._table()
            victims = self.leftovers(table)
            for victim in victims:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(victim.pid, signal.SIGKILL)
                    killed += 1
            # A spared child (an MCP server) that died is its Popen's to wait for.
            keep = {*exclude, *self._spare()}
            reaped = reap_orphans(table.values(), self.pid, exclude=keep)
            if not victims and not reaped:
                return killed
            if time.monotonic() > deadline:
                return killed  # a fork storm outran us; the next sweep goes on with it
            time.sleep(_SWEEP_PAUSE_S)


def reap_orphans(table: Iterable[Proc], pid: int, *, exclude: Collection[int] = ()) -> int:
    """Collect the exit status of our zombie children (orphans reparented to us); returns
    how many were reaped."""
    reaped = 0
    for entry in table:
        if entry.ppid != pid or entry.state != "Z" or entry.pid in exclude:
            continue
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(entry.pid, os.WNOHANG)[0] == entry.pid:
                reaped += 1
    return reaped
