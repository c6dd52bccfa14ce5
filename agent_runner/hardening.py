"""Keeping the proxy token away from the agent's own commands.

Tool processes (``bash``, task scripts, MCP servers) run as the runner's uid, so by default
they may read ``/proc/<pid>/environ`` of any process of that uid (the environment it was
started with, whatever it later removed from ``os.environ``), its memory, and its open files
through ``/proc/<pid>/fd``. So the token is never in an environment, and:

- ``take_token_file()``: a fresh run finds the token in ``agent/.proxy-token``, written by the
  host before the container started (``runner_config.write_proxy_token``), reads it and
  unlinks it at once, before any tool can run.
- ``forbid_dumps()``: ``prctl(PR_SET_DUMPABLE, 0)``. The kernel then makes the process's
  ``/proc/<pid>`` entries root's and refuses ptrace, ``environ``, ``mem`` and ``fd`` to
  same-uid processes without CAP_SYS_PTRACE (the container has no capabilities). An exec
  resets the flag, so every start calls it first thing, the re-exec'd runner too.
- ``pass_token()`` / ``receive_token()``: the re-exec (``shed``) hands the token to the new
  program through an inherited Unix socket, not the environment. Between ``execve`` and the
  new process's ``forbid_dumps()`` (Python's start-up, tens of milliseconds) the process is
  dumpable again, and a tool's leftover background process could read an environment
  variable then. An inherited socket holds the token in its receive queue instead, and a
  socket cannot be opened through ``/proc/<pid>/fd``, so only the new process can read it.
- ``tool_environment()``: what children get, without the run's private variables.

Stdlib only: ``__main__`` calls ``forbid_dumps()`` before it imports anything heavy, which
keeps the window between an exec and the call to a few milliseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Final

TOKEN_FILE: Final = ".proxy-token"  # runner_config.PROXY_TOKEN_FILE (not imported: stdlib only)
# Set by our own re-exec: the number of the inherited socket that holds the token.
TOKEN_FD_ENV: Final = "NANOCLAW_TOKEN_FD"
# The run's own variables: the run id (claims are keyed by it), the re-exec marker (shed.py)
# and the token socket's number. None is a secret; they are simply not the tools' business.
PRIVATE_ENV: Final = ("NANOCLAW_RUN_ID", "NANOCLAW_REEXEC", TOKEN_FD_ENV)
MAX_TOKEN_BYTES: Final = 4096
_PR_SET_DUMPABLE: Final = 4
_TOKEN_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class TokenError(Exception):
    """The token's hand-over is broken (a planted file, a bad descriptor); the message says
    how."""


def forbid_dumps() -> bool:
    """Make this process non-dumpable; False where that is not possible (not Linux)."""
    try:
        # dlopen(NULL): the symbols already loaded (libc's among them). find_library("c")
        # would spawn ldconfig, which is slow and this runs on every start.
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def take_token_file(agent_dir: Path) -> str | None:
    """Read and unlink ``agent_dir/.proxy-token``; None when there is none. Raises
    ``TokenError`` for anything but a regular file (the folder is the container's to write:
    no link is followed, and a FIFO cannot make the open hang)."""
    path = agent_dir / TOKEN_FILE
    try:
        fd = os.open(path, _TOKEN_FILE_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP for a symlink
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise TokenError(f"cannot open {path}: {exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TokenError(f"{path} is not a regular file")
        try:
            # Unlinked before it is even read: from here on only this descriptor reaches it.
            os.unlink(path)
        except OSError as exc:
            raise TokenError(f"cannot remove {path}: {exc}") from None
        data = os.read(fd, MAX_TOKEN_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_BYTES:
        raise TokenError(f"{path} is too large for a token")
    return data.decode(errors="replace").strip() or None


def pass_token(token: str) -> int:
    """A descriptor, inheritable across ``execve``, from which the new program reads
    ``token`` (``receive_token``). The caller closes it if the exec fails."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours:
        ours.sendall(token.encode())  # a few dozen bytes: always fits in the buffer
    fd = theirs.detach()
    os.set_inheritable(fd, True)
    return fd


def receive_token(fd_text: str) -> str:
    """Read the token ``pass_token`` left in the inherited socket ``fd_text`` and close it.
    Raises ``TokenError`` when the number names no socket."""
    try:
        fd = int(fd_text)
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise TokenError(f"descriptor {fd} is not a socket")
    except (ValueError, OSError) as exc:
        raise TokenError(f"no token socket at {fd_text!r}: {exc}") from None
    with socket.socket(fileno=fd) as inherited:
        inherited.settimeout(5.0)  # the writer closed its end before the exec: EOF is there
        chunks: list[bytes] = []
        while chunk := inherited.recv(MAX_TOKEN_BYTES):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def tool_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a tool subprocess: ours (``os.environ`` by default) minus
    ``PRIVATE_ENV``."""
    source = os.environ if environ is None else environ
    return {key: value for key, value in source.items() if key not in PRIVATE_ENV}
