"""A real filesystem with enforced project quotas for the tests: an ext4 image made with
``-O quota,project``, loop-mounted ``prjquota`` (root, as CI runs).

Where the kernel cannot enforce project quotas (built without ``CONFIG_QFMT_V2``, as some
minimal VM kernels are) the tests that need one are skipped with that reason; a machine that
cannot mount a loop device at all fails them, loudly.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount(image: Path, mount_point: Path, options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mount", "-o", options, str(image), str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )


def _require_loop_mounts(where: Path, mount_point: Path) -> None:
    """Fail unless a plain ext4 (no quota features) mounts: then only quotas are missing."""
    plain = where / "plain.img"
    with plain.open("wb") as handle:
        handle.truncate(64 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(plain)], check=True, capture_output=True)
    mounted = _mount(plain, mount_point, "loop")
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a loop device here: {mounted.stderr.strip()}", pytrace=False)
    subprocess.run(["umount", str(mount_point)], check=True)
    plain.unlink()


@contextmanager
def project_quota_fs(where: Path, size_mb: int = 512) -> Iterator[Path]:
    """Mount a fresh ext4 with project quotas under ``where``; yields the mount point."""
    if os.geteuid() != 0:
        pytest.fail("project-quota tests mount a loop device and need root", pytrace=False)
    image = where / "prjquota.img"
    # Outside pytest's 0700 tmp folder: the tests write as the agent user, which must be
    # able to reach the folders (a container reaches them through its bind mounts instead).
    mount_point = Path(tempfile.mkdtemp(prefix="nanoclaw-prjquota-"))
    mount_point.chmod(0o711)
    with image.open("wb") as handle:
        handle.truncate(size_mb * 1024 * 1024)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-O", "quota,project", str(image)],
        check=True,
        capture_output=True,
    )
    mounted = _mount(image, mount_point, "loop,prjquota")
    if mounted.returncode != 0:
        _require_loop_mounts(where, mount_point)
        mount_point.rmdir()
        pytest.skip(
            "THIS KERNEL CANNOT ENFORCE PROJECT QUOTAS (ext4 needs CONFIG_QUOTA and"
            " CONFIG_QFMT_V2; `mount -o prjquota` said: "
            f"{mounted.stderr.strip()}). The walk mechanism is what applies here."
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
        mount_point.rmdir()
