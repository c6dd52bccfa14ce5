"""The admin resources of the ``nanoclaw`` CLI: enough to wire a chat without SQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from nanoclaw_cli import cli
from nanoclaw_common.store import CentralStore


@pytest.fixture
def run(home: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("NANOCLAW_ENV_FILE", str(home / "no.env"))
    runner = CliRunner()

    def invoke(*args: str, ok: bool = True) -> Result:
        result = runner.invoke(cli, ["--home", str(home), *args], catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    invoke("init")
    return invoke


def as_json(result: Result) -> Any:
    return json.loads(result.output)


def test_wire_a_telegram_chat_to_a_new_group(run: Any, home: Path) -> None:
    group = as_json(run("--json", "groups", "add", "Research Team"))
    assert group["folder"] == "research-team"
    assert (home / "groups" / "research-team").is_dir()
    chat = as_json(run("--json", "chats", "add", "telegram/-1001234", "--name", "Ops"))
    assert (chat["platform_id"], chat["is_group"]) == ("-1001234", 1)
    wiring = as_json(
        run(
            "--json",
            "wirings",
            "add",
            "telegram/-1001234",
            "research-team",
            "--engage",
            "mention-sticky",
            "--senders",
            "known",
            "--ignored",
            "accumulate",
            "--sessions",
            "per-thread",
            "--priority",
            "4",
        )
    )
    assert (wiring["engage_mode"], wiring["sender_scope"]) == ("mention-sticky", "known")
    assert (wiring["ignored_message_policy"], wiring["session_mode"]) == (
        "accumulate",
        "per-thread",
    )
    assert wiring["priority"] == 4
    listed = as_json(run("--json", "wirings", "list", "--chat", "telegram/-1001234"))
    assert [w["group"] for w in listed] == ["research-team"]
    table = run("wirings", "list").output
    assert "resear" in table and "mentio" in table  # rich folds cells at 80 columns
    store = CentralStore(home / "central.db")
    try:
        # Wiring also granted the group a destination to the chat.
        assert [d.local_name for d in store.list_destinations(group["id"])] == ["ops"]
    finally:
        store.close()


def test_wiring_options_are_validated(run: Any) -> None:
    run("chats", "add", "slack/C0123", "--policy", "public")
    bad = run("wirings", "add", "slack/C0123", "main", "--pattern", "(oops", ok=False)
    assert bad.exit_code == 1 and "not a valid regular expression" in bad.output
    missing = run("wirings", "add", "slack/C0123", "main", "--engage", "pattern", ok=False)
    assert "needs --pattern" in missing.output
    wrong = run("wirings", "add", "slack/C0123", "main", "--sessions", "weird", ok=False)
    assert wrong.exit_code == 2
    unknown_chat = run("wirings", "add", "slack/C999", "main", ok=False)
    assert "no chat" in unknown_chat.output
    wiring = as_json(run("--json", "wirings", "add", "slack/C0123", "main", "--pattern", "^hi"))
    assert wiring["engage_mode"] == "pattern"
    twice = run("wirings", "add", "slack/C0123", "main", ok=False)
    assert "already wired" in twice.output
    updated = as_json(run("--json", "wirings", "update", wiring["id"], "--engage", "mention"))
    assert updated["engage_mode"] == "mention"
    run("wirings", "remove", wiring["id"])
    assert "slack/C0123" not in run("wirings", "list").output


def test_chats_update_and_remove(run: Any) -> None:
    chat = as_json(run("--json", "chats", "add", "telegram/555", "--dm"))
    assert chat["is_group"] == 0 and chat["unknown_sender_policy"] == "strict"
    updated = as_json(
        run("--json", "chats", "update", "telegram/555", "--policy", "request_approval")
    )
    assert updated["unknown_sender_policy"] == "request_approval"
    run("chats", "remove", chat["id"])
    assert "telegram/555" not in run("chats", "list").output
    assert "no chat" in run("chats", "remove", "telegram/555", ok=False).output
    assert "telegram/-1" in run("chats", "add", "telegram/-1").output
    assert run("chats", "add", "nochannel", ok=False).exit_code == 1


def test_users_roles_and_members(run: Any) -> None:
    run("users", "add", "telegram:42", "--name", "Ada")
    assert "Ada" in run("users", "list").output
    assert run("users", "add", "no-colon", ok=False).exit_code == 1
    run("roles", "add", "telegram:42", "admin", "--group", "main")
    run("roles", "add", "slack:U9", "owner")
    roles = as_json(run("--json", "roles", "list"))
    assert {(r["user_id"], r["role"]) for r in roles} >= {
        ("telegram:42", "admin"),
        ("slack:U9", "owner"),
    }
    scoped_owner = run("roles", "add", "slack:U8", "owner", "--group", "main", ok=False)
    assert "global" in scoped_owner.output
    run("roles", "remove", "telegram:42", "admin", "--group", "main")
    assert run("roles", "remove", "telegram:42", "admin", ok=False).exit_code == 1
    run("members", "add", "slack:U1", "main")
    members = as_json(run("--json", "members", "list", "--group", "main"))
    assert [m["user_id"] for m in members] == ["slack:U1"]
    run("members", "remove", "slack:U1", "main")
    assert as_json(run("--json", "members", "list")) == []
    run("users", "remove", "telegram:42")
    assert "telegram:42" not in run("users", "list").output


def test_groups_list_and_remove(run: Any) -> None:
    run("groups", "add", "Helper", "--folder", "helper")
    assert run("groups", "add", "Other", "--folder", "../x", ok=False).exit_code == 1
    groups = as_json(run("--json", "groups", "list"))
    assert [g["folder"] for g in groups] == ["helper", "main"]
    run("groups", "remove", "helper")
    assert [g["folder"] for g in as_json(run("--json", "groups", "list"))] == ["main"]


def test_dropped_list_remove_clear(run: Any, home: Path) -> None:
    store = CentralStore(home / "central.db")
    try:
        store.record_drop("telegram", "-1", "no_agent_wired", sender_name="Bob")
        store.record_drop("telegram", "-1", "no_agent_wired")
        store.record_drop("telegram", "-1", "invalid_input", detail="garbage")
        store.record_drop("slack", "C1", "command_filtered", detail="/help")
    finally:
        store.close()
    drops = as_json(run("--json", "dropped", "list"))
    counts = {(d["chat"], d["reason"]): d["message_count"] for d in drops}
    assert counts[("telegram/-1", "no_agent_wired")] == 2
    assert "command_fil" in run("dropped", "list").output
    removed = as_json(
        run("--json", "dropped", "remove", "telegram/-1", "--reason", "invalid_input")
    )
    assert removed == {"removed": 1}
    assert as_json(run("--json", "dropped", "clear")) == {"removed": 2}
    assert as_json(run("--json", "dropped", "list")) == []
