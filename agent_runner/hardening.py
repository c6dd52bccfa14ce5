"""Keeping the proxy token away from the agent's own commands.

Tool processes (``bash``, task scripts, MCP servers) run as the runner's uid, so by default
they may read ``/proc/<runner pid>/environ`` (the environment the process was started with,
whatever it later removed from ``os.environ``) and its memory. Two measures:

- ``forbid_dumps()``: ``prctl(PR_SET_DUMPABLE, 0)``. The kernel then makes the process's
  ``/proc/<pid>`` entries root's and refuses ptrace, ``environ``, ``mem`` and ``fd`` to
  same-uid processes without CAP_SYS_PTRACE (the container has no capabilities). An exec
  resets the flag, so every start calls it first thing, the re-exec'd runner too.
- ``tool_environment()``: what children get, without the run's private variables.

Stdlib only: ``__main__`` calls ``forbid_dumps()`` before it imports anything heavy, which
keeps the window between an exec and the call to a few milliseconds.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

# The run's own variables: the proxy token (the only credential the container holds), the
# run id (claims are keyed by it) and the re-exec marker (shed.py).
PRIVATE_ENV = ("NANOCLAW_PROXY_TOKEN", "NANOCLAW_RUN_ID", "NANOCLAW_REEXEC")
_PR_SET_DUMPABLE = 4


def forbid_dumps() -> bool:
    """Make this process non-dumpable; False where that is not possible (not Linux)."""
    try:
        # dlopen(NULL): the symbols already loaded (libc's among them). find_library("c")
        # would spawn ldconfig, which is slow and this runs on every start.
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def tool_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a tool subprocess: ours (``os.environ`` by default) minus
    ``PRIVATE_ENV``."""
    source = os.environ if environ is None else environ
    return {key: value for key, value in source.items() if key not in PRIVATE_ENV}
