"""Which OCI runtime and ulimits Podman needs on this machine, kept in a containers.conf of our
own (``<home>/podman/containers.conf``) that Podman reads when ``CONTAINERS_CONF`` names it.
No system file is ever edited. The two failures this avoids, both seen on VPS hosts:

1. ``crun: setrlimit RLIMIT_NOFILE/NPROC: Operation not permitted``: rootful Podman asks for
   1,048,576 open files and processes; without CAP_SYS_RESOURCE a lower hard limit makes every
   container fail. Fix: ``default_ulimits`` lowered to 4096.
2. ``crun: cgroups in hybrid mode not supported``: cgroup v1 plus a cgroup2 ``unified`` dir.
   Fix: the ``runc`` runtime.

``choose`` is a pure function of the machine's facts (unit-tested); ``ensure_containers_conf``
applies it, writing the file only when something is needed (on a normal cgroup-v2 VPS the
defaults work, and the operator's own containers.conf keeps applying). ``nanoclaw doctor``
checks the choice with a throwaway container.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal

import msgspec

from nanoclaw_common.paths import Layout

# What rootful Podman 4 requests when no ulimit is configured (define.RLimitDefaultValue).
PODMAN_DEFAULT_RLIMIT: Final = 1_048_576
LOWERED_ULIMITS: Final = ("nofile=4096:4096", "nproc=4096:4096")
CAP_SYS_RESOURCE_BIT: Final = 24
PROBE_TIMEOUT_S: Final = 120.0

CgroupMode = Literal["v2", "hybrid", "v1", "unknown"]


class RuntimeFacts(msgspec.Struct, frozen=True):
    cgroup_mode: CgroupMode
    runtimes: list[str]  # OCI runtimes found on PATH
    rootless: bool
    nofile_hard: int
    nproc_hard: int
    cap_sys_resource: bool


class RuntimeChoice(msgspec.Struct, frozen=True):
    runtime: str | None  # None: Podman's default
    lower_ulimits: bool
    reasons: list[str]

    @property
    def needs_conf(self) -> bool:
        return self.runtime is not None or self.lower_ulimits


def conf_path(layout: Layout) -> Path:
    return layout.home / "podman" / "containers.conf"


# -- facts and the decision ---------------------------------------------------------------


def gather_facts(mounts_text: str | None = None) -> RuntimeFacts:
    """Read this process's view of the machine (``/proc/self/mounts``, rlimits, PATH)."""
    if mounts_text is None:
        try:
            mounts_text = Path("/proc/self/mounts").read_text()
        except OSError:
            mounts_text = ""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    return RuntimeFacts(
        cgroup_mode=cgroup_mode(mounts_text),
        runtimes=[name for name in ("crun", "runc") if shutil.which(name)],
        rootless=os.geteuid() != 0,
        nofile_hard=_unlimited_as_max(nofile),
        nproc_hard=_unlimited_as_max(nproc),
        cap_sys_resource=_has_capability(CAP_SYS_RESOURCE_BIT),
    )


def cgroup_mode(mounts_text: str) -> CgroupMode:
    """``v2`` (unified), ``hybrid`` (v1 plus a cgroup2 ``unified`` dir) or ``v1``."""
    fstypes: dict[str, str] = {}
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            fstypes[fields[1]] = fields[2]
    top = fstypes.get("/sys/fs/cgroup")
    if top == "cgroup2":
        return "v2"
    if top is None:
        return "unknown"
    if fstypes.get("/sys/fs/cgroup/unified") == "cgroup2":
        return "hybrid"
    return "v1"


def choose(facts: RuntimeFacts) -> RuntimeChoice:
    reasons: list[str] = []
    runtime: str | None = None
    if facts.cgroup_mode == "hybrid":
        if "runc" in facts.runtimes:
            runtime = "runc"
            reasons.append("cgroups in hybrid mode (crun refuses it): runtime runc")
        else:
            reasons.append("cgroups in hybrid mode but runc is not installed: containers may fail")
    lower = (
        not facts.rootless
        and not facts.cap_sys_resource
        and min(facts.nofile_hard, facts.nproc_hard) < PODMAN_DEFAULT_RLIMIT
    )
    if lower:
        reasons.append(
            f"hard limits nofile={facts.nofile_hard} nproc={facts.nproc_hard} are below what "
            "Podman asks for, and no CAP_SYS_RESOURCE: ulimits lowered to 4096"
        )
    if not reasons:
        reasons.append("Podman's defaults work here: no containers.conf of ours")
    return RuntimeChoice(runtime=runtime, lower_ulimits=lower, reasons=reasons)


def render_conf(choice: RuntimeChoice) -> str:
    lines = [
        "# Written by NanoClaw (nanoclaw_common/sandbox/runtime.py); used through",
        "# CONTAINERS_CONF by our podman processes only. Why:",
        *(f"#   {reason}" for reason in choice.reasons),
        "",
        "[containers]",
    ]
    if choice.lower_ulimits:
        lines.append("default_ulimits = [" + ", ".join(f'"{u}"' for u in LOWERED_ULIMITS) + "]")
    lines += ["", "[engine]"]
    if choice.runtime is not None:
        lines.append(f'runtime = "{choice.runtime}"')
    return "\n".join(lines) + "\n"


def write_conf(layout: Layout, choice: RuntimeChoice) -> Path | None:
    """Write (atomically) or remove our containers.conf; its path when one is in use."""
    path = conf_path(layout)
    if not choice.needs_conf:
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_conf(choice)
    if path.is_file() and path.read_text() == text:
        return path
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with tmp.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    return path


def ensure_containers_conf(layout: Layout) -> Path | None:
    """Our containers.conf if one is in use. A file already there is a decision made before
    (by ``nanoclaw doctor``, which tried containers, or by an earlier call) and is kept;
    otherwise decide from this machine's facts (cheap: no container) and write it if needed."""
    path = conf_path(layout)
    if path.is_file():
        return path
    return write_conf(layout, choose(gather_facts()))


def podman_env(conf: Path | None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a podman process: ours plus ``CONTAINERS_CONF`` when in use."""
    env = dict(os.environ if base is None else base)
    env.pop("CONTAINERS_CONF", None)
    if conf is not None:
        env["CONTAINERS_CONF"] = str(conf)
    return env


# -- the doctor's probe --------------------------------------------------------------------


class Probe(msgspec.Struct, frozen=True):
    config: str  # "defaults" or the conf's path
    ok: bool
    seconds: float
    error: str


def probe(image: str, conf: Path | None) -> Probe:
    """Run a throwaway ``--network none`` container from ``image`` with the given config."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            ["podman", "run", "--rm", "--network", "none", image, "true"],
            env=podman_env(conf),
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Probe(config_label(conf), False, time.monotonic() - started, str(exc))
    error = "" if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")
    return Probe(config_label(conf), done.returncode == 0, time.monotonic() - started, error[-500:])


def podman_version() -> str:
    """``podman --version``, or why it could not run (``nanoclaw doctor``)."""
    try:
        done = subprocess.run(
            ["podman", "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run podman: {exc}"
    return done.stdout.strip() or done.stderr.strip()


def config_label(conf: Path | None) -> str:
    return "defaults" if conf is None else str(conf)


def _unlimited_as_max(value: int) -> int:
    return PODMAN_DEFAULT_RLIMIT * 1024 if value == resource.RLIM_INFINITY else value


def _has_capability(bit: int) -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError):
        pass
    return False
