"""``nanoclaw disk``, ``status`` and the quota overrides, through click's runner with a real
data folder: what applies and why, blocks and measurements, a group's own quotas, and a
cleanup run granted by the owner."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from nanoclaw_cli import cli
from nanoclaw_common.disk.limits import MIB, group_limit
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.disk import (
    BLOCK_CLEANUP,
    BLOCK_HELD,
    DiskBlock,
    DiskLedger,
    DiskUsageRow,
)

T0 = 1_700_000_000_000  # before the real clock: the grant uses it


def run(home: Path, *args: str, code: int = 0) -> str:
    result = CliRunner(env={"COLUMNS": "250"}).invoke(
        cli, ["--home", str(home), *args], catch_exceptions=False
    )
    assert result.exit_code == code, result.output
    return result.output


def held_group(home: Path) -> tuple[CentralStore, str, str]:
    run(home, "init")
    store = CentralStore.open(home / "central.db")
    group = store.find_agent_group("main")
    assert group is not None
    session = store.create_session(group.id, None, now=T0)
    DiskLedger(store).add_block(
        DiskBlock(
            scope="group",
            scope_id=group.id,
            agent_group_id=group.id,
            state=BLOCK_HELD,
            cleanup_session_id=None,
            bytes=3000 * MIB,
            entries=12,
            limit_bytes=2048 * MIB,
            limit_entries=200_000,
            reason="the group folder is over its disk quota: 2.9 GiB of 2.0 GiB allowed",
            blocked_at_ms=T0,
        )
    )
    DiskLedger(store).record_usage([DiskUsageRow("group", group.id, 3000 * MIB, 12, 1, "walk", T0)])
    return store, group.id, session.id


def test_disk_status_shows_the_mechanism_the_blocks_and_the_usage(tmp_path: Path) -> None:
    home = tmp_path / "data"
    store, group_id, _ = held_group(home)
    store.close()
    report = json.loads(run(home, "disk", "status", "--json"))
    assert [m["scope"] for m in report["mechanisms"]] == ["group", "session"]
    assert all(m["mechanism"] == "walk" and m["reason"] for m in report["mechanisms"])
    assert report["free_bytes"] > 0 and report["floor_bytes"] == 512 * MIB
    (block,) = report["blocks"]
    assert (block["scope_id"], block["state"]) == (group_id, "blocked")
    (usage,) = report["usage"]
    assert (usage["bytes"], usage["quota_bytes"], usage["method"]) == (
        3000 * MIB,
        2048 * MIB,
        "walk",
    )
    human = run(home, "disk")  # status is the default
    assert "not mounted with prjquota" in human and "2.9 GiB of 2.0 GiB allowed" in human
    status = json.loads(run(home, "status", "--json"))
    assert status["disk_quotas"]["group"].startswith("walk (")
    assert status["disk_blocks"] == [f"group:{group_id} blocked: {block['reason']}"]
    assert "(floor 512 MiB)" in status["disk_free"]


def test_a_groups_own_quotas(tmp_path: Path) -> None:
    home = tmp_path / "data"
    run(home, "init")
    shown = json.loads(run(home, "disk", "quota", "main", "--group-mb", "100", "--json"))
    assert shown["group folder quota"] == "100 MiB"
    assert shown["session folder quota"] == "512 MiB"  # the setting
    shown = json.loads(run(home, "disk", "quota", "main", "--group-mb", "0", "--json"))
    assert shown["group folder quota"] == "none"
    store = CentralStore.open(home / "central.db")
    group = store.find_agent_group("main")
    assert group is not None
    assert group_limit(Settings(), store.get_container_config(group.id)).bytes == 0
    store.close()
    shown = json.loads(run(home, "disk", "quota", "main", "--group-mb", "default", "--json"))
    assert shown["group folder quota"] == "2.0 GiB"
    assert "a number of MB" in run(home, "disk", "quota", "main", "--group-mb", "lots", code=2)


def test_the_owner_grants_a_cleanup_run(tmp_path: Path) -> None:
    home = tmp_path / "data"
    store, _, session_id = held_group(home)
    out = run(home, "disk", "cleanup", "main")
    assert session_id in out
    (block,) = DiskLedger(store).list_blocks()
    assert (block.state, block.cleanup_session_id) == (BLOCK_CLEANUP, session_id)
    assert block.notified_at_ms is None  # the sweeper writes the note that wakes it
    assert block.blocked_at_ms > T0  # the run is judged from the grant
    store.close()
    assert "is not blocked" in run(home, "disk", "cleanup", session_id, code=1)
