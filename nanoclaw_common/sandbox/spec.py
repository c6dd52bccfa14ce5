"""How a session's container is created: name, labels, environment and its confinement flags,
as the keyword arguments of podman-py's ``containers.create``. Pure, so the flags are
unit-tested without Podman; ``core.Sandbox`` passes the result to Podman unchanged.
"""

from __future__ import annotations

import os
import re
from typing import Any, Final

import msgspec

from nanoclaw_common.errors import Refused
from nanoclaw_common.faults import CONTAINER_FOLDER, FAULTS_ENV
from nanoclaw_common.sandbox import seccomp
from nanoclaw_common.sandbox.mounts import Mount
from nanoclaw_common.sandbox.ownership import AGENT_GID, AGENT_UID

LABEL_INSTALL: Final = "nanoclaw.install"
LABEL_SESSION: Final = "nanoclaw.session"
LABEL_GROUP: Final = "nanoclaw.group"
LABEL_RUN: Final = "nanoclaw.run"

# Lowered for every container, whatever the machine needs (runtime.py): an agent has no use
# for more, and a fixed ceiling keeps a runaway tool from exhausting the host's descriptors.
# nproc counts per uid across all agent containers (they share AGENT_UID); the per-container
# bound is pids_limit.
ULIMITS: Final = (("nofile", 4096), ("nproc", 4096))
CPU_PERIOD_US: Final = 100_000
LOG_MAX_BYTES: Final = 10_000_000  # the runner's stderr, kept by conmon; bounded
# The runner's working folder: root's, on the read-only root filesystem. Never /workspace:
# nothing the agent can write may be the runner's cwd (docs/security.md). Tools get
# /workspace as theirs explicitly.
WORKDIR: Final = "/"

_CONTAINER_NAME: Final = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,252}$")


class RunSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    image: str
    command: list[str] | None  # None: the image's CMD (the agent runner)
    labels: dict[str, str]
    env: dict[str, str]
    mounts: list[Mount]
    memory_mb: int
    cpus: float
    pids: int
    rootless: bool = False


def container_name(install: str, session_id: str) -> str:
    name = f"nanoclaw-{install}-{session_id}"
    if not _CONTAINER_NAME.match(name):
        raise Refused(f"cannot make a container name from session id {session_id!r}")
    return name


def labels(install: str, session_id: str, agent_group_id: str, run_id: str) -> dict[str, str]:
    return {
        LABEL_INSTALL: install,
        LABEL_SESSION: session_id,
        LABEL_GROUP: agent_group_id,
        LABEL_RUN: run_id,
    }


def run_env(run_id: str, tz: str, *, test_faults: bool = False) -> dict[str, str]:
    """Everything the container gets from the environment: nothing secret. The container's
    environment is PID 1's, and ``/proc/1/environ`` is readable by the agent user, so the
    per-run proxy token goes through ``agent/.proxy-token`` instead (runner_config.py).
    ``test_faults``: the test-only crash points of ``nanoclaw_common.faults`` (never in
    production)."""
    env = {"NANOCLAW_RUN_ID": run_id, "TZ": tz}
    if test_faults:
        env[FAULTS_ENV] = CONTAINER_FOLDER
    return env


def create_kwargs(spec: RunSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "name": spec.name,
        "labels": dict(spec.labels),
        "environment": dict(spec.env),
        "mounts": [mount.to_podman() for mount in spec.mounts if mount.kind == "tmpfs"],
        "volumes": bind_volumes(spec.mounts),
        # No network (the model is reached through the proxy socket), no capabilities.
        "network_mode": "none",
        "read_only": True,
        "cap_drop": ["ALL"],
        "no_new_privileges": True,
        # Our own profile (seccomp.py), shipped with the package, at every start. Podman
        # reads the file itself; a missing file fails the create rather than running the
        # container unconfined.
        "seccomp_profile_path": str(seccomp.profile_path()),
        "mem_limit": f"{spec.memory_mb}m",
        "memswap_limit": f"{spec.memory_mb}m",  # no swap on top of the memory limit
        "cpu_period": CPU_PERIOD_US,
        "cpu_quota": max(1_000, int(spec.cpus * CPU_PERIOD_US)),
        "pids_limit": spec.pids,
        "ulimits": [{"Name": name, "Soft": value, "Hard": value} for name, value in ULIMITS],
        # A tiny init as PID 1: forwards TERM to the runner and reaps the zombies that tool
        # subprocesses leave behind.
        "init": True,
        "working_dir": WORKDIR,
        "log_config": {"Type": "k8s-file", "Config": {"size": LOG_MAX_BYTES}},
    }
    if spec.rootless:
        # Rootless Podman: the container user is the host user (keep-id), so files the
        # container writes belong to whoever runs NanoClaw, and nothing needs chown.
        kwargs["userns_mode"] = "keep-id"
        kwargs["user"] = f"{os.getuid()}:{os.getgid()}"
    else:
        kwargs["user"] = f"{AGENT_UID}:{AGENT_GID}"
    return kwargs


def bind_volumes(mounts: list[Mount]) -> dict[str, dict[str, Any]]:
    """The bind mounts as podman-py's ``volumes=``, keyed by host path. Raises ``Refused``
    when two binds share a host path (one would silently replace the other; the mount
    checks never let that happen)."""
    volumes: dict[str, dict[str, Any]] = {}
    for mount in mounts:
        if mount.kind != "bind":
            continue
        if mount.source in volumes:
            raise Refused(f"host folder {mount.source} would be mounted twice")
        volumes[mount.source] = mount.to_podman_volume()
    return volumes
