"""Every CentralStore verb, against a real central.db under tmp_path."""

from __future__ import annotations

import apsw
import pytest

from nanoclaw_common.errors import NotFound, Refused
from nanoclaw_common.store import CentralStore, rows
from nanoclaw_common.store.central import normalize_name
from nanoclaw_common.store.proxy_tokens import ProxyTokens
from tests.central_verbs import (
    add_token_usage,
    close_session,
    get_token_usage,
    is_owner,
    list_user_dms,
    remove_destination,
    rename_agent_group,
    schema_dump,
)

NOW = 1_700_000_000_000


@pytest.fixture
def group(central: CentralStore) -> rows.AgentGroup:
    return central.create_agent_group("Main", "main", now=NOW)


@pytest.fixture
def chat(central: CentralStore) -> rows.MessagingGroup:
    return central.create_messaging_group(
        "telegram", "telegram:42", name="Family Chat", is_group=True, now=NOW
    )


# -- names and schema ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Family Chat", "family-chat"),
        ("  --Weird__Name!! ", "weird-name"),
        ("../../etc/passwd", "etc-passwd"),
        ("", "unnamed"),
        ("ÜBER", "ber"),
        ("a" * 100, "a" * 64),
    ],
)
def test_normalize_name_is_a_safe_component(raw: str, expected: str) -> None:
    assert normalize_name(raw) == expected
    assert "/" not in normalize_name(raw) and ".." not in normalize_name(raw)


def test_migrate_is_idempotent_and_versioned(central: CentralStore) -> None:
    before = schema_dump(central)
    assert central.migrate() == []
    assert schema_dump(central) == before
    assert central.schema_version() >= 1


def test_wal_and_foreign_keys_are_on(central: CentralStore) -> None:
    assert central.db.scalar("PRAGMA journal_mode") == "wal"
    assert central.db.scalar("PRAGMA foreign_keys") == 1
    assert central.db.scalar("PRAGMA busy_timeout") >= 5000


def test_column_defaults_are_real(central: CentralStore, group: rows.AgentGroup) -> None:
    """Upstream quirk 12: a wiring inserted with only its required columns behaves as documented."""
    mg = central.create_messaging_group("cli", "x", now=NOW)
    central.db.execute(
        "INSERT INTO wirings (id, messaging_group_id, agent_group_id, created_at_ms)"
        " VALUES ('w1', ?, ?, ?)",
        (mg.id, group.id, NOW),
    )
    wiring = central.get_wiring("w1")
    assert wiring is not None
    assert (wiring.engage_mode, wiring.sender_scope, wiring.ignored_message_policy) == (
        "mention",
        "all",
        "drop",
    )
    assert (wiring.session_mode, wiring.priority) == ("shared", 0)
    assert mg.unknown_sender_policy == "strict"


# -- agent groups --------------------------------------------------------------------------


def test_agent_group_crud(central: CentralStore, group: rows.AgentGroup) -> None:
    assert central.get_agent_group(group.id) == group
    assert central.find_agent_group("main") == group
    assert central.find_agent_group(group.id) == group
    assert central.get_container_config(group.id) is not None
    other = central.create_agent_group("Another", "another", now=NOW)
    assert [g.name for g in central.list_agent_groups()] == ["Another", "Main"]
    rename_agent_group(central, other.id, "Zed")
    assert central.get_agent_group(other.id).name == "Zed"  # type: ignore[union-attr]
    central.delete_agent_group(other.id)
    assert central.get_agent_group(other.id) is None
    with pytest.raises(NotFound):
        central.delete_agent_group(other.id)
    with pytest.raises(NotFound):
        rename_agent_group(central, "ag-missing", "x")


@pytest.mark.parametrize("folder", ["../escape", "a/b", "Main", "global", ""])
def test_agent_group_refuses_unsafe_folders(central: CentralStore, folder: str) -> None:
    with pytest.raises(Refused):
        central.create_agent_group("x", folder)


def test_unique_folder(central: CentralStore, group: rows.AgentGroup) -> None:
    assert central.unique_folder("Main") == "main-2"
    central.create_agent_group("x", "main-2")
    assert central.unique_folder("main") == "main-3"
    assert central.unique_folder("../Research Bot") == "research-bot"
    assert central.unique_folder("global") == "global-agent"


