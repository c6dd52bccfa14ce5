"""create_agent (admin only, host-side) and agent-to-agent messages (ACL, return path, files,
rate limit, wake)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from nanoclaw_common import messages as m
from nanoclaw_common.states import DestinationType, Role
from nanoclaw_common.store import OutboundStore
from nanoclaw_common.store.outbound import NewOutbound
from nanoclaw_common.store.rows import AgentGroup, InboundRow, Session
from tests.delivery_world import World

# -- create_agent ---------------------------------------------------------------------------


_asked = itertools.count()


def ask_create(world: World, name: str, sender: str, **fields: object) -> str:
    asked = world.user_message(f"msg-{next(_asked)}:main", sender)
    return world.write(
        m.CreateAgent(request_id="r1", name=name, instructions="You research things."),
        in_reply_to=asked,
        **fields,
    ).id


def test_admin_creates_an_agent(world: World) -> None:
    out = ask_create(world, "Research Bot", "telegram:owner")
    world.drain()
    row = world.delivery(out)
    assert row.status == "delivered"
    child = world.central.get_agent_group(row.platform_message_id)
    assert child is not None
    assert (child.name, child.folder) == ("Research Bot", "research-bot")
    memory = world.layout.group_dir("research-bot") / "AGENT.md"
    assert "You research things." in memory.read_text()
    # destinations both ways
    mine = {d.local_name: d.target_id for d in world.central.list_destinations(world.group.id)}
    theirs = {d.local_name: d.target_id for d in world.central.list_destinations(child.id)}
    assert mine["research-bot"] == child.id
    assert theirs == {"parent": world.group.id}
    # the calling session's projection already lists it; the agent was told, with a due
    # note (the sweeper wakes a stopped session for it; delivery never wakes)
    store = world.inbound()
    names = [d.name for d in store.destinations()]
    store.close()
    assert "research-bot" in names
    assert any('message to="research-bot"' in text for text, _t, _w in world.notes())
    assert f"create-agent-{world.delivery(out).seq}" in world.due()


def test_scoped_admin_may_create(world: World) -> None:
    world.central.upsert_user("telegram:ada", "telegram")
    world.central.grant_role("telegram:ada", Role.ADMIN, world.group.id)
    out = ask_create(world, "helper", "telegram:ada")
    world.drain()
    assert world.delivery(out).status == "delivered"


def test_non_admin_create_agent_is_refused(world: World) -> None:
    world.central.upsert_user("telegram:mem", "telegram")
    world.central.add_member("telegram:mem", world.group.id)
    before = len(world.central.list_agent_groups())
    out = ask_create(world, "sneaky", "telegram:mem")
    world.drain()
    row = world.delivery(out)
    assert row.status == "denied"
    assert "admin-only" in row.last_error and "telegram:mem" in row.last_error
    assert len(world.central.list_agent_groups()) == before
    assert not (world.layout.groups_dir / "sneaky").exists()
    # the owner hears about a refused privileged action
    assert any(c[1] == "dm-owner" for c in world.telegram.calls)


def test_create_agent_without_a_person_asking_is_refused(world: World) -> None:
    no_reference = world.write(m.CreateAgent(request_id="r", name="x")).id
    world.central.upsert_user("telegram:other-admin", "telegram")
    other = world.central.create_agent_group("Other", "other")
    world.central.grant_role("telegram:other-admin", Role.ADMIN, other.id)
    wrong_scope = ask_create(world, "y", "telegram:other-admin")
    task = world.write(m.CreateAgent(request_id="r", name="z"), in_reply_to="no-such-row").id
    world.drain()
    for out in (no_reference, wrong_scope, task):
        assert world.delivery(out).status == "denied"


def test_create_agent_refuses_path_traversal(world: World) -> None:
    for name in ("../../etc", "a/b", "..", "x\\y"):
        out = ask_create(world, name, "telegram:owner")
        world.drain()
        row = world.delivery(out)
        assert row.status == "denied", name
        assert "path" in row.last_error
    assert sorted(p.name for p in world.layout.groups_dir.iterdir()) == ["main"]


def test_create_agent_name_is_normalized_and_deduplicated(world: World) -> None:
    world.central.create_agent_group("Taken", "helper")
    out = ask_create(world, "  Helper!!  ", "telegram:owner")
    world.drain()
    child = world.central.get_agent_group(world.delivery(out).platform_message_id)
    assert child is not None and child.folder == "helper-2"
    again = ask_create(world, "helper", "telegram:owner")
    world.drain()
    assert "already have a destination" in world.delivery(again).last_error


def test_create_agent_is_idempotent_after_a_crash(world: World) -> None:
    out = ask_create(world, "Solo", "telegram:owner")
    world.drain()
    store = world.inbound()
    store.db.execute("UPDATE deliveries SET status = 'sending' WHERE message_out_id = ?", (out,))
    store.close()
    world.drain()
    assert [g.folder for g in world.central.list_agent_groups()].count("solo") == 1
    assert len(world.central.list_destinations(world.group.id)) == 2  # home chat + solo
    assert sum("created" in text for text, _t, _w in world.notes()) == 1


def test_create_agent_never_reuses_a_folder_left_on_disk(world: World, tmp_path: Path) -> None:
    """Issue 8 §1: a group folder kept on disk after its group was removed held a planted
    ``AGENT.md`` symlink, and root wrote the new agent's instructions through it (to
    ``/etc/cron.d/x``: a root cron job). The new group gets a fresh folder instead."""
    cron = tmp_path / "cron.d"
    cron.mkdir()
    left = world.layout.groups_dir / "research-bot"
    left.mkdir()
    (left / "AGENT.md").symlink_to(cron / "x")  # dangling: writing through it creates x
    out = ask_create(world, "Research Bot", "telegram:owner")
    world.drain()
    child = world.central.get_agent_group(world.delivery(out).platform_message_id)
    assert child is not None and child.folder == "research-bot-2"
    assert not (cron / "x").exists()
    assert (left / "AGENT.md").is_symlink()  # the old folder is left as it was
    memory = world.layout.group_dir("research-bot-2") / "AGENT.md"
    assert not memory.is_symlink() and "You research things." in memory.read_text()


def test_a_retried_create_agent_never_writes_through_a_planted_memory(
    world: World, tmp_path: Path
) -> None:
    """Between a crash and the re-run, the new agent's container replaced its AGENT.md with a
    link: the re-run creates AGENT.md only if the name is free (O_EXCL), so nothing is
    written through it."""
    out = ask_create(world, "Solo", "telegram:owner")
    world.drain()
    memory = world.layout.group_dir("solo") / "AGENT.md"
    memory.unlink()
    target = tmp_path / "cron-x"
    memory.symlink_to(target)
    store = world.inbound()
    store.db.execute("UPDATE deliveries SET status = 'sending' WHERE message_out_id = ?", (out,))
    store.close()
    world.drain()
    assert world.delivery(out).status == "delivered"
    assert not target.exists() and memory.is_symlink()


# -- agent-to-agent -------------------------------------------------------------------------


def peer(world: World, *, grant: bool = True) -> AgentGroup:
    other = world.central.create_agent_group("Peer", "peer")
    if grant:
        world.central.add_destination(world.group.id, "peer", DestinationType.AGENT, other.id)
    return other


def to_agent(world: World, target: AgentGroup, text: str, **fields: object) -> str:
    return world.write(
        m.SendText(text=text, **fields),  # type: ignore[arg-type]
        channel_type="agent",
        platform_id=target.id,
    ).id


def inbound_rows(world: World, session: Session) -> list[InboundRow]:
    store = world.inbound(session)
    try:
        return list(store.list_messages())
    finally:
        store.close()


def test_agent_message_lands_in_the_target_with_a_return_path(world: World) -> None:
    other = peer(world)
    out = to_agent(world, other, "can you check?")
    world.drain()
    row = world.delivery(out)
    assert row.status == "delivered"
    target = world.central.newest_active_session(other.id)
    assert target is not None
    landed = inbound_rows(world, target)
    assert len(landed) == 1
    first = landed[0]
    assert first.id == row.platform_message_id
    assert (first.channel_type, first.platform_id) == ("agent", world.group.id)
    assert first.source_session_id == world.session.id
    content = m.decode_inbound_content(first.content)
    assert content == m.ChatContent(
        text="can you check?", sender_id=f"agent:{world.group.id}", sender_name="Main"
    )
    # a due trigger row: the target's runner takes it, or the sweeper wakes the target for it
    assert world.due(target) == [first.id]


def test_reply_returns_to_the_session_that_asked(world: World) -> None:
    other = peer(world)
    world.central.add_destination(other.id, "parent", DestinationType.AGENT, world.group.id)
    asker_b = world.new_session(world.group, None)  # a second session of the same group
    to_agent(world, other, "question from the first session")
    world.drain()
    target = world.central.newest_active_session(other.id)
    assert target is not None
    asked = inbound_rows(world, target)[0]
    # the peer answers the row it received
    store = OutboundStore(world.layout.session(other.id, target.id).outbound_db)
    reply = store.insert_message(
        NewOutbound(
            content=m.SendText(text="answer"),
            channel_type="agent",
            platform_id=world.group.id,
            in_reply_to=asked.id,
        )
    )
    store.close()
    world.drain(target)
    answers = [r for r in inbound_rows(world, world.session) if r.channel_type == "agent"]
    assert [m.decode_inbound_content(r.content).text for r in answers] == ["answer"]  # type: ignore[union-attr]
    assert inbound_rows(world, asker_b) == []
    assert reply.seq == 1


def test_agent_message_without_a_destination_is_denied(world: World) -> None:
    other = peer(world, grant=False)
    out = to_agent(world, other, "hello?")
    missing = world.write(m.SendText(text="x"), channel_type="agent", platform_id="ag-none")
    world.drain()
    assert "no destination grants" in world.delivery(out).last_error
    assert world.delivery(missing.id).status == "denied"
    assert world.central.newest_active_session(other.id) is None


def test_self_message_needs_no_destination(world: World) -> None:
    out = to_agent(world, world.group, "note to self")
    world.drain()
    assert world.delivery(out).status == "delivered"


def test_agent_files_are_forwarded_safely(world: World) -> None:
    other = peer(world)
    out = to_agent(world, other, "the report", files=["r.txt"])
    folder = world.paths.outbox / out
    folder.mkdir(parents=True)
    (folder / "r.txt").write_text("numbers")
    world.drain()
    target = world.central.newest_active_session(other.id)
    assert target is not None
    row = inbound_rows(world, target)[0]
    content = m.decode_inbound_content(row.content)
    assert isinstance(content, m.ChatContent)
    attachment = content.attachments[0]
    saved = world.layout.session(other.id, target.id).root / (attachment.local_path or "")
    assert saved.read_text() == "numbers"
    assert not folder.exists()
    # a symlink in the outbox refuses the row and forwards nothing
    bad = to_agent(world, other, "again", files=["s"])
    (world.paths.outbox / bad).mkdir(parents=True)
    os.symlink(world.paths.inbound_db, world.paths.outbox / bad / "s")
    world.drain()
    assert world.delivery(bad).status == "denied"
    assert len(inbound_rows(world, target)) == 1


def test_agent_pair_rate_limit(world: World) -> None:
    other = peer(world)
    outs = [to_agent(world, other, f"ping {n}") for n in range(22)]
    world.drain()
    statuses = [world.delivery(o).status for o in outs]
    assert statuses.count("delivered") == 20
    assert statuses[20:] == ["denied", "denied"]
    assert "rate limit" in world.delivery(outs[-1]).last_error
    world.clock.advance(60_001)
    late = to_agent(world, other, "after a minute")
    world.drain()
    assert world.delivery(late).status == "delivered"


def test_only_text_and_cards_go_to_agents(world: World) -> None:
    other = peer(world)
    out = world.write(
        m.AddReaction(message_id="x", emoji="👍"), channel_type="agent", platform_id=other.id
    ).id
    card = world.write(
        m.SendCard(card=m.Card(title="Status", description="green")),
        channel_type="agent",
        platform_id=other.id,
    ).id
    world.drain()
    assert world.delivery(out).status == "denied"
    assert world.delivery(card).status == "delivered"


def test_agent_message_is_not_duplicated_after_a_crash(world: World) -> None:
    other = peer(world)
    out = to_agent(world, other, "once")
    world.drain()
    store = world.inbound()
    store.db.execute("UPDATE deliveries SET status = 'sending' WHERE message_out_id = ?", (out,))
    store.close()
    world.drain()
    target = world.central.newest_active_session(other.id)
    assert target is not None
    assert len(inbound_rows(world, target)) == 1
    assert world.delivery(out).status == "delivered"
    assert world.due(target) == [f"a2a-{world.session.id}-{world.delivery(out).seq}"]


def test_create_agent_refused_when_a_member_spoke_in_the_same_batch(world: World) -> None:
    world.central.upsert_user("telegram:mem", "telegram")
    world.central.add_member("telegram:mem", world.group.id)
    first = world.user_message("b1:main", "telegram:owner", "let's make a helper")
    world.user_message("b2:main", "telegram:mem", "yes, and give it my instructions")
    out = world.write(m.CreateAgent(request_id="r", name="helper"), in_reply_to=first).id
    world.drain()
    row = world.delivery(out)
    assert row.status == "denied" and "telegram:mem" in row.last_error


def test_create_agent_batch_of_admins_and_notes_is_allowed(world: World) -> None:
    world.central.upsert_user("telegram:ada", "telegram")
    world.central.grant_role("telegram:ada", Role.ADMIN)
    first = world.user_message("c1:main", "telegram:owner", "make a helper")
    world.user_message("c2:main", "telegram:ada", "agreed")
    from nanoclaw_common.messages import system_note
    from nanoclaw_common.store import NewInbound

    store = world.inbound()
    store.insert_message(
        NewInbound(id="note-x", content=system_note("fyi"), timestamp_ms=world.clock())
    )
    store.close()
    out = world.write(m.CreateAgent(request_id="r", name="helper"), in_reply_to=first).id
    world.drain()
    assert world.delivery(out).status == "delivered"
    assert "asked by telegram:ada" in world.notes()[-1][0]


def test_create_agent_prompted_by_another_agent_is_refused(world: World) -> None:
    first = world.user_message("d1:main", "telegram:owner", "ask the peer")
    world.user_message("d2:main", "agent:ag-other", "please create an agent for me")
    out = world.write(m.CreateAgent(request_id="r", name="x"), in_reply_to=first).id
    world.drain()
    assert "agent:ag-other" in world.delivery(out).last_error


def test_a_retried_agent_message_counts_once_against_the_pair_limit(world: World) -> None:
    """20 messages go through; each is then found in ``sending`` again (its attempt was cut
    short after the limiter let it through, e.g. by a crash or a failed insert). The
    re-runs are the same messages: they must not use up the pair's budget and refuse
    themselves."""
    other = peer(world)
    outs = [to_agent(world, other, f"ping {n}") for n in range(20)]
    world.drain()
    assert {world.delivery(o).status for o in outs} == {"delivered"}
    store = world.inbound()
    store.db.execute("UPDATE deliveries SET status = 'sending'")
    store.close()
    world.drain()
    assert {world.delivery(o).status for o in outs} == {"delivered"}
    assert {world.delivery(o).attempts for o in outs} == {2}
    # The budget still counts new messages: the 21st inside the minute is refused.
    late = to_agent(world, other, "one too many")
    world.drain()
    assert world.delivery(late).status == "denied"


def test_create_agent_with_a_chosen_seq_between_an_owners_and_a_members_message(
    world: World,
) -> None:
    """Issue 8: the batch ended at the row's own seq, which the container chooses. With seq
    3 between the owner's message (2) and a member's (4), only the owner's counted and an
    agent was created on the member's behalf. The batch now ends where the host says: every
    message recorded before delivery first saw the request."""
    world.central.upsert_user("telegram:mem", "telegram")
    world.central.add_member("telegram:mem", world.group.id)
    owner = world.user_message("m-owner:main", "telegram:owner", "hello")
    world.user_message("m-member:main", "telegram:mem", "create an agent called helper")
    before = len(world.central.list_agent_groups())
    world.outbound.db.execute(
        "INSERT INTO messages_out (id, seq, in_reply_to, timestamp_ms, kind, content)"
        " VALUES ('forged', 3, ?, ?, 'system', ?)",
        (owner, world.clock(), m.encode_text(m.CreateAgent(request_id="r", name="helper"))),
    )
    world.drain()
    row = world.delivery("forged")
    assert row.status == "denied"
    assert "telegram:mem" in (row.last_error or "")
    assert len(world.central.list_agent_groups()) == before
    assert any(c[1] == "dm-owner" for c in world.telegram.calls)  # the owner is told


def test_create_agent_range_counts_tasks_and_webhooks_as_not_admins(world: World) -> None:
    """Every row from the cited message to the host's end must be an admin's message or a
    host note: a webhook (or a task) beside the owner's message could carry the request."""
    from nanoclaw_common.store import NewInbound

    asked = world.user_message("m-own:main", "telegram:owner", "hi")
    store = world.inbound()
    store.insert_message(
        NewInbound(
            id="wh-x-1:main",
            content=m.WebhookContent(source="x", event="push", payload={"a": "create one"}),
            timestamp_ms=world.clock(),
        ),
        now=world.clock(),
    )
    store.close()
    out = world.write(m.CreateAgent(request_id="r", name="hooked"), in_reply_to=asked).id
    world.drain()
    row = world.delivery(out)
    assert row.status == "denied" and "webhook row" in (row.last_error or "")
