"""install_packages and add_mcp_server: validation, the approval card to the right approver's
DM, only an approver's click counts, apply on approval (config, rebuild through the podman
command line, an on_wake note and restart requests for the sweeper), reject and timeout tell
the agent."""

from __future__ import annotations

import json
import re

import pytest

from nanoclaw_common import messages as m
from nanoclaw_common.errors import RetryLater
from nanoclaw_common.sandbox.images import group_image_tag
from nanoclaw_common.states import ContainerStatus, Role
from nanoclaw_common.store.rows import (
    PendingApproval,
    PendingChannelApproval,
    PendingSenderApproval,
)
from nanoclaw_delivery.agents import stable_id
from nanoclaw_delivery.approvals import ApprovalWatcher
from tests.delivery_world import SECRET, World, run


@pytest.fixture
def approvers(world: World) -> World:
    """Scoped admin on slack, global admin on telegram, the owner on telegram; a member."""
    central = world.central
    for user in ("slack:sam", "telegram:gail", "telegram:mem"):
        central.upsert_user(user, user.split(":")[0], user.split(":")[1].title())
    central.grant_role("slack:sam", Role.ADMIN, world.group.id, now=world.clock())
    central.grant_role("telegram:gail", Role.ADMIN, now=world.clock() + 1)
    central.add_member("telegram:mem", world.group.id)
    return world


def install(world: World, **fields: object) -> str:
    action = m.InstallPackages(**fields) if fields else m.InstallPackages(apt=["jq"], pip=["rich"])  # type: ignore[arg-type]
    return world.write(action).id


def the_approval(world: World) -> PendingApproval:
    found = world.central.list_pending_approvals()
    assert len(found) == 1
    return found[0]


def click(world: World, approval_id: str, user: str, value: str) -> str:
    return world.central.decide_approval(approval_id, user, value, now=world.clock())


def tick(world: World) -> int:
    return run(ApprovalWatcher(world.deps).tick(world.clock()))


def test_card_goes_to_an_approver_on_the_same_channel(approvers: World) -> None:
    world = approvers
    out = install(world, apt=["jq"], pip=["rich"], reason="parse json")
    world.drain()
    approval = the_approval(world)
    # slack:sam is first in line but the request came from telegram: gail is preferred
    assert approval.approver_user_id == "telegram:gail"
    assert (approval.channel_type, approval.platform_id) == ("telegram", "dm-gail")
    card = world.telegram.calls[-1]
    assert card[:4] == ("question", "dm-gail", "", approval.approval_id)
    assert card[5] == "approve,reject"
    assert approval.expires_at_ms == world.clock() + 86_400_000
    assert approval.platform_message_id == "telegram-1"  # the card's message, for the router
    # Nothing about the card where the container can read it (inbound.db).
    assert world.delivery(out).platform_message_id is None
    assert world.central.get_user_dm("telegram:gail", "telegram") is not None
    assert world.delivery(out).status == "delivered"


def test_other_channel_when_nobody_on_the_same_one(approvers: World) -> None:
    world = approvers
    world.central.revoke_role("telegram:gail", Role.ADMIN)
    world.central.revoke_role("telegram:owner", Role.OWNER)
    install(world)
    world.drain()
    assert the_approval(world).approver_user_id == "slack:sam"
    assert world.adapters["slack"].calls[-1][1] == "dm-sam"


