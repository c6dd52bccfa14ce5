"""Is the container confinement in force? ``nanoclaw doctor`` asks a throwaway container.

``probe`` starts a container exactly the way ``wake`` does (``spec.create_kwargs``: the same
flags, our seccomp profile, binds with their options, the agent user), with folders of its
own in place of the session's, and runs ``PROBE_SCRIPT`` in it: the script tries what the
confinement must refuse (a FIFO in each writable place, a user namespace by ``unshare -Ur``
and by the system call) and reports what the kernel says about the process (``Seccomp:``,
``NoNewPrivs:`` in ``/proc/self/status``) and the mounts (``/proc/self/mountinfo``).
``evaluate`` turns that into checks; the confinement is in force when every one passes.
Nothing is taken on trust from a setting: a profile that Podman ignored, a runtime without
seccomp, or mount options lost on the way all show up as a failed check.
"""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import msgspec
import podman
from podman.errors import PodmanError

from nanoclaw_common.paths import CONTAINER, Layout
from nanoclaw_common.sandbox import runtime, seccomp, spec
from nanoclaw_common.sandbox.mounts import Mount
from nanoclaw_common.sandbox.ownership import hand_over
from nanoclaw_common.sandbox.service import PodmanService, PodmanUnavailable, socket_answers
from nanoclaw_common.settings import Settings

PROBE_TIMEOUT_S: Final = 60.0
MAX_OUTPUT_BYTES: Final = 64_000
LABEL_PROBE: Final = "nanoclaw.probe"
_POLL_S: Final = 0.05
# The places the agent can write, and the binds (every one must be nosuid,nodev).
WRITABLE: Final = ("/tmp", str(CONTAINER.workspace), str(CONTAINER.session.agent_dir))
BINDS: Final = (
    str(CONTAINER.session.root),
    str(CONTAINER.session.agent_dir),
    str(CONTAINER.workspace),
)

# Runs as the agent user under `python3 -I`; stdlib only (the base image has no more).
# Prints one JSON object. The user-namespace system call comes last: if it succeeds, the
# process is in a namespace of its own from then on.
PROBE_SCRIPT: Final = r"""
import ctypes, errno, json, os, subprocess, sys

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    return ""

def outcome(call):
    try:
        call()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return "allowed"

def fifo(folder):
    path = os.path.join(folder, ".nanoclaw-probe-fifo")
    result = outcome(lambda: os.mkfifo(path))
    if result == "allowed":
        os.unlink(path)
    return result

mounts = {}
for line in open("/proc/self/mountinfo"):
    fields = line.split()
    mounts[fields[4]] = fields[5]
try:
    done = subprocess.run(["unshare", "-Ur", "true"], capture_output=True, timeout=20)
    unshare_command = [done.returncode, done.stderr.decode(errors="replace")[-300:]]
except (OSError, subprocess.TimeoutExpired) as exc:
    unshare_command = [-1, str(exc)]
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER = 0x10000000
user_namespace = "allowed"
if libc.unshare(CLONE_NEWUSER) != 0:
    user_namespace = errno.errorcode.get(ctypes.get_errno(), "?")
print(json.dumps({
    "seccomp": status("Seccomp"),
    "no_new_privs": status("NoNewPrivs"),
    "fifo": {folder: fifo(folder) for folder in json.loads(sys.argv[1])},
    "unshare_command": unshare_command,
    "user_namespace": user_namespace,
    "mounts": mounts,
}))
"""


class ProbeOutput(msgspec.Struct, frozen=True):
    """What ``PROBE_SCRIPT`` prints."""

    seccomp: str
    no_new_privs: str
    fifo: dict[str, str]
    unshare_command: tuple[int, str]
    user_namespace: str
    mounts: dict[str, str]


class Check(msgspec.Struct, frozen=True):
    name: str
    ok: bool
    found: str


class Confinement(msgspec.Struct, frozen=True):
    in_force: bool
    image: str
    profile: str  # the seccomp profile wake passes (seccomp.profile_path())
    checks: list[Check]
    error: str = ""  # why the probe itself could not run


def evaluate(output: ProbeOutput, image_command: list[str] | None) -> list[Check]:
    """The checks, from the probe's report and the agent image's command (None: a base
    image stood in for the missing agent image, so there is no runner command to check)."""
    checks = [
        Check("seccomp filter", output.seccomp == "2", f"Seccomp: {output.seccomp}"),
        Check(
            "no new privileges", output.no_new_privs == "1", f"NoNewPrivs: {output.no_new_privs}"
        ),
        Check(
            "FIFOs refused",
            bool(output.fifo) and all(result == "EPERM" for result in output.fifo.values()),
            ", ".join(f"mkfifo {folder}: {result}" for folder, result in output.fifo.items()),
        ),
        Check(
            "user namespaces refused",
            output.unshare_command[0] != 0 and output.user_namespace == "EPERM",
            f"unshare -Ur: exit {output.unshare_command[0]}"
            f" {output.unshare_command[1].strip()}; unshare(CLONE_NEWUSER): "
            f"{output.user_namespace}",
        ),
    ]
    unsafe = []
    for target in BINDS:
        options = output.mounts.get(target)
        if options is None or not {"nosuid", "nodev"} <= set(options.split(",")):
            unsafe.append(f"{target}: {options or 'not mounted'}")
    checks.append(
        Check("binds nosuid,nodev", not unsafe, "; ".join(unsafe) or ", ".join(BINDS) + ": ok")
    )
    if image_command is not None:
        isolated = "-I" in image_command
        checks.append(
            Check("runner starts isolated (python -I)", isolated, "CMD " + " ".join(image_command))
        )
    return checks