def test_folder_unique_constraint(central: CentralStore, group: rows.AgentGroup) -> None:
    with pytest.raises(apsw.ConstraintError):
        central.create_agent_group("Other", "main")


def test_delete_group_removes_destinations_pointing_at_it(
    central: CentralStore, group: rows.AgentGroup
) -> None:
    child = central.create_agent_group("Child", "child")
    central.add_destination(group.id, "child", "agent", child.id)
    central.delete_agent_group(child.id)
    assert central.list_destinations(group.id) == []


# -- messaging groups ----------------------------------------------------------------------


def test_messaging_group_crud(central: CentralStore, chat: rows.MessagingGroup) -> None:
    assert chat.is_group == 1 and chat.unknown_sender_policy == "strict"
    again = central.create_messaging_group("telegram", "telegram:42", name="ignored")
    assert again == chat  # the (channel, platform id) pair is unique
    assert central.find_messaging_group("telegram", "telegram:42") == chat
    assert central.get_messaging_group(chat.id) == chat
    assert central.find_messaging_group("telegram", "nope") is None
    updated = central.update_messaging_group(chat.id, unknown_sender_policy="public", name="Fam")
    assert (updated.unknown_sender_policy, updated.name, updated.is_group) == ("public", "Fam", 1)
    central.set_messaging_group_denied(chat.id, NOW)
    assert central.get_messaging_group(chat.id).denied_at_ms == NOW  # type: ignore[union-attr]
    assert len(central.list_messaging_groups()) == 1
    central.delete_messaging_group(chat.id)
    assert central.list_messaging_groups() == []
    with pytest.raises(NotFound):
        central.delete_messaging_group(chat.id)
    with pytest.raises(NotFound):
        central.update_messaging_group("mg-missing", name="x")


def test_messaging_group_rejects_bad_policy(central: CentralStore) -> None:
    with pytest.raises(ValueError, match="nonsense"):
        central.create_messaging_group("cli", "y", unknown_sender_policy="nonsense")


# -- wirings -------------------------------------------------------------------------------


def test_wiring_creates_destination_and_orders_by_priority(
    central: CentralStore, group: rows.AgentGroup, chat: rows.MessagingGroup
) -> None:
    low = central.create_wiring(chat.id, group.id, engage_mode="pattern", engage_pattern=".")
    high_group = central.create_agent_group("High", "high")
    high = central.create_wiring(chat.id, high_group.id, priority=10)
    assert [w.id for w in central.list_wirings(chat.id)] == [high.id, low.id]
    assert central.get_wiring(low.id) == low
    dests = central.list_destinations(group.id)
    assert [(d.local_name, d.target_type, d.target_id) for d in dests] == [
        ("family-chat", "channel", chat.id)
    ]
    assert len(central.list_wirings()) == 2


def test_wiring_destination_name_avoids_collisions(
    central: CentralStore, group: rows.AgentGroup
) -> None:
    first = central.create_messaging_group("slack", "C1", name="General")
    second = central.create_messaging_group("telegram", "t:1", name="general")
    unnamed = central.create_messaging_group("telegram", "t:2")
    for mg in (first, second, unnamed):
        central.create_wiring(mg.id, group.id)
    names = [d.local_name for d in central.list_destinations(group.id)]
    assert names[:2] == ["general", "general-2"]
    assert names[2].startswith("telegram-")


def test_wiring_update_and_delete(
    central: CentralStore, group: rows.AgentGroup, chat: rows.MessagingGroup
) -> None:
    wiring = central.create_wiring(chat.id, group.id)
    updated = central.update_wiring(wiring.id, engage_mode="mention-sticky", priority=3)
    assert (updated.engage_mode, updated.priority) == ("mention-sticky", 3)
    with pytest.raises(Refused):
        central.update_wiring(wiring.id, id="x")
    with pytest.raises(ValueError, match="loud"):
        central.update_wiring(wiring.id, engage_mode="loud")
    central.delete_wiring(wiring.id)
    assert central.list_wirings(chat.id) == []
    with pytest.raises(NotFound):
        central.delete_wiring(wiring.id)
    with pytest.raises(NotFound):
        central.update_wiring(wiring.id, priority=1)