def test_click_by_a_non_approver_is_ignored_then_approval_applies(approvers: World) -> None:
    world = approvers
    install(world)
    world.drain()
    approval_id = the_approval(world).approval_id
    for outsider in ("telegram:mem", "slack:stranger"):
        assert click(world, approval_id, outsider, "approve") == "unauthorized"
    assert tick(world) == 0
    assert world.built() == []
    assert click(world, approval_id, "telegram:gail", "approve") == "approved"
    assert tick(world) == 1
    config = world.central.get_container_config(world.group.id)
    assert config is not None
    assert json.loads(config.packages_apt) == ["jq"]
    assert json.loads(config.packages_pip) == ["rich"]
    tag = group_image_tag(world.settings.image, world.group.id)
    assert world.built() == [(tag, ["jq"], ["rich"])]
    assert config.image_tag == tag
    notes = world.notes()
    assert len(notes) == 1 and "Packages installed" in notes[0][0]
    assert notes[0][1:] == (1, 1)  # on_wake: only a fresh run sees it; trigger: one is woken
    # The session is stopped: nothing to restart; the sweeper wakes it for the due note and
    # the new run starts from the new image.
    assert world.restart_requests() == []
    assert world.due() == [f"approval-{approval_id}"]
    edit = world.telegram.calls[-1]
    assert edit[0] == "edit" and "Approved by telegram:gail" in edit[4]
    assert world.central.list_pending_approvals() == []
    # applying twice merges, never duplicates
    install(world, apt=["jq", "curl"])
    world.drain()
    click(world, the_approval(world).approval_id, "telegram:owner", "approve")
    tick(world)
    config = world.central.get_container_config(world.group.id)
    assert config is not None and json.loads(config.packages_apt) == ["curl", "jq"]
    assert world.built()[-1] == (tag, ["curl", "jq"], ["rich"])


def test_approval_asks_the_sweeper_to_restart_the_groups_runs(approvers: World) -> None:
    world = approvers
    sibling = world.new_session(world.group, world.other_chat)
    idle = world.new_session(world.group, None)
    for session in (world.session, sibling):
        world.central.set_container_status(
            session.id, ContainerStatus.STARTING, run_id=f"run-{session.id}", now=world.clock()
        )
    world.central.set_container_status(sibling.id, ContainerStatus.RUNNING, now=world.clock())
    install(world)
    world.drain()
    approval_id = the_approval(world).approval_id
    click(world, approval_id, "telegram:owner", "approve")
    world.clock.advance(1_000)
    tick(world)
    # Every run of the group that predates the new image is replaced; the stopped session's
    # next run starts from it anyway.
    reason = f"approval {approval_id} (install_packages)"
    assert sorted(world.restart_requests()) == sorted(
        [(world.session.id, reason), (sibling.id, reason)]
    )
    requested = {r.requested_at_ms for r in world.central.list_restart_requests()}
    assert requested == {world.clock()}
    # Only the session that asked is told (with a note its fresh run reads).
    assert [n[0][:18] for n in world.notes()] == ["Packages installed"]
    assert world.notes(sibling) == [] and world.notes(idle) == []


def test_a_repeated_apply_after_a_crash_only_renews_the_request(approvers: World) -> None:
    world = approvers
    world.central.set_container_status(
        world.session.id, ContainerStatus.STARTING, run_id="run-1", now=world.clock()
    )
    world.write(m.AddMcpServer(name="search", command="npx"))
    world.drain()
    approval = the_approval(world)
    click(world, approval.approval_id, "telegram:owner", "approve")
    decided = world.central.get_pending_approval(approval.approval_id)
    assert decided is not None
    watcher = ApprovalWatcher(world.deps)
    run(watcher.settle(decided))
    # A crash before the row's delete: the next start applies the same decision again.
    world.clock.advance(500)
    run(watcher.settle(decided))
    assert len(world.central.list_restart_requests()) == 1
    assert world.central.list_restart_requests()[0].requested_at_ms == world.clock()
    assert len(world.notes()) == 1


def test_reject_tells_the_agent(approvers: World) -> None:
    world = approvers
    install(world)
    world.drain()
    click(world, the_approval(world).approval_id, "slack:sam", "reject")
    tick(world)
    assert world.built() == []
    assert world.notes() == [("Your install_packages request was rejected by slack:sam.", 1, 0)]
    assert world.restart_requests() == []
    assert world.central.list_pending_approvals() == []


def test_timeout_is_a_deny(approvers: World) -> None:
    world = approvers
    install(world)
    world.drain()
    approval = the_approval(world)
    assert approval.expires_at_ms is not None
    world.clock.value = approval.expires_at_ms - 1
    assert tick(world) == 0
    world.clock.value = approval.expires_at_ms
    # a click after the deadline does not count
    assert click(world, approval.approval_id, "telegram:gail", "approve") == "expired"
    assert tick(world) == 1
    assert world.built() == []
    assert "expired" in world.notes()[0][0]
    assert "Expired" in world.telegram.calls[-1][4]


