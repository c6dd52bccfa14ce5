"""Building the agent image (``nanoclaw image build``) and per-group images with extra packages
(``install_packages`` approvals).

The agent image comes from the repository's ``Containerfile`` with a base image argument:
1. the registry base (``docker.io/library/python:3.12-slim``), when Podman can pull it;
2. otherwise ``localhost/nanoclaw-base``: Debian bookworm bootstrapped with debootstrap from
   the mirror this machine's apt already uses, imported into Podman once and kept (a second
   build reuses it).
pip inside the build gets the host's CA bundle as a build secret, so it works behind an
intercepting HTTPS proxy.

These run the ``podman`` command line (builds are not worth podman-py's streaming API) with
our containers.conf in the environment; output lines go to a callback so the CLI shows
progress.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final

import msgspec

from nanoclaw_common import packages
from nanoclaw_common.errors import NanoclawError, Refused
from nanoclaw_common.sandbox.ownership import AGENT_GID, AGENT_UID

REGISTRY_BASE: Final = "docker.io/library/python:3.12-slim"
OFFLINE_BASE: Final = "localhost/nanoclaw-base:latest"
DEBIAN_SUITE: Final = "bookworm"  # Python 3.11, what the runner needs at least
DEFAULT_MIRROR: Final = "http://deb.debian.org/debian"
BOOTSTRAP_PACKAGES: Final = "python3,python3-venv,ca-certificates"
CA_BUNDLE: Final = Path("/etc/ssl/certs/ca-certificates.crt")
PULL_TIMEOUT_S: Final = 300.0
# Clears every setuid/setgid bit on the image's own filesystem (the Containerfile does the
# same for the agent image).
STRIP_SETID: Final = "find / -xdev -perm /6000 -type f -exec chmod a-s {} +"
BUILD_TIMEOUT_S: Final = 1800.0


Output = Callable[[str], None]


class ImageBuildError(NanoclawError):
    """A step of an image build failed; the message says which and why."""


def source_root() -> Path:
    """The checkout that holds the ``Containerfile`` (the build context)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "Containerfile").is_file():
        raise ImageBuildError(f"no Containerfile in {root}: build from a source checkout")
    return root


# -- running podman and friends ------------------------------------------------------------


