"""Which container a process belongs to, as the host sees it: what binds a proxy token to
the container it was issued to (docs/security.md, "Credential proxy").

A connection to the proxy's Unix socket carries its peer's pid (``SO_PEERCRED``, translated
by the kernel into the proxy's pid namespace). That pid's ``/proc/<pid>/cgroup`` names the
container: Podman puts every process of a container in a cgroup named after the container's
64-hex id, whatever the cgroup version, runtime or manager:

- cgroup v1 or hybrid, cgroupfs manager (this project's CI machines, runc, rootful):
  ``4:memory:/libpod_parent/libpod-<id>``, the same path on every controller line;
- cgroup v2, systemd manager (a normal VPS): ``0::/machine.slice/libpod-<id>.scope``, or
  ``.../libpod-<id>.scope/container`` when Podman splits the scope;
- rootless on cgroup v2: ``0::/user.slice/user-1000.slice/user@1000.service/user.slice/
  libpod-<id>.scope``.

A process in a container cannot leave its cgroup: the cgroup filesystem is read-only inside
and every capability is dropped. So ``container:<id>`` is a fact the host can trust. A
process outside any container (a test on the host, an operator's shell) is identified by its
whole cgroup membership (``cgroup:<sha256 of the lines>``): stable for a process and its
children, different from every container's.

Rootless Podman on cgroup **v1** gives a container no cgroup of its own: its processes stay
in the user's cgroup, so containers cannot be told apart. ``identity_of_pid`` then reports a
``cgroup:`` identity that every such container shares, and a token bound to a
``container:`` id is refused from all of them (fail closed); ``nanoclaw doctor`` should say
so. Stdlib only: the sandbox, the proxy and tests import it.
"""

from __future__ import annotations

import hashlib
import re
import socket
import struct
from typing import Final

CONTAINER_PREFIX: Final = "container:"
CGROUP_PREFIX: Final = "cgroup:"
UNKNOWN: Final = "unknown"
_PEERCRED: Final = struct.Struct("3i")  # struct ucred: pid, uid, gid
# A 64-hex id as a whole path component, or after a "<word>-" prefix (libpod-, docker-,
# crio-), optionally with systemd's ".scope". "libpod-conmon-<id>" is Podman's monitor, never
# a container process: it does not count.
_CONTAINER_ID: Final = re.compile(
    r"(?:^|/)(?:(?!libpod-conmon-)[a-z]+-)?([0-9a-f]{64})(?:\.scope)?(?=/|$)"
)
MAX_CGROUP_BYTES: Final = 64 * 1024


def container_identity(container_id: str) -> str:
    """The identity of the processes of the container with this (full, 64-hex) id."""
    return CONTAINER_PREFIX + container_id.lower()


def identity_from_cgroup(text: str) -> str:
    """The identity a ``/proc/<pid>/cgroup`` content names (see the module docstring). The
    unified line (``0::``) decides when it names a container; a v1 line otherwise."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    ordered = sorted(lines, key=lambda line: not line.startswith("0::"))
    for line in ordered:
        _hierarchy, _, path = line.partition(":")
        _controllers, _, path = path.partition(":")
        found = _CONTAINER_ID.findall(path)
        if found:
            return container_identity(found[-1])  # the innermost container
    if not lines:
        return UNKNOWN
    return CGROUP_PREFIX + hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:32]


def identity_of_pid(pid: int) -> str:
    """The identity of process ``pid`` (``UNKNOWN`` when it is gone or unreadable)."""
    try:
        with open(f"/proc/{int(pid)}/cgroup", "rb") as handle:
            data = handle.read(MAX_CGROUP_BYTES)
    except OSError:
        return UNKNOWN
    return identity_from_cgroup(data.decode("utf-8", errors="replace"))


def peer_pid(sock: socket.socket) -> int | None:
    """The pid of the process that connected this Unix socket (None when not a Unix socket
    or the kernel gives none)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return None
    pid, _uid, _gid = _PEERCRED.unpack(creds)
    return pid if pid > 0 else None
