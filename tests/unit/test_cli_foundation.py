"""`nanoclaw init` and `nanoclaw status`, through click's runner with a real data folder."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from nanoclaw_cli import cli
from nanoclaw_common.store import CentralStore
from tests.central_verbs import is_owner


def run(home: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_init_is_idempotent_and_wires_the_terminal(tmp_path: Path) -> None:
    home = tmp_path / "data"
    first = json.loads(run(home, "init", "--json"))
    assert len(first["created"]) == 5
    second = json.loads(run(home, "--json", "init"))
    assert second["created"] == [] and second["agent_group"] == first["agent_group"]
    assert "already initialised" in run(home, "init")

    store = CentralStore.open(home / "central.db")
    chat = store.find_messaging_group("cli", "local")
    assert chat is not None and chat.unknown_sender_policy == "public"
    (wiring,) = store.list_wirings(chat.id)
    assert (wiring.engage_mode, wiring.engage_pattern) == ("pattern", ".")
    assert is_owner(store, "cli:local")
    assert [d.local_name for d in store.list_destinations(wiring.agent_group_id)] == ["terminal"]
    store.close()
    assert (home / "groups" / "main" / "AGENT.md").exists()


def test_status_reports_db_version_and_counts(tmp_path: Path) -> None:
    home = tmp_path / "data"
    run(home, "init")
    report = json.loads(run(home, "status", "--json"))
    assert report["database"] == str((home / "central.db").resolve())
    assert report["schema_version"] >= 1
    assert (report["agent_groups"], report["messaging_groups"], report["sessions"]) == (1, 1, 0)
    human = run(home, "status")
    assert "schema_version" in human and "agent_groups" in human


def test_status_before_init_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "none"), "status"])
    assert result.exit_code == 1
    assert "run `nanoclaw init` first" in result.output


def test_bad_settings_are_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["--home", str(tmp_path), "status"], env={"NANOCLAW_TZ": "Nowhere/Never"}
    )
    assert result.exit_code == 1
    assert "NANOCLAW_TZ='Nowhere/Never' is not an IANA time zone" in result.output


def test_status_counts_failed_and_denied_deliveries(tmp_path: Path) -> None:
    from nanoclaw_common import messages as m
    from nanoclaw_common.paths import Layout
    from nanoclaw_common.sessions import ensure_session_files
    from nanoclaw_common.store import InboundStore, NewOutbound, OutboundStore

    home = tmp_path / "data"
    run(home, "init")
    store = CentralStore.open(home / "central.db")
    group = store.find_agent_group("main")
    assert group is not None
    session = store.create_session(group.id, None)
    paths = ensure_session_files(Layout(home.resolve()), session)
    store.close()
    outbound = OutboundStore(paths.outbound_db)
    inbound = InboundStore(paths.inbound_db)
    for n, (status, error) in enumerate([("failed", "chat not found"), ("denied", "ACL")]):
        written = outbound.insert_message(NewOutbound(content=m.SendText(text=f"r{n}")))
        inbound.record_outbound(written.id, written.seq)
        inbound.finish_delivery(written.id, status, error=error)
    outbound.close()
    inbound.close()
    report = json.loads(run(home, "status", "--json"))
    assert (report["failed_deliveries"], report["denied_deliveries"]) == (1, 1)
    problems = sorted(report["recent_delivery_problems"])
    assert problems[0].endswith("#1 failed: chat not found")
    assert problems[1].endswith("#3 denied: ACL")
    assert "denied: ACL" in run(home, "status")  # the table folds long lines