def test_wiring_requires_existing_ends(central: CentralStore, group: rows.AgentGroup) -> None:
    with pytest.raises(NotFound):
        central.create_wiring("mg-missing", group.id)
    mg = central.create_messaging_group("cli", "z")
    with pytest.raises(NotFound):
        central.create_wiring(mg.id, "ag-missing")
    with pytest.raises(ValueError, match="sometimes"):
        central.create_wiring(mg.id, group.id, session_mode="sometimes")


# -- users, roles, members -----------------------------------------------------------------


def test_upsert_user_keeps_name_unless_given(central: CentralStore) -> None:
    user = central.upsert_user("telegram:7", "telegram", "Ann", now=NOW)
    assert user.display_name == "Ann"
    assert central.upsert_user("telegram:7", "telegram").display_name == "Ann"
    assert central.upsert_user("telegram:7", "telegram", "Annie").display_name == "Annie"
    assert [u.id for u in central.list_users()] == ["telegram:7"]
    central.delete_user("telegram:7")
    assert central.get_user("telegram:7") is None
    with pytest.raises(NotFound):
        central.delete_user("telegram:7")


def test_roles_and_privileges(central: CentralStore, group: rows.AgentGroup) -> None:
    other = central.create_agent_group("Other", "other")
    for uid in ("u:owner", "u:global", "u:scoped", "u:member", "u:nobody"):
        central.upsert_user(uid, "u")
    assert central.grant_role("u:owner", "owner", now=NOW)
    assert not central.grant_role("u:owner", "owner")  # a global grant is unique too
    assert central.grant_role("u:global", "admin", now=NOW + 1)
    assert central.grant_role("u:scoped", "admin", group.id, now=NOW + 2)
    central.add_member("u:member", group.id)
    with pytest.raises(Refused):
        central.grant_role("u:global", "owner", group.id)
    with pytest.raises(NotFound):
        central.grant_role("u:ghost", "admin")
    assert central.owners() == ["u:owner"]
    assert is_owner(central, "u:owner") and not is_owner(central, "u:global")

    assert central.has_admin_privilege("u:owner", group.id)
    assert central.has_admin_privilege("u:global", other.id)
    assert central.has_admin_privilege("u:scoped", group.id)
    assert not central.has_admin_privilege("u:scoped", other.id)
    assert not central.has_admin_privilege("u:member", group.id)
    assert not central.has_admin_privilege(None, group.id)

    assert central.can_access_agent_group("u:member", group.id)
    assert central.can_access_agent_group("u:scoped", group.id)
    assert not central.can_access_agent_group("u:member", other.id)
    assert not central.can_access_agent_group("u:nobody", group.id)
    assert not central.can_access_agent_group(None, group.id)

    assert central.pick_approvers(group.id) == ["u:scoped", "u:global", "u:owner"]
    assert central.pick_approvers(None) == ["u:global", "u:owner"]
    assert [g.user_id for g in central.list_roles()] == ["u:owner", "u:global", "u:scoped"]
    assert [g.role for g in central.list_roles("u:scoped")] == ["admin"]

    central.revoke_role("u:scoped", "admin", group.id)
    assert not central.has_admin_privilege("u:scoped", group.id)
    with pytest.raises(NotFound):
        central.revoke_role("u:scoped", "admin", group.id)
    with pytest.raises(ValueError, match="king"):
        central.grant_role("u:nobody", "king")


def test_members(central: CentralStore, group: rows.AgentGroup) -> None:
    central.upsert_user("u:1", "u")
    assert central.add_member("u:1", group.id, now=NOW)
    assert not central.add_member("u:1", group.id)
    assert [m.user_id for m in central.list_members(group.id)] == ["u:1"]
    assert len(central.list_members()) == 1
    central.remove_member("u:1", group.id)
    assert central.list_members(group.id) == []
    with pytest.raises(NotFound):
        central.remove_member("u:1", group.id)


