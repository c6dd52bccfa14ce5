"""The proxy's listening socket outlives the proxy process (issue 9 §1).

Containers reach the proxy at ``run/proxy/proxy.sock``. If that socket closed whenever the
proxy restarts, every model call started in the gap would be refused (a graceful
``nanoclaw ctl restart proxy`` is stop-then-start under supervisord, and the new proxy needs
about half a second to start). So the listening socket is held by a small **keeper**
process as well as by the proxy:

- the first proxy binds the socket (at a temporary name, renamed over the path: the path
  never dangles) and starts the keeper with a copy of it (``spawn_keeper``);
- the keeper never accepts. It listens on a control socket, ``run/proxy-keeper.sock`` (in
  ``run/``, mode 0700, out of the containers' reach), and hands the listening socket to each
  proxy that connects with our uid (``take_listener``, ``SCM_RIGHTS``);
- while no proxy runs (between a stop and the next start, or after a crash) the socket stays
  open: connections wait in its backlog instead of being refused, and the next proxy accepts
  them. Graceful restarts and crashes alike refuse no connection;
- the keeper exits once no proxy has been attached for ``linger_s`` (``nanoclaw down``), or
  when the socket path no longer names its socket (a newer socket replaced it); the next
  proxy then binds a fresh socket and starts a new keeper.

The proxy lock (``run/proxy.lock``) is taken before any of this: a second proxy refuses to
start and never touches the socket, and the keeper never holds the lock, so a restarted
proxy is never locked out by it.

Stdlib only: ``python -m nanoclaw_proxy.handover`` is the keeper, and starts in milliseconds.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import os
import select
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

BACKLOG: Final = 4096  # capped by net.core.somaxconn
CHECK_INTERVAL_S: Final = 0.5
LINGER_S: Final = 60.0
GREETING: Final = b"nanoclaw-proxy-listener"
_PEERCRED: Final = struct.Struct("3i")
_TIMEOUT_S: Final = 2.0
_spawned: list[subprocess.Popen[bytes]] = []


def path_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the socket file at ``path``; None when it is not a socket."""
    try:
        found = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (found.st_dev, found.st_ino) if stat.S_ISSOCK(found.st_mode) else None


def bind_listener(path: Path, *, mode: int = 0o666) -> socket.socket:
    """A new listening socket at ``path``: bound at a temporary name in the same folder,
    given ``mode``, then renamed over ``path``, so a client finds the old socket or the new
    one, never no file. (Containers run as another uid; the token, not the mode, is the
    access control of the proxy socket.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(temporary))
        os.chmod(temporary, mode)
        sock.listen(BACKLOG)
        os.replace(temporary, path)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    return sock


def take_listener(
    control: Path, path: Path, *, timeout_s: float = _TIMEOUT_S
) -> tuple[socket.socket, socket.socket] | None:
    """The listening socket of ``path`` from a live keeper: (the listener, the control
    connection to keep open for as long as this proxy serves). None when no keeper answers,
    it is not ours, or its socket is no longer the one at ``path``."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout_s)
    try:
        conn.connect(str(control))
        if _peer_uid(conn) != os.getuid():
            raise OSError("the keeper runs as another user")
        message, fds, _flags, _addr = socket.recv_fds(conn, 256, 1)
    except OSError:
        conn.close()
        return None
    if not fds:
        conn.close()
        return None
    listener = socket.socket(fileno=fds[0])
    try:
        device, inode = (int(part) for part in message.decode().split(":")[1:3])
        wanted = (device, inode)
    except (ValueError, UnicodeDecodeError):
        wanted = None
    if not message.startswith(GREETING) or wanted is None or path_identity(path) != wanted:
        listener.close()
        conn.close()
        return None
    conn.settimeout(None)
    return listener, conn


def spawn_keeper(listener: socket.socket, path: Path, control: Path, linger_s: float) -> int:
    """Start a keeper for ``listener`` (bound at ``path``), serving ``control``. Its own
    session, so a process-group kill of the proxy leaves it. Returns its pid."""
    identity = path_identity(path)
    if identity is None:
        raise OSError(f"{path} is not a socket")
    control_sock = bind_listener(control, mode=0o600)
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nanoclaw_proxy.handover",
                "--listener-fd",
                str(listener.fileno()),
                "--control-fd",
                str(control_sock.fileno()),
                "--path",
                str(path),
                "--identity",
                f"{identity[0]}:{identity[1]}",
                "--linger-s",
                str(linger_s),
            ],
            pass_fds=(listener.fileno(), control_sock.fileno()),
            start_new_session=True,
            # Not the proxy's stdout/stderr: those are supervisord's pipes to its log.
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
    finally:
        control_sock.close()  # the keeper has its own copy
    _spawned.append(process)  # never waited for: it outlives this process on purpose
    return process.pid


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return int(_PEERCRED.unpack(creds)[1])


def keep(
    listener: socket.socket,
    control: socket.socket,
    path: Path,
    identity: tuple[int, int],
    linger_s: float,
) -> str:
    """The keeper's loop; returns why it ended."""
    attached: list[socket.socket] = []
    alone_since: float | None = time.monotonic()
    greeting = GREETING + f":{identity[0]}:{identity[1]}".encode()
    fds = array.array("i", [listener.fileno()])
    while True:
        if path_identity(path) != identity:
            return "the socket path names another socket now"
        if attached:
            alone_since = None
        elif alone_since is None:
            alone_since = time.monotonic()
        elif time.monotonic() - alone_since >= linger_s:
            return f"no proxy attached for {linger_s:.0f} s"
        readable, _, _ = select.select([control, *attached], [], [], CHECK_INTERVAL_S)
        for ready in readable:
            if ready is control:
                try:
                    conn, _ = control.accept()
                except OSError:
                    continue
                try:
                    if _peer_uid(conn) != os.getuid():
                        raise OSError("another user")
                    conn.sendmsg(
                        [greeting], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())]
                    )
                except OSError:
                    conn.close()
                    continue
                attached.append(conn)
            else:
                try:
                    data = ready.recv(64)
                except OSError:
                    data = b""
                if not data:  # that proxy exited
                    attached.remove(ready)
                    ready.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nanoclaw-proxy-keeper")
    parser.add_argument("--listener-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--path", type=Path, required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--linger-s", type=float, default=LINGER_S)
    args = parser.parse_args(argv)
    device, inode = (int(part) for part in args.identity.split(":"))
    listener = socket.socket(fileno=args.listener_fd)
    control = socket.socket(fileno=args.control_fd)
    keep(listener, control, args.path, (device, inode), args.linger_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
