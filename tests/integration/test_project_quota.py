"""Kernel project quotas on a real, loop-mounted ext4 (``-O quota,project``, ``prjquota``):
folders prepared as ``Sandbox.wake`` prepares them, written by processes running as the agent
user (no container needed to ask the kernel): writes past the quota fail with ``EDQUOT`` at
once, entries are limited too, files already there are counted, nothing can be linked or moved
into another folder's project, the sweeper reads the kernel's count every pass, and the walk
backstop still sees a file whose project id the agent reset (docs/security.md).

Skipped, with the reason, where the kernel cannot enforce project quotas (tests/prjquota.py).
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from nanoclaw_common.disk import project
from nanoclaw_common.disk.limits import MIB, Scope
from nanoclaw_common.disk.quotas import DiskQuotas, Mechanism
from nanoclaw_common.paths import Layout, SessionPaths
from nanoclaw_common.sandbox.ownership import AGENT_GID, AGENT_UID, hand_over
from nanoclaw_common.sessions import ensure_session_files
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore, rows
from nanoclaw_common.store.disk import DiskLedger
from nanoclaw_sweeper.disk import DiskWatch
from tests.prjquota import project_quota_fs
from tests.sweeper_world import FakeSandbox

T0 = 1_800_000_000_000
GROUP_MB = 16
SESSION_MB = 8


@dataclass
class Prepared:
    settings: Settings
    layout: Layout
    central: CentralStore
    quotas: DiskQuotas
    group: rows.AgentGroup
    session: rows.Session
    paths: SessionPaths
    group_dir: Path

    def prepare(self) -> None:
        """What ``Sandbox.wake`` does before a run: kernel quotas, then the hand-over."""
        self.quotas.prepare(
            self.central,
            group=self.group,
            config=self.central.get_container_config(self.group.id),
            session=self.session,
            paths=self.paths,
            group_dir=self.group_dir,
            now=T0,
        )
        hand_over(self.group_dir)
        hand_over(self.paths.agent_dir)


@pytest.fixture
def prepared(tmp_path: Path) -> Iterator[Prepared]:
    with project_quota_fs(tmp_path) as mount_point:
        home = mount_point / "data"
        settings = Settings(
            home=str(home),
            install_id="test",
            group_disk_quota_mb=GROUP_MB,
            group_disk_quota_entries=1_000,
            session_disk_quota_mb=SESSION_MB,
            disk_quota_mechanism="project",
            disk_min_free_mb=64,  # the test filesystem is small
        ).validate()
        layout = Layout(settings.home_path)
        layout.ensure()
        central = CentralStore.open(layout.central_db)
        try:
            group = central.create_agent_group("Main", "main", now=T0)
            session = central.create_session(group.id, None, now=T0)
            paths = ensure_session_files(layout, session)
            group_dir = layout.group_dir(group.folder)
            group_dir.mkdir()
            yield Prepared(
                settings,
                layout,
                central,
                DiskQuotas(settings, layout),
                group,
                session,
                paths,
                group_dir,
            )
        finally:
            central.close()


def as_agent(*argv: str) -> subprocess.CompletedProcess[str]:
    """A command as the container's user, which is what the kernel checks the quota for."""
    return subprocess.run(
        list(argv),
        user=AGENT_UID,
        group=AGENT_GID,
        extra_groups=[],
        capture_output=True,
        text=True,
        check=False,
    )


def allocated(path: Path) -> int:
    return os.lstat(path).st_blocks * 512


def test_the_kernel_refuses_writes_past_the_quota(prepared: Prepared) -> None:
    assert prepared.quotas.choice(Scope.GROUP).mechanism is Mechanism.PROJECT
    assert prepared.quotas.choice(Scope.SESSION).mechanism is Mechanism.PROJECT
    prepared.prepare()
    # The kernel's limit is the quota plus the cleanup grace (16 MiB at these sizes).
    big = as_agent("fallocate", "-l", "2G", str(prepared.group_dir / "big"))
    assert big.returncode != 0 and "Disk quota exceeded" in big.stderr
    filled = as_agent(
        "dd", "if=/dev/zero", f"of={prepared.paths.agent_dir}/fill", "bs=1M", "count=100"
    )
    assert filled.returncode != 0 and "Disk quota exceeded" in filled.stderr
    used = allocated(prepared.paths.agent_dir / "fill")
    assert (SESSION_MB - 1) * MIB < used <= (SESSION_MB + 16) * MIB
    counted = prepared.quotas.project_usage(
        prepared.central, Scope.SESSION, prepared.session.id, prepared.paths.agent_dir
    )
    assert counted is not None
    assert counted.limit_bytes == (SESSION_MB + 16) * MIB
    assert counted.bytes >= used


