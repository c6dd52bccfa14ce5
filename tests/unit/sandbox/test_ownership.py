"""Handing the writable folders to the container user: never through a link. Runs as root
(as CI and the host programs do): chown to another uid needs it."""

from __future__ import annotations

import os
from pathlib import Path

from nanoclaw_common.sandbox.ownership import AGENT_GID, AGENT_UID, hand_over


def owner(path: Path) -> tuple[int, int]:
    info = os.lstat(path)
    return info.st_uid, info.st_gid


AGENT = (AGENT_UID, AGENT_GID)
ROOT = (0, 0)


def test_host_created_entries_are_handed_over(tmp_path: Path) -> None:
    top = tmp_path / "agent"
    (top / "outbox" / "out-1").mkdir(parents=True)
    (top / "outbound.db").write_bytes(b"db")
    (top / "outbox" / "out-1" / "file.txt").write_text("x")
    changed = hand_over(top)
    assert changed == 5
    for path in (top, top / "outbound.db", top / "outbox", top / "outbox" / "out-1"):
        assert owner(path) == AGENT
    assert owner(top / "outbox" / "out-1" / "file.txt") == AGENT
    assert hand_over(top) == 0  # idempotent


def test_links_are_never_followed(tmp_path: Path) -> None:
    top = tmp_path / "agent"
    top.mkdir()
    secret = tmp_path / "host-secret"
    secret.write_text("root only")
    outside_dir = tmp_path / "host-dir"
    outside_dir.mkdir()
    (top / "link-to-file").symlink_to(secret)
    (top / "link-to-dir").symlink_to(outside_dir)
    os.link(secret, top / "hardlink")
    hand_over(top)
    assert owner(secret) == ROOT  # neither through the symlink nor the hard link
    assert owner(outside_dir) == ROOT
    assert owner(top / "link-to-file") == ROOT  # the links themselves are left alone too
    assert owner(top) == AGENT


def test_container_made_folders_are_not_entered(tmp_path: Path) -> None:
    """Below the top, a folder the container owns is its own business (and a big workspace
    stays cheap); the top's direct children are always checked."""
    top = tmp_path / "group"
    (top / "made-by-agent").mkdir(parents=True)
    (top / "made-by-agent" / "inner").write_text("x")
    os.chown(top, *AGENT)
    os.chown(top / "made-by-agent", *AGENT)
    (top / "AGENT.md").write_text("memory")
    assert hand_over(top) == 1
    assert owner(top / "AGENT.md") == AGENT
    assert owner(top / "made-by-agent" / "inner") == ROOT


def test_special_files_are_left_alone(tmp_path: Path) -> None:
    top = tmp_path / "agent"
    top.mkdir()
    os.mkfifo(top / "fifo")
    hand_over(top)
    assert owner(top / "fifo") == ROOT