def test_add_mcp_server_updates_the_config_and_restarts(approvers: World) -> None:
    world = approvers
    world.central.set_container_status(
        world.session.id, ContainerStatus.STARTING, run_id="run-1", now=world.clock()
    )
    world.write(m.AddMcpServer(name="search", command="npx", args=["-y", "srv"], env={"K": "v"}))
    world.drain()
    assert the_approval(world).action == "add_mcp_server"
    click(world, the_approval(world).approval_id, "telegram:owner", "approve")
    tick(world)
    config = world.central.get_container_config(world.group.id)
    assert config is not None
    assert json.loads(config.mcp_servers) == {
        "search": {"command": "npx", "args": ["-y", "srv"], "env": {"K": "v"}}
    }
    assert world.built() == []
    assert [r[0] for r in world.restart_requests()] == [world.session.id]
    assert 'MCP server "search" added' in world.notes()[0][0]
    assert world.notes()[0][1:] == (1, 1)


def test_build_failure_is_reported(approvers: World) -> None:
    world = approvers
    world.central.set_container_status(
        world.session.id, ContainerStatus.STARTING, run_id="run-1", now=world.clock()
    )
    world.podman.fail_with("E: Unable to locate package jq")
    install(world)
    world.drain()
    click(world, the_approval(world).approval_id, "telegram:owner", "approve")
    tick(world)
    assert world.restart_requests() == []  # the group keeps its image: nothing to restart
    assert "nothing was installed" in world.notes()[0][0]
    assert "Unable to locate package jq" in world.notes()[0][0]
    config = world.central.get_container_config(world.group.id)
    assert config is not None and config.packages_apt == "[]"


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        (m.InstallPackages(), "at least one"),
        (m.InstallPackages(apt=["rm -rf /"]), "invalid apt package"),
        (m.InstallPackages(apt=["Jq"]), "invalid apt package"),
        (m.InstallPackages(apt=["x"]), "invalid apt package"),  # the tool's rule: 2+ chars
        (m.InstallPackages(apt=["--force-yes"]), "invalid apt package"),
        (m.InstallPackages(pip=["requests; rm"]), "invalid pip package"),
        (
            m.InstallPackages(apt=[f"p{n}" for n in range(15)], pip=[f"q{n}" for n in range(6)]),
            "at most 20",
        ),
        (m.AddMcpServer(name="../x", command="npx"), "invalid server name"),
        (m.AddMcpServer(name="ok", command="  "), "empty command"),
        (m.AddMcpServer(name="ok", command="npx", env={"BAD-NAME": "x"}), "environment variable"),
    ],
)
def test_invalid_requests_are_denied(
    approvers: World, action: m.OutboundContent, reason: str
) -> None:
    world = approvers
    out = world.write(action).id
    world.drain()
    row = world.delivery(out)
    assert row.status == "denied"
    assert reason in row.last_error
    assert world.central.list_pending_approvals() == []


def test_no_approver_is_denied(world: World) -> None:
    world.central.revoke_role("telegram:owner", Role.OWNER)
    out = install(world)
    world.drain()
    assert "no owner or admin" in world.delivery(out).last_error


def test_unreachable_approvers(approvers: World) -> None:
    world = approvers
    # No adapter for anyone's channel: nothing to retry.
    adapters = dict(world.adapters)
    world.adapters.clear()
    out = install(world)
    world.drain()
    assert "no DM channel" in world.delivery(out).last_error
    # An adapter that cannot open the DM right now: retry.
    world.adapters.update(adapters)
    world.adapters["telegram"].failures = [RetryLater("down"), RetryLater("down")]
    world.adapters["slack"].connected = False
    again = install(world)
    world.drain()
    assert world.delivery(again).status == "retry"