@contextmanager
def podman_url(settings: Settings, layout: Layout) -> Iterator[str]:
    """The Podman API wake would use; when that is our own socket and nothing answers there
    (the assistant is not up), a temporary service for the duration, with this data
    folder's containers.conf."""
    url = settings.podman_socket_url
    if not url.startswith("unix://") or socket_answers(Path(url.removeprefix("unix://"))):
        yield url
        return
    conf = runtime.ensure_containers_conf(layout)
    service = PodmanService(layout.run_dir / "doctor-podman.sock", runtime.podman_env(conf))
    with service:
        yield service.url


def probe(settings: Settings, layout: Layout, image: str, *, agent_image: bool) -> Confinement:
    """Start a probe container from ``image`` as ``wake`` would and evaluate it.
    ``agent_image``: ``image`` is the agent image (its command is checked too)."""
    profile = str(seccomp.profile_path())
    try:
        with podman_url(settings, layout) as url:
            output, command = _run_probe(settings, layout, image, url)
    except (PodmanError, PodmanUnavailable, OSError, msgspec.DecodeError) as exc:
        return Confinement(False, image, profile, [], error=f"the probe did not run: {exc}")
    checks = evaluate(output, command if agent_image else None)
    return Confinement(all(check.ok for check in checks), image, profile, checks)


def _run_probe(
    settings: Settings, layout: Layout, image: str, url: str
) -> tuple[ProbeOutput, list[str]]:
    scratch = layout.run_dir / f"doctor-{secrets.token_hex(4)}"
    session, agent, workspace = scratch / "session", scratch / "session" / "agent", scratch / "ws"
    rootless = runtime.gather_facts().rootless
    try:
        for folder in (agent, workspace):
            folder.mkdir(parents=True)
        if not rootless:
            hand_over(agent)
            hand_over(workspace)
        run = spec.RunSpec(
            name=f"nanoclaw-{settings.install}-probe-{scratch.name}",
            image=image,
            command=["python3", "-I", "-c", PROBE_SCRIPT, msgspec.json.encode(WRITABLE).decode()],
            labels={LABEL_PROBE: settings.install},
            env={"TZ": settings.tz},
            mounts=[
                Mount("bind", str(session), str(CONTAINER.session.root), read_only=True),
                Mount("bind", str(agent), str(CONTAINER.session.agent_dir), read_only=False),
                Mount("bind", str(workspace), str(CONTAINER.workspace), read_only=False),
                Mount("tmpfs", "tmpfs", "/tmp", read_only=False),
            ],
            memory_mb=settings.container_memory_mb,
            cpus=settings.container_cpus,
            pids=settings.container_pids,
            rootless=rootless,
        )
        with podman.PodmanClient(base_url=url, timeout=int(PROBE_TIMEOUT_S)) as client:
            container = client.containers.create(run.image, run.command, **spec.create_kwargs(run))
            try:
                container.start()
                code = _wait_exit(container)
                logs = _bounded(container.logs(stdout=True, stderr=False))
            finally:
                container.remove(force=True)
            command = _image_command(client, image)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if code != 0:
        raise OSError(f"the probe container exited {code}: {logs[-500:]!r}")
    return msgspec.json.decode(logs.strip().splitlines()[-1], type=ProbeOutput), command


def _wait_exit(container: Any) -> int:
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    while True:
        container.reload()
        state = container.attrs.get("State", {})
        if isinstance(state, dict) and state.get("Status") not in ("created", "running"):
            return int(state.get("ExitCode", -1))
        if time.monotonic() > deadline:
            raise OSError(f"the probe container did not finish in {PROBE_TIMEOUT_S:.0f}s")
        time.sleep(_POLL_S)


def _bounded(logs: bytes | Iterator[bytes]) -> bytes:
    """The probe's stdout (conmon caps the log file; this caps what we keep of it)."""
    chunks = [logs] if isinstance(logs, bytes) else logs
    kept = bytearray()
    for chunk in chunks:
        kept += chunk
        if len(kept) > MAX_OUTPUT_BYTES:
            raise OSError(f"the probe wrote more than {MAX_OUTPUT_BYTES} bytes")
    return bytes(kept)


def _image_command(client: podman.PodmanClient, image: str) -> list[str]:
    config = client.images.get(image).attrs.get("Config") or {}
    command = config.get("Cmd") or []
    return [str(part) for part in command]
