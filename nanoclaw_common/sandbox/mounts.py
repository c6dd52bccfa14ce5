"""What a session's container may see: the fixed mounts of docs/internals.md and the extra host
folders an operator allowed (reference/upstream-host.md §6.6, with its holes closed).

Pure: no Podman here. ``session_mounts`` builds the list; ``check_extra_mounts`` validates the
group's ``container_configs.additional_mounts`` against the allowlist file and returns what may
be mounted plus every refusal with its reason (the caller logs them; a refusal never stops the
wake).

The allowlist file (``settings.mount_allowlist``, by default
``~/.config/nanoclaw/mount-allowlist.json``) lives outside the data folder, so no container
can ever write it::

    {"allowedRoots": [{"path": "~/projects", "allowReadWrite": false, "description": "code"}],
     "blockedPatterns": ["secrets"]}
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from nanoclaw_common.paths import CONTAINER, SessionPaths

# Merged with the file's own patterns. A path is refused when any component equals or contains
# one of these, or the whole path contains one (upstream's rule).
DEFAULT_BLOCKED_PATTERNS: Final = (
    ".ssh",
    ".gnupg",
    ".gpg",
    ".aws",
    ".azure",
    ".gcloud",
    ".kube",
    ".docker",
    "credentials",
    ".env",
    ".netrc",
    ".npmrc",
    ".pypirc",
    "id_rsa",
    "id_ed25519",
    "private_key",
    ".secret",
)
MAX_ALLOWLIST_BYTES: Final = 256_000
MAX_EXTRA_MOUNTS: Final = 20
# One plain path component under /workspace/extra/ (upstream allowed nested relative paths; one
# component is all anyone needs and leaves nothing to normalise).
_MOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

TMP_SIZE_MB: Final = 256
# Every bind mount: a setuid file or a device node in a host folder means nothing inside.
# (Podman's tmpfs mounts have both already.)
BIND_OPTIONS: Final = ("nosuid", "nodev")


class Mount(msgspec.Struct, frozen=True):
    """One mount of the container. podman-py takes a tmpfs in ``mounts=`` (``to_podman``)
    and a bind with mount options only in ``volumes=`` (``to_podman_volume``): its
    ``mounts=`` entries cannot carry ``nosuid``/``nodev``."""

    kind: Literal["bind", "tmpfs"]
    source: str
    target: str
    read_only: bool

    def to_podman(self) -> dict[str, Any]:
        """A tmpfs as an entry of ``mounts=``."""
        if self.kind != "tmpfs":
            raise ValueError("a bind mount goes in volumes= (to_podman_volume)")
        return {
            "type": "tmpfs",
            "source": "tmpfs",
            "target": self.target,
            "size": f"{TMP_SIZE_MB}m",
            "mode": "1777",
        }

    def to_podman_volume(self) -> dict[str, Any]:
        """A bind mount as the value of ``volumes={source: ...}``."""
        if self.kind != "bind":
            raise ValueError("a tmpfs goes in mounts= (to_podman)")
        return {
            "bind": self.target,
            "mode": "ro" if self.read_only else "rw",
            "extended_mode": list(BIND_OPTIONS),
        }


def session_mounts(
    paths: SessionPaths,
    group_dir: Path,
    proxy: Mount | None,
    extras: Iterable[Mount] = (),
) -> list[Mount]:
    """The mounts of docs/internals.md "Files and mounts", in mount order, and nothing else:
    the session folder read-only with ``agent/`` read-write over it, the group folder
    read-write, the proxy socket (``proxy_mount``; none for the scripted model), a tmpfs
    ``/tmp`` and the checked extras."""
    mounts = [
        Mount("bind", str(paths.root), str(CONTAINER.session.root), read_only=True),
        Mount("bind", str(paths.agent_dir), str(CONTAINER.session.agent_dir), read_only=False),
        Mount("bind", str(group_dir), str(CONTAINER.workspace), read_only=False),
        Mount("tmpfs", "tmpfs", "/tmp", read_only=False),
    ]
    if proxy is not None:
        mounts.append(proxy)
    mounts.extend(extras)
    return mounts


def proxy_mount(socket_path: Path, run_dir: Path) -> Mount:
    """How the proxy socket reaches ``/run/nanoclaw/proxy.sock``.

    A bind mount of a socket *file* pins its inode: when the proxy restarts it binds a new
    socket, and running containers keep the dead one (connection refused until they restart;
    tried by hand). So when the proxy has a folder of its own, that folder is mounted instead
    and a restarted proxy is reachable at once. ``run/`` itself never qualifies: it also holds
    the Podman, CLI and supervisor sockets.

    Read-only is fine either way: connect() needs write permission on the socket, which a
    read-only mount does not take away (it only affects files, folders and links)."""
    if socket_path.parent != run_dir and socket_path.name == CONTAINER.proxy_socket.name:
        return Mount("bind", str(socket_path.parent), str(CONTAINER.proxy_socket.parent), True)
    return Mount("bind", str(socket_path), str(CONTAINER.proxy_socket), read_only=True)


# -- the allowlist ------------------------------------------------------------------------


class AllowedRoot(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    path: str
    allow_read_write: bool = False
    description: str = ""


class Allowlist(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    allowed_roots: list[AllowedRoot] = []
    blocked_patterns: list[str] = []


class RequestedMount(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    """One entry of ``container_configs.additional_mounts`` (upstream's shape)."""

    host_path: str
    container_path: str | None = None
    readonly: bool = True


class Refusal(msgspec.Struct, frozen=True):
    host_path: str
    reason: str


class ExtraMounts(msgspec.Struct, frozen=True):
    mounts: list[Mount]
    refusals: list[Refusal]


class AllowlistError(Exception):
    """The allowlist file exists but cannot be used; every extra mount is refused."""


def load_allowlist(path: Path, home: Path) -> Allowlist | None:
    """The allowlist, or None when the file does not exist (then nothing extra is mounted).

    Refused (``AllowlistError``) when it sits inside the data folder: containers write parts
    of that folder, and must never be able to widen their own access."""
    try:
        real = path.expanduser().resolve(strict=True)
    except FileNotFoundError:
        return None
    except (OSError, RuntimeError) as exc:
        raise AllowlistError(f"cannot resolve {path}: {exc}") from None
    if _overlaps(real, home.resolve()):
        raise AllowlistError(f"{real} is inside the data folder {home}; move it outside")
    try:
        with real.open("rb") as handle:
            data = handle.read(MAX_ALLOWLIST_BYTES + 1)
    except OSError as exc:
        raise AllowlistError(f"cannot read {real}: {exc}") from None
    if len(data) > MAX_ALLOWLIST_BYTES:
        raise AllowlistError(f"{real} is larger than {MAX_ALLOWLIST_BYTES} bytes")
    try:
        return msgspec.json.decode(data, type=Allowlist)
    except msgspec.DecodeError as exc:
        raise AllowlistError(f"{real}: {exc}") from None


def parse_requested(additional_mounts_json: str) -> list[RequestedMount]:
    """Decode ``container_configs.additional_mounts`` strictly (it is admin-set, but a typo
    must not mount something unexpected)."""
    try:
        requested = msgspec.json.decode(additional_mounts_json, type=list[RequestedMount])
    except msgspec.DecodeError as exc:
        raise AllowlistError(f"additional_mounts is not valid: {exc}") from None
    if len(requested) > MAX_EXTRA_MOUNTS:
        raise AllowlistError(f"at most {MAX_EXTRA_MOUNTS} additional mounts")
    return requested


def check_extra_mounts(
    requested: Iterable[RequestedMount],
    allowlist: Allowlist | None,
    *,
    protected: Iterable[Path],
) -> ExtraMounts:
    """Validate each requested mount; ``protected`` are paths no mount may contain or lie
    inside (the data folder, the allowlist file itself)."""
    wanted = list(requested)
    if allowlist is None:
        return ExtraMounts([], [Refusal(r.host_path, "no mount allowlist file") for r in wanted])
    patterns = [*DEFAULT_BLOCKED_PATTERNS, *(p for p in allowlist.blocked_patterns if p)]
    roots = _existing_roots(allowlist.allowed_roots)
    guarded = [p.expanduser().resolve() for p in protected]
    mounts: list[Mount] = []
    refusals: list[Refusal] = []
    names: set[str] = set()
    sources: set[str] = set()
    for request in wanted:
        outcome = _check_one(request, patterns, roots, guarded)
        if isinstance(outcome, Refusal):
            refusals.append(outcome)
            continue
        mount, note = outcome
        name = Path(mount.target).name
        if name in names:
            refusals.append(Refusal(request.host_path, f"container path {name!r} used twice"))
            continue
        if mount.source in sources:
            # podman-py takes binds keyed by host path (spec.bind_volumes).
            refusals.append(Refusal(request.host_path, f"host folder {mount.source} used twice"))
            continue
        names.add(name)
        sources.add(mount.source)
        mounts.append(mount)
        if note is not None:
            refusals.append(note)
    return ExtraMounts(mounts, refusals)


def _check_one(
    request: RequestedMount,
    patterns: list[str],
    roots: list[tuple[Path, AllowedRoot]],
    guarded: list[Path],
) -> Refusal | tuple[Mount, Refusal | None]:
    def refuse(reason: str) -> Refusal:
        return Refusal(request.host_path, reason)

    given = Path(request.host_path).expanduser()
    if not given.is_absolute():
        return refuse("host path must be absolute (or start with ~)")
    # Check the path as written and as resolved: a blocked name may hide behind a symlink
    # either way round.
    blocked = _blocked(given, patterns)
    if blocked:
        return refuse(f"path matches blocked pattern {blocked!r}")
    name = request.container_path if request.container_path is not None else given.name
    if not _MOUNT_NAME.match(name) or ".." in name:
        return refuse(f"container path {name!r} must be one plain name")
    try:
        real = given.resolve(strict=True)
    except FileNotFoundError:
        return refuse("host path does not exist")
    except (OSError, RuntimeError) as exc:
        return refuse(f"cannot resolve host path: {exc}")
    blocked = _blocked(real, patterns)
    if blocked:
        return refuse(f"real path {real} matches blocked pattern {blocked!r}")
    if not real.is_dir():
        return refuse("host path is not a directory")
    for path in guarded:
        if _overlaps(real, path):
            return refuse(f"real path {real} overlaps {path}")
    root = next((entry for base, entry in roots if _inside(real, base)), None)
    if root is None:
        return refuse(f"real path {real} is not inside an allowed root")
    target = str(CONTAINER.extra / name)
    if not request.readonly and not root.allow_read_write:
        # Upstream's rule: a root that does not allow writing turns the mount read-only.
        # Recorded as a refusal of write access so the operator sees it.
        note = refuse(f"read-write not allowed under {root.path}; mounted read-only")
        return Mount("bind", str(real), target, read_only=True), note
    return Mount("bind", str(real), target, read_only=request.readonly), None


def _existing_roots(roots: Iterable[AllowedRoot]) -> list[tuple[Path, AllowedRoot]]:
    found: list[tuple[Path, AllowedRoot]] = []
    for root in roots:
        try:
            found.append((Path(root.path).expanduser().resolve(strict=True), root))
        except (OSError, RuntimeError):
            continue  # a root that does not exist allows nothing
    return found


def _blocked(path: Path, patterns: list[str]) -> str | None:
    # "The whole path contains it" also covers "a component equals or contains it".
    text = str(path)
    return next((pattern for pattern in patterns if pattern in text), None)


def _inside(path: Path, base: Path) -> bool:
    return path == base or base in path.parents


def _overlaps(path: Path, other: Path) -> bool:
    """True when one contains the other (mounting a parent of the data folder exposes it)."""
    return _inside(path, other) or _inside(other, path)
