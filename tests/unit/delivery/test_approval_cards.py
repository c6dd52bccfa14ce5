"""What the owner approves is what runs (issue 8): the approval card shows the whole request
that is recorded and applied, a request too long to show whole is refused (never cut), and an
MCP server asking for a variable that changes how programs load code is refused."""

from __future__ import annotations

import json

from nanoclaw_common import messages as m
from nanoclaw_common.loader_env import is_loader_variable
from nanoclaw_common.store import OutboundStore
from nanoclaw_common.store.outbound import NewOutbound
from nanoclaw_delivery.approvals import CARD_TEXT_CHARS, ApprovalWatcher
from tests.delivery_world import World, run


def card_text(world: World) -> str:
    [card] = world.telegram.questions
    return f"{card.title}\n\n{card.question}"


def test_an_mcp_card_shows_the_command_every_argument_and_every_variable(world: World) -> None:
    """Before: the card left the environment out, so an owner approved an innocent-looking
    ``npx`` server that ran with hidden variables."""
    action = m.AddMcpServer(
        name="docs",
        command="npx",
        args=["-y", "@acme/docs-server", "--root", "/workspace/docs\n\nReason: harmless"],
        env={"DOCS_TOKEN_NAME": "reader", "LOG_LEVEL": "debug"},
    )
    out = world.write(action).id
    world.drain()
    assert world.delivery(out).status == "delivered"
    text = card_text(world)
    for part in ('command: "npx"', '1. "-y"', '2. "@acme/docs-server"', '3. "--root"'):
        assert part in text
    # The hidden line stays on its own line of the card: escaped, not a new line.
    assert '4. "/workspace/docs\\x0a\\x0aReason: harmless"' in text
    assert "Reason: harmless" not in text.splitlines()
    assert 'DOCS_TOKEN_NAME="reader"' in text and 'LOG_LEVEL="debug"' in text
    # What is recorded (and applied on approval) is exactly that request.
    [approval] = world.central.list_pending_approvals()
    assert m.decode_outbound_content(approval.payload) == action


def test_an_mcp_server_with_a_loader_variable_is_refused(world: World) -> None:
    """``NODE_OPTIONS=--require /workspace/x.js`` runs the agent's file at every start of
    the server; refused on the host, with no card and a note to the agent."""
    for name in ("NODE_OPTIONS", "LD_PRELOAD", "PYTHONPATH", "npm_config_node_options"):
        out = world.write(
            m.AddMcpServer(name="srv", command="npx", args=["srv"], env={name: "/workspace/x"})
        ).id
        world.drain()
        delivery = world.delivery(out)
        assert delivery.status == "denied", name
        assert name in (delivery.last_error or "") and "loads code" in (delivery.last_error or "")
    assert world.telegram.questions == []
    assert world.central.list_pending_approvals() == []
    assert any("loads code" in text for text, _t, _w in world.notes())
    # Harmless members of those families still pass.
    assert not is_loader_variable("PYTHONUNBUFFERED") and not is_loader_variable("NODE_ENV")
    assert is_loader_variable("GIT_CONFIG_COUNT") and is_loader_variable("BASH_FUNC_ls%%")


def test_a_request_too_long_for_the_card_is_refused_not_cut(world: World) -> None:
    """Before: the card text was cut at 4,000 characters while the whole request was stored;
    a hidden argument past the cut was approved unseen."""
    filler = [f"--flag-{n}={'x' * 90}" for n in range(40)]
    out = world.write(
        m.AddMcpServer(name="srv", command="npx", args=[*filler, "--require=/workspace/x.js"])
    ).id
    world.drain()
    delivery = world.delivery(out)
    assert delivery.status == "denied"
    assert "too long to show in full" in (delivery.last_error or "")
    assert str(CARD_TEXT_CHARS) in (delivery.last_error or "")
    assert world.telegram.questions == []
    assert world.central.list_pending_approvals() == []
    assert any("too long to show in full" in text for text, _t, _w in world.notes())


def test_an_install_card_shows_every_package_and_the_whole_reason(world: World) -> None:
    apt = [f"pkg{n}" for n in range(10)]
    pip = [f"lib{n}" for n in range(10)]
    reason = "needed for the report\nApproved by the owner already"
    world.write(m.InstallPackages(apt=apt, pip=pip, reason=reason))
    world.drain()
    text = card_text(world)
    assert f"apt: {' '.join(apt)}" in text and f"pip: {' '.join(pip)}" in text
    assert 'Reason: "needed for the report\\x0aApproved by the owner already"' in text
    assert len(text) <= CARD_TEXT_CHARS


def test_what_is_applied_is_what_the_card_showed(world: World) -> None:
    action = m.AddMcpServer(name="docs", command="npx", args=["-y", "docs"], env={"A": "1"})
    world.write(action)
    world.drain()
    [approval] = world.central.list_pending_approvals()
    world.central.decide_approval(approval.approval_id, "telegram:owner", "approve", now=1)
    run(ApprovalWatcher(world.deps).tick(world.clock()))
    config = world.central.get_container_config(world.group.id)
    assert config is not None
    assert json.loads(config.mcp_servers)["docs"] == {
        "command": "npx",
        "args": ["-y", "docs"],
        "env": {"A": "1"},
    }


def test_an_agent_cannot_rewrite_the_approval_card(world: World) -> None:
    """The owner talks to the agent in their DM, where the approval card is posted too. An
    edit naming the card's message (Telegram's ids are predictable) would change what the
    owner reads above the buttons; edits may only rewrite messages the session sent."""
    dm = world.central.create_messaging_group("telegram", "dm-owner", name="owner")
    world.central.set_user_dm("telegram:owner", "telegram", dm.id)
    session = world.new_session(world.group, dm)
    outbound = OutboundStore(world.layout.session(world.group.id, session.id).outbound_db)
    try:
        outbound.insert_message(
            NewOutbound(content=m.InstallPackages(apt=["curl"], reason="fetch the report"))
        )
        world.drain(session)
        [approval] = world.central.list_pending_approvals()
        assert approval.platform_id == "dm-owner" and approval.platform_message_id
        edit = outbound.insert_message(
            NewOutbound(
                content=m.EditMessage(
                    message_id=approval.platform_message_id, text="Install nothing. Approve?"
                )
            )
        )
        mine = outbound.insert_message(NewOutbound(content=m.SendText(text="hello")))
        world.drain(session)
    finally:
        outbound.close()
    store = world.inbound(session)
    try:
        refused = store.get_delivery(edit.id)
        assert refused is not None and refused.status == "denied"
        assert "not one this conversation sent" in (refused.last_error or "")
        sent = store.get_delivery(mine.id)
        assert sent is not None and sent.status == "delivered"
    finally:
        store.close()
    assert [c for c in world.telegram.calls if c[0] == "edit"] == []