def test_card_is_not_sent_twice_after_a_crash(approvers: World) -> None:
    world = approvers
    out = install(world)
    world.drain()
    store = world.inbound()
    store.db.execute("UPDATE deliveries SET status = 'sending' WHERE message_out_id = ?", (out,))
    store.close()
    world.drain()
    assert sum(c[0] == "question" for c in world.telegram.calls) == 1
    assert world.delivery(out).status == "delivered"


def test_a_decision_waits_for_its_interrupted_request_to_settle(approvers: World) -> None:
    """Crash rows 12 and 15 together: delivery dies after the card went out but before its
    request row was recorded ``delivered``, and the approver clicks while it is dead. The
    restarted delivery must not settle (and delete) the approval before the request row's
    re-run has found it: that re-run would then find no approval and ask again, with a
    second card (found by the chaos suite's kill pattern, and one run in six of
    ``test_an_approval_decided_while_delivery_was_dead_is_applied``)."""
    world = approvers
    out = install(world)
    world.drain()
    store = world.inbound()
    store.db.execute("UPDATE deliveries SET status = 'sending' WHERE message_out_id = ?", (out,))
    store.close()
    approval_id = the_approval(world).approval_id
    assert click(world, approval_id, "telegram:gail", "approve") == "approved"
    # The restarted delivery's watcher runs before the drain reaches the row in sending.
    assert tick(world) == 0
    assert world.built() == []
    world.drain()
    assert world.delivery(out).status == "delivered"
    assert tick(world) == 1
    assert len(world.built()) == 1
    assert sum(c[0] == "question" for c in world.telegram.calls) == 1
    assert world.central.list_pending_approvals() == []


def test_approval_for_a_vanished_session_is_dropped(approvers: World) -> None:
    world = approvers
    install(world)
    world.drain()
    click(world, the_approval(world).approval_id, "telegram:owner", "approve")
    world.central.db.execute("PRAGMA foreign_keys=OFF")
    world.central.db.execute("DELETE FROM sessions")
    world.central.db.execute("PRAGMA foreign_keys=ON")
    tick(world)
    assert world.built() == []
    assert world.central.list_pending_approvals() == []


def test_expired_questions_are_cleaned_up(world: World) -> None:
    from nanoclaw_delivery.operations import host_question_id

    world.write(
        m.AskQuestion(
            question_id="q9",
            title="t",
            question="?",
            options=[m.QuestionOption(label="x", value="x")],
            timeout_s=10,
        )
    )
    world.drain()
    key = host_question_id(world.session.id, "q9")
    assert world.central.get_pending_question(key) is not None
    world.clock.advance(10_000)
    tick(world)
    assert world.central.get_pending_question(key) is None


# -- card ids a container cannot compute or borrow ------------------------------------------


def test_approval_ids_are_random_and_kept_from_the_container(approvers: World) -> None:
    world = approvers
    outs = [install(world), install(world)]  # the same request twice
    world.drain()
    approvals = world.central.list_pending_approvals()
    assert len({a.approval_id for a in approvals}) == 2
    inbound_bytes = world.paths.inbound_db.read_bytes()
    for approval, out in zip(approvals, outs, strict=True):
        assert re.fullmatch(r"appr-\d+-[0-9a-f]{32}", approval.approval_id)
        row = world.outbound.get_message(out)
        assert row is not None
        # Not what the container could derive from its own row…
        assert approval.approval_id != stable_id(
            "appr", f"{world.session.id}:{out}", row.timestamp_ms
        )
        # …and written nowhere it can read (its session's inbound.db).
        assert approval.approval_id.encode() not in inbound_bytes
        assert (approval.platform_message_id or "").encode() not in inbound_bytes


def test_a_retried_request_keeps_its_approval(approvers: World) -> None:
    """The card's send fails after the approval row was written: the retry finds the row
    by its request and sends the card with the same id."""
    world = approvers
    world.telegram.fail_at[1] = RetryLater("502")
    out = install(world)
    world.drain()
    first = the_approval(world)
    assert first.platform_message_id is None and world.delivery(out).status == "retry"
    world.clock.advance(2_000)
    world.drain()
    again = the_approval(world)
    assert again.approval_id == first.approval_id
    assert again.platform_message_id is not None
    assert [c[3] for c in world.telegram.calls if c[0] == "question"] == [first.approval_id]


