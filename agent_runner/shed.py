"""Shedding the model SDK when idle: the runner re-execs itself.

Importing ``anthropic`` costs ~60 MB of RSS (its pydantic types) that Python never gives
back, which puts a runner that has called the model above its 80 MB idle target. So after
``RunnerConfig.shed_after_s`` with nothing to do, a runner that has the SDK loaded replaces
itself with a fresh copy (``os.execve``: same pid, same argv but always isolated (``-I``),
same environment plus the run's private variables, so the container and the run go on),
which starts small and imports the SDK again at its next model call (~1.5 s). Nothing is
lost: the conversation is saved (fsynced) after every change, acks and outbound rows are
committed as they happen, and shedding waits for a moment with no work in hand.

The exec protocol:
- before: the loop ends and tears down (MCP servers closed, DBs closed), stop signals are
  blocked (the mask survives the exec, so a SIGTERM in between waits for the new process's
  handler instead of killing it mid-start), the heartbeat is touched, logs are flushed, and
  the proxy token goes into an inherited socket (``hardening.pass_token``: the token file is
  gone, and the environment is no place for it);
- the new process finds ``NANOCLAW_REEXEC`` (the heartbeat's path) in its environment:
  ``__main__`` touches the heartbeat before its imports, removes the variable (it goes no
  further, not to tools), and the runner resumes the run (``OutboundStore.resume_run``)
  instead of starting one: no claim dropped, ``started_at_ms`` kept, and its first poll is
  not a run's first poll (``on_wake`` rows are for a freshly started container).

Stdlib only, like ``hardening``: ``__main__`` uses it before its heavy imports.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from agent_runner.hardening import TOKEN_FD_ENV

REEXEC_ENV = "NANOCLAW_REEXEC"
SDK_MODULE = "anthropic"


@dataclass(frozen=True)
class Activity:
    """What the runner is doing, observed between two polls."""

    sdk_loaded: bool  # the model SDK is imported (only then is there anything to shed)
    due_rows: int  # rows the last poll would answer now (context-only rows wait: not work)
    claimed: int  # rows this run holds in ``processing``
    in_turn: bool  # a model/tool loop is running
    # The tool in flight (container_state.current_tool). ask_user_question waits for its
    # answer inside its tool call, so a pending question shows up here.
    tool: str | None
    idle_since_s: float  # monotonic time the last batch ended (or the process started)

    @property
    def busy(self) -> bool:
        return bool(self.due_rows or self.claimed or self.in_turn or self.tool is not None)


def should_shed(activity: Activity, *, shed_after_s: float, now_s: float) -> bool:
    """Shed now? Only with the SDK loaded, nothing in hand, and idle for ``shed_after_s``
    (monotonic seconds, like ``now_s``); ``shed_after_s`` 0 disables shedding."""
    if shed_after_s <= 0 or not activity.sdk_loaded or activity.busy:
        return False
    return now_s - activity.idle_since_s >= shed_after_s


def seconds_until_shed(activity: Activity, *, shed_after_s: float, now_s: float) -> float | None:
    """How long the idle wait may last before ``should_shed`` turns true if nothing changes;
    None when it never will (disabled, nothing to shed, or busy)."""
    if shed_after_s <= 0 or not activity.sdk_loaded or activity.busy:
        return None
    return max(0.0, activity.idle_since_s + shed_after_s - now_s)


def sdk_loaded() -> bool:
    return SDK_MODULE in sys.modules


def reexec_environment(
    environ: Mapping[str, str],
    *,
    private: Mapping[str, str],
    heartbeat: Path,
    token_fd: int | None = None,
) -> dict[str, str]:
    """The new process's environment: the one we were started with (``environ`` plus the
    ``private`` variables ``main()`` took out of it), the marker naming the heartbeat and,
    when there is a token, the number of the inherited socket that holds it."""
    marker = {} if token_fd is None else {TOKEN_FD_ENV: str(token_fd)}
    return {**environ, **private, REEXEC_ENV: str(heartbeat), **marker}


def reexec_argv(orig_argv: Sequence[str], *, isolated: bool) -> list[str]:
    """The new process's command line: ours (``sys.orig_argv`` keeps ``-I -m agent_runner``
    or the console script), in isolated mode whatever we were started with. Isolated, the
    interpreter ignores PYTHON* variables and the user site-packages and puts neither the
    working folder nor a script's folder on ``sys.path``: nothing the agent wrote since the
    start can ride into the new process (docs/security.md)."""
    argv = list(orig_argv)
    if isolated:
        return argv
    return [argv[0], "-I", *argv[1:]]


def reexec(environment: Mapping[str, str]) -> NoReturn:
    """Replace this process with a fresh runner: the same interpreter and command line, made
    isolated (``reexec_argv``). Raises OSError when the exec fails."""
    argv = reexec_argv(sys.orig_argv, isolated=bool(sys.flags.isolated))
    os.execve(sys.executable, argv, dict(environment))


def touch_heartbeat(path: Path) -> None:
    """One heartbeat write (``Heartbeat`` uses it too). Here so that the re-exec'd process
    can beat first thing, before it imports anything heavy. Raises OSError. ``agent/`` is
    writable by tools too: no link is followed, and a FIFO there fails at once (ENXIO)
    instead of blocking the open."""
    fd = os.open(
        path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644
    )
    try:
        os.utime(fd)
    finally:
        os.close(fd)
