"""Engage modes, session modes, sender policies and the command gate, through the real
ingest path (real central and session DBs)."""

from __future__ import annotations

from nanoclaw_common.messages import ChatContent, decode_inbound_content
from tests.unit.router.conftest import Harness

# -- engage modes ---------------------------------------------------------------------------


def test_mention_mode_engages_only_mentions(harness: Harness) -> None:
    group = harness.group()
    harness.wire(harness.chat_row(), group, engage_mode="mention")
    assert harness.send("no mention") == []
    assert harness.drops() == {"no_agent_engaged": 1}
    [stored] = harness.send("@bot hi", mention=True)
    assert stored.trigger and stored.result.created
    assert len(harness.waker.wakes) == 1


def test_pattern_mode_searches_the_text(harness: Harness) -> None:
    group = harness.group()
    harness.wire(harness.chat_row(), group, engage_mode="pattern", engage_pattern=r"\bdeploy\b")
    assert harness.send("let us redeploy") == []
    assert len(harness.send("please deploy now")) == 1


def test_pattern_dot_matches_everything_even_empty_text(harness: Harness) -> None:
    group = harness.group()
    harness.wire(harness.chat_row(), group, engage_mode="pattern", engage_pattern=".")
    stored = harness.send("", attachments=[{"name": "a.txt", "data": b"x"}])
    assert len(stored) == 1


def test_an_invalid_pattern_never_engages_and_is_recorded(harness: Harness) -> None:
    group = harness.group()
    harness.wire(harness.chat_row(), group, engage_mode="pattern", engage_pattern="(unclosed")
    assert harness.send("(unclosed anything") == []
    [drop] = harness.central.list_drops()
    assert drop.reason == "invalid_pattern" and drop.agent_group_id == group.id
    assert drop.detail is not None and "missing )" in drop.detail


def test_mention_sticky_keeps_engaging_after_the_first_mention_in_a_group(
    harness: Harness,
) -> None:
    group = harness.group()
    harness.wire(harness.chat_row(), group, engage_mode="mention-sticky")
    assert harness.send("before any mention") == []
    assert len(harness.send("@bot start", mention=True)) == 1
    assert len(harness.send("follow-up without mention")) == 1


def test_mention_sticky_sticks_per_thread_on_threaded_platforms(harness: Harness) -> None:
    group = harness.group()
    harness.wire(harness.chat_row(channel="threads"), group, engage_mode="mention-sticky")
    assert len(harness.send("@bot hi", channel="threads", thread="t1", mention=True)) == 1
    assert len(harness.send("more", channel="threads", thread="t1")) == 1
    assert harness.send("other thread", channel="threads", thread="t2") == []


def test_mention_sticky_does_not_stick_in_dms(harness: Harness) -> None:
    group = harness.group()
    harness.wire(harness.chat_row(is_group=False), group, engage_mode="mention-sticky")
    assert len(harness.send("hi", mention=True, group=False)) == 1
    # A DM adapter flags every message as a mention; without the flag nothing sticks.
    assert harness.send("unflagged", group=False) == []


def test_accumulate_stores_context_without_waking(harness: Harness) -> None:
    group = harness.group()
    harness.wire(
        harness.chat_row(), group, engage_mode="mention", ignored_message_policy="accumulate"
    )
    [context] = harness.send("background chatter")
    assert not context.trigger
    assert harness.waker.wakes == []
    [session] = harness.sessions(group)
    [row] = harness.rows(session)
    assert row.trigger == 0
    harness.send("@bot now answer", mention=True)
    assert harness.waker.wakes == [session.id]
    assert [r.trigger for r in harness.rows(session)] == [0, 1]


def test_context_goes_only_into_threads_the_agent_is_in(harness: Harness) -> None:
    """On a threaded platform a group's sessions are per thread; context for a thread
    without a session would open one per message (on Slack every top-level message is a
    thread of its own), so it is kept only where the agent already is."""
    group = harness.group()
    harness.wire(
        harness.chat_row(channel="threads"),
        group,
        engage_mode="mention",
        ignored_message_policy="accumulate",
    )
    assert harness.send("chatter", channel="threads", thread="t0") == []
    assert harness.sessions(group) == []
    [engaged] = harness.send("@bot go", channel="threads", thread="t1", mention=True)
    [context] = harness.send("by the way", channel="threads", thread="t1")
    assert not context.trigger and context.session.id == engaged.session.id
    assert harness.send("elsewhere", channel="threads", thread="t2") == []
    assert [s.thread_id for s in harness.sessions(group)] == ["t1"]
    assert harness.drops() == {"no_agent_engaged": 2}


def test_fan_out_follows_priority_and_gives_each_group_its_own_copy(harness: Harness) -> None:
    low, high = harness.group("Low"), harness.group("High")
    chat = harness.chat_row()
    harness.wire(chat, low, priority=1)
    harness.wire(chat, high, priority=5)
    stored = harness.send("everyone", message_id="fan")
    assert [s.session.agent_group_id for s in stored] == [high.id, low.id]
    assert {s.row_id for s in stored} == {f"fan:{high.id}", f"fan:{low.id}"}
    assert len({s.session.id for s in stored}) == 2


# -- session modes --------------------------------------------------------------------------