def test_user_dms(central: CentralStore, chat: rows.MessagingGroup) -> None:
    central.upsert_user("telegram:7", "telegram")
    assert central.get_user_dm("telegram:7", "telegram") is None
    central.set_user_dm("telegram:7", "telegram", chat.id, now=NOW)
    dm = central.get_user_dm("telegram:7", "telegram")
    assert dm is not None and dm.messaging_group_id == chat.id
    second = central.create_messaging_group("telegram", "telegram:8")
    central.set_user_dm("telegram:7", "telegram", second.id, now=NOW + 1)
    assert central.get_user_dm("telegram:7", "telegram").messaging_group_id == second.id  # type: ignore[union-attr]
    assert len(list_user_dms(central)) == 1


# -- sessions ------------------------------------------------------------------------------


def test_resolve_session_modes(
    central: CentralStore, group: rows.AgentGroup, chat: rows.MessagingGroup
) -> None:
    shared, created = central.resolve_session(group.id, chat.id, "t1", "shared", now=NOW)
    assert created and shared.thread_id is None
    again, created = central.resolve_session(group.id, chat.id, "t2", "shared")
    assert not created and again.id == shared.id

    t1, created = central.resolve_session(group.id, chat.id, "t1", "per-thread", now=NOW + 1)
    assert created and t1.thread_id == "t1" and t1.id != shared.id
    assert central.resolve_session(group.id, chat.id, "t1", "per-thread")[0].id == t1.id
    t2, created = central.resolve_session(group.id, chat.id, "t2", "per-thread", now=NOW + 2)
    assert created and t2.id != t1.id

    other_chat = central.create_messaging_group("slack", "C9")
    agent_shared, created = central.resolve_session(group.id, other_chat.id, None, "agent-shared")
    assert not created and agent_shared.id == t2.id  # the newest active session of the group

    assert central.newest_active_session(group.id).id == t2.id  # type: ignore[union-attr]
    assert central.find_active_session(group.id, chat.id, "t1").id == t1.id  # type: ignore[union-attr]
    close_session(central, t2.id)
    assert central.newest_active_session(group.id).id == t1.id  # type: ignore[union-attr]
    assert len(central.list_sessions(agent_group_id=group.id, status="active")) == 2
    assert len(central.list_sessions()) == 3


def test_agent_shared_creates_when_none(central: CentralStore, group: rows.AgentGroup) -> None:
    session, created = central.resolve_session(group.id, None, None, "agent-shared")
    assert created and session.messaging_group_id is None


def test_session_container_status(central: CentralStore, group: rows.AgentGroup) -> None:
    session = central.create_session(group.id, None, now=NOW)
    assert (session.status, session.container_status, session.run_id) == (
        "active",
        "stopped",
        None,
    )
    central.set_container_status(session.id, "starting", run_id="run-1", now=NOW + 5)
    current = central.get_session(session.id)
    assert current is not None
    assert (current.container_status, current.run_id, current.run_started_at_ms) == (
        "starting",
        "run-1",
        NOW + 5,
    )
    central.set_container_status(session.id, "stopped", now=NOW + 9)
    current = central.get_session(session.id)
    assert current is not None and current.run_id == "run-1"  # kept to attribute leftovers
    assert len(central.list_sessions(container_status="stopped")) == 1
    central.touch_session(session.id, now=NOW + 20)
    assert central.get_session(session.id).last_active_ms == NOW + 20  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        central.set_container_status("sess-missing", "running")
    with pytest.raises(ValueError, match="dancing"):
        central.set_container_status(session.id, "dancing")


# -- destinations --------------------------------------------------------------------------


def test_destinations_and_projection(
    central: CentralStore, group: rows.AgentGroup, chat: rows.MessagingGroup
) -> None:
    child = central.create_agent_group("Research Bot", "research-bot")
    central.add_destination(group.id, "family", "channel", chat.id, now=NOW)
    central.add_destination(group.id, "research", "agent", child.id, now=NOW)
    central.add_destination(group.id, "ghost", "channel", "mg-gone", now=NOW)
    assert central.has_destination(group.id, "agent", child.id)
    assert not central.has_destination(child.id, "agent", group.id)
    assert central.find_destination(group.id, "family") is not None
    assert central.unique_local_name(group.id, "Family") == "family-2"
    projection = central.resolve_destinations(group.id)
    assert projection == [
        rows.DestinationEntry("family", "Family Chat", "channel", "telegram", "telegram:42", None),
        rows.DestinationEntry("research", "Research Bot", "agent", None, None, child.id),
    ]  # "ghost" points at nothing and is left out
    with pytest.raises(Refused):
        central.add_destination(group.id, "Not Normal", "channel", chat.id)
    with pytest.raises(ValueError, match="planet"):
        central.add_destination(group.id, "x", "planet", chat.id)
    with pytest.raises(apsw.ConstraintError):
        central.add_destination(group.id, "family", "channel", chat.id)
    remove_destination(central, group.id, "ghost")
    assert len(central.list_destinations(group.id)) == 2
    assert len(central.list_destinations()) == 2
    with pytest.raises(NotFound):
        remove_destination(central, group.id, "ghost")


