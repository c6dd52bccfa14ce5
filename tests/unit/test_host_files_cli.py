"""Issue 8 §1 and §7 through the CLI: ``init`` never writes through a planted ``AGENT.md``,
``groups remove`` archives the folder and a new group never reuses one on disk, the data
folder is private, ``nanoclaw chat`` saves files 0600, and quarantined sessions are listed
and released."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from click.testing import CliRunner

from nanoclaw_cli import cli
from nanoclaw_cli.chat import Terminal
from nanoclaw_common.channels import cli_protocol as wire
from nanoclaw_common.paths import Layout
from nanoclaw_common.sandbox.ownership import AGENT_GID
from nanoclaw_common.sessions import ensure_session_files
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.quarantine import Quarantine


def run(home: Path, *args: str, code: int = 0) -> str:
    """The command's output as one line (rich wraps long lines at the terminal width)."""
    result = CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output.replace("\n", "")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path, follow_symlinks=False).st_mode)


def test_init_never_writes_through_a_planted_memory_link(tmp_path: Path) -> None:
    """``scripts/run.sh`` re-runs ``init`` at every start; the agent had replaced its
    ``AGENT.md`` with a dangling link to a root cron file."""
    home = tmp_path / "data"
    run(home, "init")
    memory = home / "groups" / "main" / "AGENT.md"
    memory.unlink()
    cron = tmp_path / "cron.d"
    cron.mkdir()
    memory.symlink_to(cron / "x")
    output = run(home, "init")
    assert not (cron / "x").exists()
    assert memory.is_symlink()  # left as it is, for the operator to look at
    assert "AGENT.md is not a regular file" in output and "not written" in output
    report = json.loads(run(home, "init", "--json"))
    assert report["warnings"] == [
        "groups/main/AGENT.md is not a regular file (a symlink?); left as it is, not written"
    ]
    memory.unlink()  # the operator removes it: the next init writes a fresh one
    run(home, "init")
    assert memory.is_file() and not memory.is_symlink()


def test_groups_remove_archives_the_folder_and_no_group_reuses_it(tmp_path: Path) -> None:
    home = tmp_path / "data"
    run(home, "init")
    run(home, "groups", "add", "Helper")
    folder = home / "groups" / "helper"
    assert folder.is_dir()
    (folder / "AGENT.md").symlink_to(tmp_path / "cron-x")  # what its agent left behind
    output = run(home, "groups", "remove", "helper")
    assert "was moved to" in output and not folder.exists()
    archived = list((home / "archive" / "groups").iterdir())
    assert len(archived) == 1 and archived[0].name.startswith("helper-")
    assert (archived[0] / "AGENT.md").is_symlink()
    assert str(archived[0]) in output
    # A folder that exists on disk is never handed to a new group (an older version's).
    folder.mkdir()
    (folder / "planted").write_text("old agent's")
    created = json.loads(run(home, "groups", "add", "Helper", "--json"))
    assert created["folder"] == "helper-2"
    refused = run(home, "groups", "add", "Other", "--folder", "helper", code=1)
    assert "exists on disk" in refused


def test_init_archives_a_stale_main_folder_before_creating_main(tmp_path: Path) -> None:
    home = tmp_path / "data"
    stale = home / "groups" / "main"
    stale.mkdir(parents=True)
    (stale / "AGENT.md").symlink_to(tmp_path / "cron-x")
    output = run(home, "init")
    assert "was moved to" in output
    assert not (tmp_path / "cron-x").exists()
    assert (home / "groups" / "main" / "AGENT.md").is_file()
    assert not (home / "groups" / "main" / "AGENT.md").is_symlink()


def test_the_data_folder_is_private(tmp_path: Path) -> None:
    home = tmp_path / "data"
    run(home, "init")
    layout = Layout(home.resolve())
    for folder in (home, home / "sessions", home / "groups", home / "run", home / "logs"):
        assert mode(folder) == 0o700, folder
    assert mode(home / "central.db") == 0o600
    store = CentralStore.open(home / "central.db")
    group = store.find_agent_group("main")
    assert group is not None
    paths = ensure_session_files(layout, store.create_session(group.id, None))
    store.close()
    assert mode(paths.root.parent) == 0o700
    assert mode(paths.agent_dir) == 0o700 and mode(paths.outbound_db) == 0o600
    if os.geteuid() == 0:
        # Rootful: what the container reads is shared with its group alone (privacy.py).
        for path, wanted in ((paths.root, 0o750), (paths.inbox, 0o750), (paths.inbound_db, 0o640)):
            info = os.stat(path)
            assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (wanted, 0, AGENT_GID)
    else:
        assert mode(paths.root) == 0o700 and mode(paths.inbound_db) == 0o600
    for wal in ("central.db-wal", "central.db-shm"):
        if (home / wal).exists():
            assert mode(home / wal) == 0o600


def test_an_older_data_folder_is_tightened_at_start(tmp_path: Path) -> None:
    home = tmp_path / "data"
    run(home, "init")
    store = CentralStore.open(home / "central.db")
    group = store.find_agent_group("main")
    assert group is not None
    session = store.create_session(group.id, None)
    store.close()
    layout = Layout(home.resolve())
    paths = ensure_session_files(layout, session)
    # What older versions left: 0755 folders, 0644 databases, readable by every local user.
    for folder in (home, home / "sessions", home / "groups", paths.root):
        os.chmod(folder, 0o755)
    for file in (home / "central.db", paths.inbound_db):
        os.chmod(file, 0o644)
    run(home, "init")  # every start runs it (scripts/run.sh), as every program runs Layout.ensure
    assert mode(home) == mode(home / "sessions") == mode(home / "groups") == 0o700
    assert mode(home / "central.db") == 0o600
    ensure_session_files(layout, session)  # before every wake
    assert not mode(paths.root) & 0o007 and not mode(paths.inbound_db) & 0o007


def test_chat_saves_files_0600_and_never_over_anything(tmp_path: Path) -> None:
    save_dir = tmp_path / "downloads"
    terminal = Terminal(save_dir=save_dir, interactive=False)
    save_dir.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (save_dir / "report.txt").symlink_to(victim)
    saved = terminal._save(wire.FilePart(name="report.txt", data=b"the report"))
    assert saved != save_dir / "report.txt" and saved.read_bytes() == b"the report"
    assert mode(saved) == 0o600 and victim.read_text() == "untouched"
    again = terminal._save(wire.FilePart(name="../../etc/passwd", data=b"x"))
    assert again.parent == save_dir and mode(again) == 0o600


def test_quarantine_list_and_release(tmp_path: Path) -> None:
    home = tmp_path / "data"
    run(home, "init")
    store = CentralStore.open(home / "central.db")
    group = store.find_agent_group("main")
    assert group is not None
    session = store.create_session(group.id, None)
    quarantine = Quarantine(store)
    assert quarantine.add(session.id, program="sweeper", reason="outbound.db-journal is a FIFO")
    assert not quarantine.add(session.id, program="delivery", reason="second")  # kept once
    assert not quarantine.add("no-such-session", program="sweeper", reason="x")
    store.close()
    listed = json.loads(run(home, "quarantine", "list", "--json"))
    assert [(q["session_id"], q["program"], q["reason"]) for q in listed] == [
        (session.id, "sweeper", "outbound.db-journal is a FIFO")
    ]
    assert json.loads(run(home, "status", "--json"))["quarantined_sessions"] == 1
    assert "served again" in run(home, "quarantine", "release", session.id)
    assert json.loads(run(home, "quarantine", "list", "--json")) == []
    assert "not quarantined" in run(home, "quarantine", "release", session.id, code=1)
