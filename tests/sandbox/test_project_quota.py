"""Kernel project quotas with a real container: the data folder on a loop-mounted ext4 with
project quotas, ``Sandbox.wake`` prepares the folders, and inside the container the agent's
``fallocate -l 2G`` fails at once with "Disk quota exceeded", as does ``dd`` into ``agent/``;
the sweeper reads the kernel's count and stops the container in its next pass.

Skipped, with the reason, where the kernel cannot enforce project quotas (tests/prjquota.py).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from nanoclaw_common.clock import now_ms
from nanoclaw_common.disk.limits import MIB, Scope
from nanoclaw_common.disk.quotas import Mechanism
from nanoclaw_common.paths import Layout
from nanoclaw_common.sandbox import Sandbox
from nanoclaw_common.sessions import refresh_projections
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore, rows
from nanoclaw_sweeper.sweeper import Sweeper
from tests.prjquota import project_quota_fs
from tests.sandbox.conftest import SCRIPT_FALLBACK, SLEEP, remove_install_containers

pytestmark = pytest.mark.podman

GROUP_MB = 64
SESSION_MB = 32


@dataclass
class QuotaStack:
    settings: Settings
    layout: Layout
    central: CentralStore
    box: Sandbox
    session: rows.Session


@pytest.fixture
def stack(tmp_path: Path, box_settings: Settings) -> Iterator[QuotaStack]:
    with project_quota_fs(tmp_path, size_mb=1024) as mount_point:
        settings = msgspec.structs.replace(
            box_settings,
            home=str(mount_point / "data"),
            group_disk_quota_mb=GROUP_MB,
            session_disk_quota_mb=SESSION_MB,
            disk_quota_mechanism="project",
            disk_min_free_mb=64,  # the test filesystem is small
        ).validate()
        layout = Layout(settings.home_path)
        layout.ensure()
        central = CentralStore.open(layout.central_db)
        box = Sandbox(settings, command=SLEEP)
        try:
            group = central.create_agent_group("Quota", "quota")
            central.update_container_config(group.id, provider="scripted")
            layout.group_dir(group.folder).mkdir()
            session = central.create_session(group.id, None)
            refresh_projections(central, layout, session)
            agent_dir = layout.session(group.id, session.id).agent_dir
            (agent_dir / "script.json").write_text(json.dumps(SCRIPT_FALLBACK))
            yield QuotaStack(settings, layout, central, box, session)
        finally:
            box.close()
            remove_install_containers(settings.podman_socket_url, settings.install)
            central.close()


def test_the_agent_cannot_write_past_its_quota(stack: QuotaStack) -> None:
    assert stack.box.disk.choice(Scope.GROUP).mechanism is Mechanism.PROJECT
    assert stack.box.wake(stack.session)
    code, _, err = stack.box.exec_in(stack.session.id, ["fallocate", "-l", "2G", "/workspace/big"])
    assert code != 0 and "Disk quota exceeded" in err
    code, _, err = stack.box.exec_in(
        stack.session.id,
        ["dd", "if=/dev/zero", "of=/session/agent/fill", "bs=1M", "count=200", "status=none"],
    )
    assert code != 0 and "Disk quota exceeded" in err
    filled = stack.layout.session(stack.session.agent_group_id, stack.session.id).agent_dir
    assert (filled / "fill").stat().st_blocks * 512 <= (SESSION_MB + 16) * MIB


def test_the_sweeper_stops_it_in_the_next_pass(stack: QuotaStack) -> None:
    # The next walk an hour away; liveness out of the way (the container only sleeps, it
    # never beats).
    settings = msgspec.structs.replace(
        stack.settings, disk_check_interval_s=3600.0, spawn_grace_s=3600.0
    )
    sweeper = Sweeper(settings, stack.central, stack.box)
    assert stack.box.wake(stack.session)
    sweeper.sweep(now_ms())  # walked once: under quota
    token = secrets.token_hex(4)
    code, _, err = stack.box.exec_in(
        stack.session.id,
        ["fallocate", "-l", f"{GROUP_MB + 8}M", f"/workspace/over-{token}"],
    )
    assert code == 0, err  # inside the kernel's grace
    report = sweeper.sweep(now_ms())
    assert report.disk_stopped == [stack.session.id]
    assert report.disk_blocked == [f"group:{stack.session.agent_group_id}"]