# -- pending questions and approvals -------------------------------------------------------


def test_pending_questions(central: CentralStore, group: rows.AgentGroup) -> None:
    session = central.create_session(group.id, None)
    question = rows.PendingQuestion(
        "q1",
        session.id,
        "out-1",
        "telegram",
        "t:1",
        None,
        None,
        "telegram:7",
        "Pick",
        "[]",
        NOW,
        NOW + 300_000,
    )
    assert central.create_pending_question(question)
    assert not central.create_pending_question(question)  # a retried delivery is harmless
    central.set_question_platform_message("q1", "555")
    stored = central.get_pending_question("q1")
    assert stored is not None and stored.platform_message_id == "555"
    assert [q.question_id for q in central.list_pending_questions()] == ["q1"]
    assert central.delete_pending_question("q1")
    assert not central.delete_pending_question("q1")


def test_pending_approvals_single_winner(central: CentralStore, group: rows.AgentGroup) -> None:
    approval = rows.PendingApproval(
        "appr-1",
        None,
        group.id,
        "appr-1",
        "install_packages",
        '{"apt":["jq"]}',
        "u:owner",
        "telegram",
        "t:1",
        None,
        "pending",
        "Install",
        "[]",
        NOW,
        NOW + 1000,
    )
    assert central.create_pending_approval(approval)
    assert not central.create_pending_approval(approval)
    central.set_approval_platform_message("appr-1", "77")
    assert central.get_pending_approval("appr-1").platform_message_id == "77"  # type: ignore[union-attr]
    assert len(central.list_pending_approvals("pending")) == 1
    assert central.set_approval_status("appr-1", "approved")
    assert not central.set_approval_status("appr-1", "expired")  # the click won; timeout loses
    assert central.list_pending_approvals("pending") == []
    assert len(central.list_pending_approvals()) == 1
    assert central.delete_pending_approval("appr-1")
    assert not central.delete_pending_approval("appr-1")


def test_sender_approvals_dedup(
    central: CentralStore, group: rows.AgentGroup, chat: rows.MessagingGroup
) -> None:
    approval = rows.PendingSenderApproval(
        "nsa-1", chat.id, group.id, "telegram:9", "Stranger", "{}", "u:owner", "", "[]", NOW
    )
    assert central.create_sender_approval(approval)
    duplicate = rows.PendingSenderApproval(
        "nsa-2", chat.id, group.id, "telegram:9", "Stranger", "{}", "u:owner", "", "[]", NOW
    )
    assert not central.create_sender_approval(duplicate)
    assert central.find_sender_approval(chat.id, "telegram:9") == approval
    assert central.get_sender_approval("nsa-1") == approval
    assert len(central.list_sender_approvals()) == 1
    assert central.delete_sender_approval("nsa-1")
    assert not central.delete_sender_approval("nsa-1")


def test_channel_approvals(
    central: CentralStore, group: rows.AgentGroup, chat: rows.MessagingGroup
) -> None:
    approval = rows.PendingChannelApproval(chat.id, group.id, "{}", "u:owner", 0, "New", "[]", NOW)
    assert central.create_channel_approval(approval)
    assert not central.create_channel_approval(approval)
    central.update_channel_approval(chat.id, awaiting_name=True, title="Name it")
    stored = central.get_channel_approval(chat.id)
    assert stored is not None and stored.awaiting_name == 1 and stored.title == "Name it"
    assert stored.options_json == "[]"
    assert len(central.list_channel_approvals()) == 1
    assert central.delete_channel_approval(chat.id)
    assert not central.delete_channel_approval(chat.id)