def test_an_agent_question_cannot_reuse_a_host_card_id(approvers: World) -> None:
    """The look-alike card: "Fun fact? [Yes]" carrying a pending approval's (or a sender
    approval's, or a registration's) id is refused, and the owner hears of it."""
    world = approvers
    install(world)
    world.drain()
    approval_id = the_approval(world).approval_id

    def ask(question_id: str) -> str:
        return world.write(
            m.AskQuestion(
                question_id=question_id,
                title="Fun fact?",
                question="Did you know octopuses have three hearts?",
                options=[m.QuestionOption(label="Yes", value="yes")],
            )
        ).id

    copied = ask(approval_id)
    world.drain()
    assert world.delivery(copied).status == "denied"
    stranger_chat = world.central.create_messaging_group("telegram", "300", now=world.clock())
    world.central.create_sender_approval(
        PendingSenderApproval(
            id="nsa-1-abc",
            messaging_group_id=world.home_chat.id,
            agent_group_id=world.group.id,
            sender_identity="telegram:999",
            sender_name=None,
            original_event="{}",
            approver_user_id="telegram:owner",
            title="New sender",
            options_json="[]",
            created_at_ms=world.clock(),
        )
    )
    world.central.create_channel_approval(
        PendingChannelApproval(
            messaging_group_id=stranger_chat.id,
            agent_group_id=world.group.id,
            original_event="{}",
            approver_user_id="telegram:owner",
            awaiting_name=0,
            title="New chat",
            options_json="[]",
            created_at_ms=world.clock(),
        )
    )
    card_id = world.central.channel_approval_card(stranger_chat.id)
    assert card_id is not None
    asked = [copied, *(ask(taken) for taken in ("nsa-1-abc", stranger_chat.id, card_id))]
    world.drain()
    for out in asked:
        row = world.delivery(out)
        assert row.status == "denied" and "pending approval or registration" in row.last_error
    assert [c for c in world.telegram.calls if "Fun fact?" in c] == []
    assert world.central.list_pending_questions() == []
    assert any("denied" in c[3] for c in world.telegram.calls if c[1] == "dm-owner")


# -- the leak guard over requests -----------------------------------------------------------


@pytest.mark.parametrize(
    "action",
    [
        m.InstallPackages(pip=[SECRET]),  # a valid pip name: would reach the card and the build
        m.InstallPackages(apt=[SECRET]),  # an invalid apt name: its refusal quoted it
        m.InstallPackages(apt=["jq"], reason=f"because {SECRET}"),
        m.AddMcpServer(name=SECRET, command="npx"),
        m.AddMcpServer(name="ok", command="npx", args=[f"--key={SECRET}"]),
        m.AddMcpServer(name="ok", command="npx", env={"API_KEY": SECRET}),
        m.AddMcpServer(name="ok", command="npx", env={SECRET: "x"}),
    ],
)
def test_leak_guard_covers_every_part_of_a_request(
    approvers: World, action: m.OutboundContent, log_lines: list[str]
) -> None:
    world = approvers
    out = world.write(action).id
    world.drain()
    row = world.delivery(out)
    assert row.status == "denied" and "leak guard" in row.last_error
    assert world.central.list_pending_approvals() == []
    assert [c for c in world.telegram.calls if c[0] == "question"] == []
    for call in world.telegram.calls + world.adapters["slack"].calls:
        assert SECRET not in " ".join(call)
    assert all(SECRET not in text for text, _t, _w in world.notes())
    assert all(SECRET not in line for line in log_lines)


def test_a_build_error_quoting_a_secret_is_redacted(approvers: World) -> None:
    world = approvers
    world.podman.fail_with(f"E: 401 from https://user:{SECRET}@mirror.example/debian")
    install(world)
    world.drain()
    click(world, the_approval(world).approval_id, "telegram:owner", "approve")
    tick(world)
    [(note, _t, _w)] = world.notes()
    assert "nothing was installed" in note and "[redacted secret]" in note
    assert SECRET not in note