def run_streaming(
    argv: Sequence[str],
    env: dict[str, str],
    out: Output,
    *,
    timeout_s: float = BUILD_TIMEOUT_S,
    stdin: int | None = None,
) -> None:
    """Run a command, passing each output line to ``out``; raise with its last lines on
    failure."""
    tail: list[str] = []
    try:
        process = subprocess.Popen(
            list(argv),
            env=env,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        raise ImageBuildError(f"cannot run {argv[0]}: {exc}") from None
    assert process.stdout is not None
    with process:
        for raw in process.stdout:
            line = raw.rstrip("\n")
            out(line)
            tail = [*tail[-19:], line]
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            raise ImageBuildError(f"{argv[0]} took longer than {timeout_s:.0f}s") from None
    if code != 0:
        raise ImageBuildError(f"{' '.join(argv[:3])} failed (exit {code}):\n" + "\n".join(tail))


def image_exists(image: str, env: dict[str, str]) -> bool:
    done = subprocess.run(
        ["podman", "image", "exists", image], env=env, capture_output=True, check=False
    )
    return done.returncode == 0


def image_id(image: str, env: dict[str, str]) -> str | None:
    done = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", image],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def image_layers(image: str, env: dict[str, str]) -> list[str] | None:
    """The image's layer digests, bottom first; None when Podman does not have it."""
    try:
        done = subprocess.run(
            ["podman", "image", "inspect", "--format", "{{json .RootFS.Layers}}", image],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    try:
        return msgspec.json.decode(done.stdout, type=list[str])
    except msgspec.DecodeError:
        return None


def release_previous(previous: str | None, image: str, env: dict[str, str], out: Output) -> None:
    """Remove the image ``image`` named before a rebuild, now untagged (each update of the
    checkout would otherwise leave a few hundred MB behind). Never forced: an image a
    container or a group image still uses, or that has another name, stays."""
    if previous is None or previous == image_id(image, env):
        return
    names = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{json .RepoTags}}", previous],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if names.returncode != 0:
        return  # gone already
    if json.loads(names.stdout or "[]"):
        out(f"kept the previous image {previous[:12]}: it has another name")
        return
    done = subprocess.run(
        ["podman", "rmi", previous], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode == 0:
        out(f"removed the previous image {previous[:12]}")
    else:
        out(f"kept the previous image {previous[:12]}: it is still in use")


def try_pull(image: str, env: dict[str, str], out: Output) -> bool:
    """True when the image is here or could be pulled (a registry is reachable)."""
    if image_exists(image, env):
        return True
    try:
        run_streaming(["podman", "pull", image], env, out, timeout_s=PULL_TIMEOUT_S)
    except ImageBuildError:
        return False  # podman's own lines (streamed above) say why
    return True


# -- the offline Debian base -------------------------------------------------------------


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses (deb822 ``*.sources`` or ``sources.list``),
    or deb.debian.org when it uses none (e.g. an Ubuntu host)."""
    candidates: list[str] = []
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        candidates += _deb822_uris(_read(path))
    for path in [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]:
        candidates += _one_line_uris(_read(path))
    for uri in candidates:
        if uri.rstrip("/").endswith("/debian") and uri.startswith(("http://", "https://")):
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _deb822_uris(text: str) -> list[str]:
    uris: list[str] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields = {}
        for line in stanza.splitlines():
            if ":" in line and not line.startswith(("#", " ")):
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.split()
        if "deb" in fields.get("types", []) and fields.get("enabled", ["yes"]) != ["no"]:
            uris += fields.get("uris", [])
    return uris


def _one_line_uris(text: str) -> list[str]:
    uris: list[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # options, e.g. [signed-by=...]
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if words:
            uris.append(words[0])
    return uris


def bootstrap_base(env: dict[str, str], out: Output, *, mirror: str | None = None) -> str:
    """Make ``localhost/nanoclaw-base`` with debootstrap unless it exists; returns its name."""
    if image_exists(OFFLINE_BASE, env):
        out(f"using the cached offline base {OFFLINE_BASE}")
        return OFFLINE_BASE
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed (apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise ImageBuildError(
            "the offline base is made with debootstrap, which needs root: run this as root,"
            " or give --base an image you have"
        )
    source = mirror or debian_mirror()
    workdir = Path(tempfile.mkdtemp(prefix="nanoclaw-rootfs-", dir="/var/tmp"))
    rootfs = workdir / "rootfs"
    try:
        out(f"bootstrapping Debian {DEBIAN_SUITE} from {source} (about a minute)")
        run_streaming(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={BOOTSTRAP_PACKAGES}",
                DEBIAN_SUITE,
                str(rootfs),
                source,
            ],
            env,
            out,
        )
        # Downloaded .debs and package lists are 90 MB the image does not need
        # (a per-group build runs apt-get update itself).
        for leftover in (rootfs / "var/cache/apt/archives", rootfs / "var/lib/apt/lists"):
            for entry in leftover.glob("*"):
                if entry.is_file():
                    entry.unlink()
        out(f"importing the root filesystem as {OFFLINE_BASE}")
        _import_rootfs(rootfs, env, out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return OFFLINE_BASE


def _import_rootfs(rootfs: Path, env: dict[str, str], out: Output) -> None:
    tar = subprocess.Popen(
        ["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert tar.stdout is not None
    try:
        run_streaming(["podman", "import", "-", OFFLINE_BASE], env, out, stdin=tar.stdout.fileno())
    finally:
        tar.stdout.close()
        if tar.wait() != 0:
            raise ImageBuildError("tar of the bootstrapped root filesystem failed")


# -- the agent image ---------------------------------------------------------------------


def secret_args() -> list[str]:
    """The host CA bundle as the ``cacert`` build secret, when the host has one."""
    if CA_BUNDLE.is_file():
        return ["--secret", f"id=cacert,src={CA_BUNDLE}"]
    return []


def build_agent_image(
    image: str,
    env: dict[str, str],
    out: Output,
    *,
    base: str | None = None,
    offline: bool = False,
) -> str:
    """Build ``image`` from the Containerfile; returns the base image used.

    ``base`` forces a base image; ``offline`` skips the registry attempt."""
    root = source_root()
    if base is None:
        if not offline and try_pull(REGISTRY_BASE, env, out):
            base = REGISTRY_BASE
        else:
            out("no image registry reachable: using the offline Debian base")
            base = bootstrap_base(env, out)
    out(f"building {image} from {base}")
    previous = image_id(image, env)
    run_streaming(
        [
            "podman",
            "build",
            "--build-arg",
            f"BASE_IMAGE={base}",
            "--build-arg",
            f"AGENT_UID={AGENT_UID}",
            *secret_args(),
            "--tag",
            image,
            "--file",
            str(root / "Containerfile"),
            str(root),
        ],
        env,
        out,
    )
    release_previous(previous, image, env, out)
    return base


# -- per-group images ----------------------------------------------------------------------


def check_packages(apt: Iterable[str], pip: Iterable[str]) -> tuple[list[str], list[str]]:
    """Validated, de-duplicated and sorted names for a group's image: everything approved
    for the group so far, merged (``group_image``), so the cap is the group's
    (``packages.MAX_GROUP_PACKAGES``); one request's limit was checked when it was approved.
    The names pass the shared rules (``nanoclaw_common.packages``) again, since they came
    from a container. ``Refused`` names the first bad one."""
    apt_names = sorted(set(apt))
    pip_names = sorted(set(pip))
    try:
        packages.check_names(apt_names, pip_names)
    except packages.InvalidPackages as exc:
        raise Refused(str(exc)) from None
    if len(apt_names) + len(pip_names) > packages.MAX_GROUP_PACKAGES:
        raise Refused(
            f"too many packages for one group's image (at most {packages.MAX_GROUP_PACKAGES})"
        )
    if not apt_names and not pip_names:
        raise Refused("no packages to install")
    return apt_names, pip_names


def group_image_tag(image: str, agent_group_id: str) -> str:
    """``<repository of image>:<group id>`` (lower case, as tags must be)."""
    repository = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    tag = re.sub(r"[^a-z0-9_.-]", "-", agent_group_id.lower())[:128]
    return f"{repository}:{tag}"


def render_group_containerfile(base_image: str, apt: Sequence[str], pip: Sequence[str]) -> str:
    """``FROM`` the agent image, packages installed as root, then back to the agent user.
    Names were checked by ``check_packages``, so they are safe as shell words. Like the agent
    image, a group image keeps no setuid or setgid file (an apt package may bring one: sudo,
    fuse, ping...)."""
    lines = [f"FROM {base_image}", "USER root"]
    if apt:
        lines.append(
            "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y"
            f" --no-install-recommends {' '.join(apt)} && rm -rf /var/lib/apt/lists/*"
            f" && {STRIP_SETID}"
        )
    if pip:
        lines.append(
            "RUN --mount=type=secret,id=cacert"
            " if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi;"
            f" /opt/venv/bin/pip install {' '.join(pip)}"
        )
    lines.append(f"USER {AGENT_UID}:{AGENT_GID}")
    return "\n".join(lines) + "\n"


def build_group_image(
    base_image: str,
    tag: str,
    *,
    apt: Sequence[str],
    pip: Sequence[str],
    env: dict[str, str],
    out: Output,
) -> None:
    previous = image_id(tag, env)
    with tempfile.TemporaryDirectory(prefix="nanoclaw-group-image-") as context:
        containerfile = Path(context) / "Containerfile"
        containerfile.write_text(render_group_containerfile(base_image, apt, pip))
        run_streaming(
            [
                "podman",
                "build",
                *secret_args(),
                "--tag",
                tag,
                "--file",
                str(containerfile),
                context,
            ],
            env,
            out,
        )
    release_previous(previous, tag, env, out)