# -- dropped messages, configs, usage, notices ---------------------------------------------


def test_record_drop_counts_per_chat_and_reason(central: CentralStore) -> None:
    central.record_drop("telegram", "t:1", "no_agent_wired", sender_name="A", now=NOW)
    central.record_drop("telegram", "t:1", "no_agent_wired", user_id="telegram:5", now=NOW + 5)
    central.record_drop("telegram", "t:1", "unknown_sender_strict", now=NOW + 9)
    drops = central.list_drops()
    assert [(d.reason, d.message_count) for d in drops] == [
        ("unknown_sender_strict", 1),
        ("no_agent_wired", 2),
    ]
    wired = drops[1]
    assert (wired.sender_name, wired.user_id) == ("A", "telegram:5")
    assert (wired.first_seen_ms, wired.last_seen_ms) == (NOW, NOW + 5)
    assert len(central.list_drops(limit=1)) == 1


def test_container_config_update(central: CentralStore, group: rows.AgentGroup) -> None:
    config = central.update_container_config(
        group.id, model="claude-x", packages_apt='["jq"]', token_budget_daily=1000, now=NOW
    )
    assert (config.model, config.packages_apt, config.token_budget_daily) == (
        "claude-x",
        '["jq"]',
        1000,
    )
    assert config.cli_scope == "group" and config.mcp_servers == "{}"
    with pytest.raises(Refused):
        central.update_container_config(group.id, updated_at_ms=1)
    with pytest.raises(NotFound):
        central.update_container_config("ag-missing", model="m")


def test_token_usage_accumulates(central: CentralStore, group: rows.AgentGroup) -> None:
    add_token_usage(central, group.id, "2026-11-24", 100, 20)
    usage = add_token_usage(central, group.id, "2026-11-24", 5, 1)
    assert (usage.input_tokens, usage.output_tokens, usage.requests) == (105, 21, 2)
    assert get_token_usage(central, group.id, "2026-11-25") is None


def test_proxy_tokens(central: CentralStore, group: rows.AgentGroup) -> None:
    session = central.create_session(group.id, None)
    tokens = ProxyTokens(central)
    tokens.issue("h1", session.id, group.id, "run-1", bound_to="container:" + "a" * 64, now=NOW)
    found = tokens.find("h1")
    assert found is not None and (found.session_id, found.run_id) == (session.id, "run-1")
    assert found.bound_to == "container:" + "a" * 64
    tokens.issue("h2", session.id, group.id, "run-2", bound_to="container:" + "b" * 64, now=NOW)
    assert tokens.find("h1") is None  # a new run revokes the old token
    tokens.revoke(session.id)
    assert tokens.find("h2") is None


def test_claim_notice_rate_limits(central: CentralStore) -> None:
    assert central.claim_notice("failed:owner", 60_000, now=NOW)
    assert not central.claim_notice("failed:owner", 60_000, now=NOW + 59_999)
    assert central.claim_notice("other", 60_000, now=NOW + 1)
    assert central.claim_notice("failed:owner", 60_000, now=NOW + 60_000)
    assert central.db.scalar("SELECT suppressed FROM notices WHERE key = 'failed:owner'") == 0


def test_counts(central: CentralStore, group: rows.AgentGroup, chat: rows.MessagingGroup) -> None:
    central.create_wiring(chat.id, group.id)
    session = central.create_session(group.id, chat.id)
    central.set_container_status(session.id, "running")
    central.record_drop("x", "y", "z")
    counts = central.counts()
    assert (counts.agent_groups, counts.messaging_groups, counts.wirings) == (1, 1, 1)
    assert (counts.sessions, counts.active_sessions, counts.running_containers) == (1, 1, 1)
    assert (counts.dropped_messages, counts.pending_approvals, counts.users) == (1, 0, 0)


def test_write_rolls_back_on_error(central: CentralStore, group: rows.AgentGroup) -> None:
    with pytest.raises(RuntimeError), central.db.write():
        central.db.execute("UPDATE agent_groups SET name = 'changed'")
        raise RuntimeError("boom")
    assert central.get_agent_group(group.id).name == "Main"  # type: ignore[union-attr]
    assert central.db.conn.getautocommit()