def test_shared_mode_is_one_session_per_group_and_chat(harness: Harness) -> None:
    group = harness.group()
    harness.wire(harness.chat_row("c1"), group, session_mode="shared")
    harness.wire(harness.chat_row("c2"), group, session_mode="shared")
    harness.send("a", chat="c1")
    harness.send("b", chat="c1")
    harness.send("c", chat="c2")
    sessions = harness.sessions(group)
    assert len(sessions) == 2
    assert sorted(len(harness.rows(s)) for s in sessions) == [1, 2]


def test_per_thread_mode_is_one_session_per_thread(harness: Harness) -> None:
    group = harness.group()
    harness.wire(harness.chat_row(channel="threads"), group, session_mode="per-thread")
    harness.send("a", channel="threads", thread="t1")
    harness.send("b", channel="threads", thread="t2")
    harness.send("c", channel="threads", thread="t1")
    sessions = harness.sessions(group)
    assert sorted(s.thread_id or "" for s in sessions) == ["t1", "t2"]


def test_threaded_platforms_make_group_sessions_per_thread(harness: Harness) -> None:
    group = harness.group()
    harness.wire(harness.chat_row(channel="threads"), group, session_mode="shared")
    harness.send("a", channel="threads", thread="t1")
    harness.send("b", channel="threads", thread="t2")
    assert len(harness.sessions(group)) == 2


def test_flat_platforms_ignore_thread_ids(harness: Harness) -> None:
    group = harness.group()
    harness.wire(harness.chat_row(), group, session_mode="per-thread")
    harness.send("a", thread="t1")
    harness.send("b", thread="t2")
    [session] = harness.sessions(group)
    assert all(r.thread_id is None for r in harness.rows(session))


def test_agent_shared_mode_is_one_session_across_chats(harness: Harness) -> None:
    group = harness.group()
    harness.wire(harness.chat_row("c1"), group, session_mode="agent-shared")
    harness.wire(harness.chat_row("c2"), group, session_mode="agent-shared")
    harness.send("from one", chat="c1", message_id="same")
    harness.send("from two", chat="c2", message_id="other")
    [session] = harness.sessions(group)
    rows = harness.rows(session)
    assert [r.platform_id for r in rows] == ["c1", "c2"]  # each keeps its reply address


# -- senders --------------------------------------------------------------------------------


def test_strict_chats_drop_strangers_and_admit_members(harness: Harness) -> None:
    group = harness.group()
    harness.wire(harness.chat_row(policy="strict"), group)
    assert harness.send("who am i", sender="chat:stranger") == []
    assert harness.drops() == {"unknown_sender_strict": 1}
    harness.user("chat:friend", member_of=group)
    assert len(harness.send("hello", sender="chat:friend")) == 1
    harness.user("chat:admin", role="admin", scope=group.id)
    assert len(harness.send("hello", sender="chat:admin")) == 1


def test_public_chats_admit_anyone_unless_the_wiring_wants_known_senders(
    harness: Harness,
) -> None:
    open_group, closed_group = harness.group("Open"), harness.group("Closed")
    chat = harness.chat_row(policy="public")
    harness.wire(chat, open_group)
    harness.wire(chat, closed_group, sender_scope="known")
    stored = harness.send("hi", sender="chat:anyone")
    assert [s.session.agent_group_id for s in stored] == [open_group.id]
    assert harness.drops() == {"sender_not_known": 1}


def test_strangers_context_is_not_accumulated(harness: Harness) -> None:
    group = harness.group()
    harness.wire(
        harness.chat_row(policy="strict"),
        group,
        engage_mode="mention",
        ignored_message_policy="accumulate",
    )
    assert harness.send("stranger chatter", sender="chat:stranger") == []
    harness.user("chat:member", member_of=group)
    assert len(harness.send("member chatter", sender="chat:member")) == 1


# -- command gate ---------------------------------------------------------------------------


def test_filtered_commands_never_reach_the_agent(harness: Harness) -> None:
    group = harness.group()
    harness.wire(harness.chat_row(), group)
    assert harness.send("/help") == []
    assert harness.send("/login now") == []
    assert harness.drops() == {"command_filtered": 2}
    assert harness.chat.sent == []


def test_admin_commands_are_denied_with_a_reply_to_others(harness: Harness) -> None:
    group = harness.group()
    harness.wire(harness.chat_row(), group)
    assert harness.send("/clear", sender="chat:someone", thread=None) == []
    assert harness.flush() == 1
    [reply] = harness.chat.of_kind("text")
    assert reply.platform_id == "c1"
    assert reply.payload == "Permission denied: /clear requires admin access."
    assert harness.drops() == {"command_denied": 1}
    # Nothing went into the session: the denial does not touch outbound.db.
    assert harness.sessions(group) == []


def test_admin_commands_pass_for_admins_and_owners(harness: Harness) -> None:
    group = harness.group()
    harness.wire(harness.chat_row(), group)
    harness.owner("chat:boss")
    assert len(harness.send("/compact", sender="chat:boss")) == 1
    harness.user("chat:ops", role="admin", scope=group.id)
    assert len(harness.send("/cost@nano_bot", sender="chat:ops")) == 1


def test_other_commands_pass_through(harness: Harness) -> None:
    group = harness.group()
    harness.wire(harness.chat_row(), group)
    [stored] = harness.send("/summarize this")
    [row] = harness.rows(stored.session)
    content = decode_inbound_content(row.content)
    assert isinstance(content, ChatContent) and content.text == "/summarize this"