def test_entries_are_limited_by_the_kernel_too(prepared: Prepared) -> None:
    prepared.prepare()
    made = as_agent(
        "python3",
        "-c",
        "import sys, pathlib\n"
        "made = 0\n"
        "try:\n"
        "    while True: pathlib.Path(sys.argv[1], f'e{made}').touch(); made += 1\n"
        "except OSError as exc:\n"
        "    print(made, exc.errno)\n",
        str(prepared.group_dir),
    )
    count, code = (int(part) for part in made.stdout.split())
    assert code == errno.EDQUOT
    # 1,000 entries plus the grace (500), less what the folder held already.
    assert 1_400 <= count <= 1_500


def test_files_already_there_count_and_nothing_moves_out(prepared: Prepared) -> None:
    with (prepared.group_dir / "old").open("wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, 12 * MIB)  # before quotas existed
    (prepared.group_dir / "sub").mkdir()
    (prepared.group_dir / "sub" / "older").write_bytes(b"o" * 5000)
    prepared.prepare()
    counted = prepared.quotas.project_usage(
        prepared.central, Scope.GROUP, prepared.group.id, prepared.group_dir
    )
    assert counted is not None and counted.bytes >= 12 * MIB and counted.inodes >= 4
    ledger = DiskLedger(prepared.central)
    group_project = ledger.find_project(Scope.GROUP, prepared.group.id)
    session_project = ledger.find_project(Scope.SESSION, prepared.session.id)
    assert group_project is not None and session_project is not None
    assert group_project != session_project
    fd = os.open(prepared.group_dir / "sub" / "older", os.O_RDONLY)
    try:
        assert project.get_project(fd)[0] == group_project
    finally:
        os.close(fd)
    # Moving or linking a file into the other folder would take it out of this count.
    for move in (os.rename, os.link):
        with pytest.raises(OSError) as raised:
            move(prepared.group_dir / "old", prepared.paths.agent_dir / "old")
        assert raised.value.errno == errno.EXDEV


def test_the_sweeper_reads_the_kernels_count_every_pass(prepared: Prepared) -> None:
    prepared.prepare()
    sandbox = FakeSandbox(prepared.central)
    sandbox.start(prepared.session)
    settings = msgspec.structs.replace(prepared.settings, disk_check_interval_s=3600.0)
    watch = DiskWatch(settings, prepared.central, prepared.layout, sandbox.stop, clock=lambda: 0.0)
    assert watch.check(list(sandbox.live), T0).stopped == []  # walked: under quota
    filled = as_agent(
        "dd", "if=/dev/zero", f"of={prepared.group_dir}/fill", "bs=1M", f"count={GROUP_MB + 4}"
    )
    assert filled.returncode == 0, filled.stderr  # inside the grace: the kernel allows it
    # The next walk is an hour away; the kernel's count finds it in the next pass.
    report = watch.check(list(sandbox.live), T0 + 1_000)
    assert report.stopped == [prepared.session.id]
    assert report.blocked == [f"group:{prepared.group.id}"]


def test_a_reset_project_id_is_caught_by_the_walk(prepared: Prepared) -> None:
    """The agent owns its files, and with rootful Podman it is in the initial user
    namespace, so it may change a file's project id (``chattr -p 0``) and take the file out
    of the kernel's count. The walk does not care about project ids."""
    prepared.prepare()
    sandbox = FakeSandbox(prepared.central)
    sandbox.start(prepared.session)
    watch = DiskWatch(
        prepared.settings, prepared.central, prepared.layout, sandbox.stop, clock=lambda: 0.0
    )
    escape = (
        "import os, sys, fcntl, struct\n"
        "path = sys.argv[1]\n"
        "with open(path, 'wb') as f: os.posix_fallocate(f.fileno(), 0, 4 << 20)\n"
        "fd = os.open(path, os.O_RDONLY)\n"
        "raw = fcntl.ioctl(fd, 0x801C581F, bytes(28))\n"
        "x, e, n, p, c = struct.unpack('=5I8x', raw)\n"
        "fcntl.ioctl(fd, 0x401C5820, struct.pack('=5I8x', x, e, n, 0, c))\n"
    )
    for number in range(6):
        done = as_agent("python3", "-c", escape, str(prepared.group_dir / f"hidden{number}"))
        assert done.returncode == 0, done.stderr
    counted = prepared.quotas.project_usage(
        prepared.central, Scope.GROUP, prepared.group.id, prepared.group_dir
    )
    assert counted is not None and counted.bytes < GROUP_MB * MIB  # the kernel lost 24 MiB
    report = watch.check(list(sandbox.live), T0)
    assert report.stopped == [prepared.session.id]  # the walk found them
