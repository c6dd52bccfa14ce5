"""Registration cards, unknown-sender approvals and button clicks."""

from __future__ import annotations

import msgspec

from nanoclaw_common.channels.common import question_token
from nanoclaw_common.messages import (
    AskQuestion,
    QuestionOption,
    QuestionResponse,
    decode_inbound_content,
    encode_text,
)
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.router_outbox import RouterOutbox
from nanoclaw_common.store.rows import PendingApproval, PendingQuestion
from tests.unit.router.conftest import Harness

# -- registration ---------------------------------------------------------------------------


def _card(harness: Harness) -> AskQuestion:
    harness.flush()
    cards = harness.chat.of_kind("question")
    assert cards, "no card was sent"
    question = cards[-1].payload
    assert isinstance(question, AskQuestion)
    return question


def test_a_mention_in_an_unknown_chat_asks_the_owner(harness: Harness) -> None:
    group = harness.group("Main")
    harness.owner("chat:owner")
    assert harness.send("@bot hello", chat="newchat", mention=True, chat_name="Ops") == []
    chat = harness.central.find_messaging_group("chat", "newchat")
    assert chat is not None and chat.unknown_sender_policy == "request_approval"
    assert harness.drops() == {"no_agent_wired": 1}
    card = _card(harness)
    sent = harness.chat.of_kind("question")[-1]
    assert sent.platform_id == "owner" and sent.thread_id is None  # the owner's DM
    # The card's id is random and stored, not the chat's id (which others can learn).
    assert card.question_id != chat.id and card.question_id.startswith("regc-")
    assert harness.central.find_channel_approval_by_card(card.question_id) is not None
    assert [o.value for o in card.options] == [f"connect:{group.id}", "new_agent", "reject"]
    assert "Ops" in card.question
    # While the card is out, more mentions send nothing new.
    harness.send("@bot again?", chat="newchat", mention=True)
    harness.flush()
    assert len(harness.chat.of_kind("question")) == 1


def test_connect_wires_the_chat_adds_the_sender_and_replays(harness: Harness) -> None:
    group = harness.group("Main")
    harness.owner("chat:owner")
    harness.send("@bot please help", chat="dm7", mention=True, group=False, sender="chat:ann")
    card = _card(harness)
    assert harness.click(card.question_id, 0, user="chat:owner") == "connected"
    chat = harness.central.find_messaging_group("chat", "dm7")
    assert chat is not None
    [wiring] = harness.central.list_wirings(chat.id)
    assert (wiring.engage_mode, wiring.engage_pattern) == ("pattern", ".")  # a DM
    assert (wiring.sender_scope, wiring.ignored_message_policy) == ("known", "accumulate")
    assert harness.central.can_access_agent_group("chat:ann", group.id)
    [session] = harness.sessions(group)
    [row] = harness.rows(session)
    content = decode_inbound_content(row.content)
    assert getattr(content, "text", None) == "@bot please help"
    assert harness.central.get_channel_approval(chat.id) is None
    assert harness.waker.wakes == [session.id]
    # A re-sent click changes nothing.
    assert harness.click(card.question_id, 0, user="chat:owner") == "gone"
    assert len(harness.rows(session)) == 1


def test_connected_groups_engage_on_mentions(harness: Harness) -> None:
    harness.group("Main")
    harness.owner("chat:owner")
    harness.send("@bot", chat="grp", mention=True, group=True)
    card = _card(harness)
    harness.click(card.question_id, 0, user="chat:owner")
    chat = harness.central.find_messaging_group("chat", "grp")
    assert chat is not None
    [wiring] = harness.central.list_wirings(chat.id)
    assert wiring.engage_mode == "mention"


def test_only_an_approver_click_counts(harness: Harness) -> None:
    harness.group("Main")
    harness.owner("chat:owner")
    harness.send("@bot", chat="c9", mention=True, sender="chat:mallory")
    card = _card(harness)
    assert harness.click(card.question_id, 0, user="chat:mallory") == "unauthorized"
    chat = harness.central.find_messaging_group("chat", "c9")
    assert chat is not None and harness.central.list_wirings(chat.id) == []
    assert harness.central.get_channel_approval(chat.id) is not None


def test_reject_denies_the_chat_for_good(harness: Harness) -> None:
    harness.group("Main")
    harness.owner("chat:owner")
    harness.send("@bot", chat="spam", mention=True)
    card = _card(harness)
    assert harness.click(card.question_id, 2, user="chat:owner") == "rejected"
    chat = harness.central.find_messaging_group("chat", "spam")
    assert chat is not None and chat.denied_at_ms is not None
    harness.send("@bot again", chat="spam", mention=True)
    harness.flush()
    assert len(harness.chat.of_kind("question")) == 1
    assert harness.drops() == {"no_agent_wired": 1}


def test_choose_existing_sends_a_second_card(harness: Harness) -> None:
    harness.group("Alpha")
    beta = harness.group("Beta")
    harness.owner("chat:owner")
    harness.send("@bot", chat="c5", mention=True)
    card = _card(harness)
    assert card.options[0].value == "choose_existing"
    assert harness.click(card.question_id, 0, user="chat:owner") == "choosing"
    second = _card(harness)
    assert [o.label for o in second.options] == ["Alpha", "Beta", "Cancel"]
    assert harness.click(second.question_id, 1, user="chat:owner") == "connected"
    chat = harness.central.find_messaging_group("chat", "c5")
    assert chat is not None
    assert [w.agent_group_id for w in harness.central.list_wirings(chat.id)] == [beta.id]


def test_new_agent_waits_for_a_name_even_across_a_restart(harness: Harness) -> None:
    harness.group("Main")
    harness.owner("chat:owner")
    harness.send("@bot", chat="c6", mention=True, sender="chat:bob")
    card = _card(harness)
    assert harness.click(card.question_id, 1, user="chat:owner") == "awaiting_name"
    harness.flush()
    assert harness.chat.of_kind("text")[-1].payload == "Reply with the name for your new agent:"
    # The state is in the database, not in the router's memory.
    reopened = CentralStore(harness.layout.central_db)
    try:
        [pending] = reopened.list_channel_approvals()
        assert pending.awaiting_name == 1
    finally:
        reopened.close()
    # The owner answers in their DM.
    harness.send("  Research   Helper ", chat="owner", group=False, sender="chat:owner")
    created = harness.central.find_agent_group("research-helper")
    assert created is not None and created.name == "Research Helper"
    chat = harness.central.find_messaging_group("chat", "c6")
    assert chat is not None
    assert [w.agent_group_id for w in harness.central.list_wirings(chat.id)] == [created.id]
    assert len(harness.sessions(created)) == 1
    harness.flush()
    done = harness.chat.of_kind("text")[-1].payload
    assert done == '✅ Agent "Research Helper" created and connected.'
    assert harness.layout.group_dir(created.folder).is_dir()


# -- unknown senders ------------------------------------------------------------------------


def test_request_approval_asks_once_and_allow_replays(harness: Harness) -> None:
    group = harness.group("Main")
    harness.owner("chat:owner")
    harness.wire(harness.chat_row(policy="request_approval"), group)
    assert harness.send("let me in", sender="chat:newbie", message_id="ask1") == []
    assert harness.send("please", sender="chat:newbie") == []
    card = _card(harness)
    assert len(harness.chat.of_kind("question")) == 1
    assert card.question.startswith("newbie wants to talk to your agent")
    assert harness.click(card.question_id, 0, user="chat:newbie") == "unauthorized"
    assert harness.click(card.question_id, 0, user="chat:owner") == "approved"
    assert harness.central.can_access_agent_group("chat:newbie", group.id)
    [session] = harness.sessions(group)
    assert [r.id for r in harness.rows(session)] == [f"ask1:{group.id}"]
    assert len(harness.send("now i am in", sender="chat:newbie")) == 1


def test_a_denied_stranger_is_not_asked_about_again_for_a_week(harness: Harness) -> None:
    from nanoclaw_router.cards import SENDER_DENIAL_QUIET_MS

    group = harness.group("Main")
    harness.owner("chat:owner")
    harness.wire(harness.chat_row(policy="request_approval"), group)
    clock = {"now": 1_800_000_000_000}
    harness.router.cards.clock = harness.router.decisions.clock = lambda: clock["now"]
    harness.send("hi", sender="chat:newbie")
    card = _card(harness)
    assert harness.click(card.question_id, 1, user="chat:owner") == "rejected"
    assert not harness.central.can_access_agent_group("chat:newbie", group.id)
    assert harness.central.list_sender_approvals() == []
    # Pestering brings no new card; every message is still a recorded drop.
    clock["now"] += SENDER_DENIAL_QUIET_MS - 1
    assert harness.send("hi again", sender="chat:newbie") == []
    harness.flush()
    assert len(harness.chat.of_kind("question")) == 1
    assert harness.drops() == {"unknown_sender_request_approval": 2}
    # Another stranger in the same chat is asked about as usual.
    harness.send("hello", sender="chat:other")
    harness.flush()
    assert len(harness.chat.of_kind("question")) == 2
    # After the quiet week the denied stranger may ask once more.
    clock["now"] += 1
    harness.send("one more try", sender="chat:newbie")
    harness.flush()
    assert len(harness.chat.of_kind("question")) == 3


def test_sender_cards_are_limited_overall(harness: Harness) -> None:
    from nanoclaw_router.cards import HOUR_MS, SENDER_CARDS_PER_HOUR

    group = harness.group("Main")
    harness.owner("chat:owner")
    harness.wire(harness.chat_row(policy="request_approval"), group)
    clock = {"now": 1_800_000_000_000}
    harness.router.cards.clock = harness.router.decisions.clock = lambda: clock["now"]
    # A crowded public group: a dozen strangers speak at once.
    for n in range(SENDER_CARDS_PER_HOUR + 2):
        assert harness.send("hi", sender=f"chat:s{n}") == []
    harness.flush()
    assert len(harness.chat.of_kind("question")) == SENDER_CARDS_PER_HOUR
    assert harness.drops() == {"unknown_sender_request_approval": SENDER_CARDS_PER_HOUR + 2}
    # The two left out are asked about when they speak again after the hour.
    clock["now"] += HOUR_MS
    harness.send("hi?", sender=f"chat:s{SENDER_CARDS_PER_HOUR}")
    harness.flush()
    assert len(harness.chat.of_kind("question")) == SENDER_CARDS_PER_HOUR + 1


def test_cards_wait_for_an_unreachable_approver(harness: Harness) -> None:
    harness.group("Main")
    harness.owner("chat:owner")
    harness.chat.offline = True
    harness.send("@bot", chat="c8", mention=True)
    assert harness.flush() == 0
    [item] = RouterOutbox(harness.central).list("pending")
    assert item.attempts == 1 and item.last_error == "offline"
    harness.chat.offline = False
    # Not yet due: the backoff is honoured, nothing is lost.
    assert harness.flush() == 0
    assert RouterOutbox(harness.central).list("pending")
    future = harness.router.outbox.clock() + 10 * 60 * 1000
    harness.router.outbox.clock = lambda: future
    assert harness.flush() == 1
    assert len(harness.chat.of_kind("question")) == 1


# -- agent questions and approvals ----------------------------------------------------------


def _question(harness: Harness, question_id: str, target: str | None) -> str:
    group = harness.group("Main")
    harness.wire(harness.chat_row(), group)
    [stored] = harness.send("ask me something", sender="chat:asker")
    options = [QuestionOption(label="Yes", value="yes"), QuestionOption(label="No", value="no")]
    harness.central.create_pending_question(
        PendingQuestion(
            question_id=question_id,
            session_id=stored.session.id,
            message_out_id="out-1",
            channel_type="chat",
            platform_id="c1",
            thread_id=None,
            platform_message_id="m9",
            target_user_id=target,
            title="Pick",
            options_json=encode_text(options),
            created_at_ms=1,
            expires_at_ms=None,
        )
    )
    harness.waker.wakes.clear()
    return stored.session.id


def test_an_answer_becomes_a_question_response_row_and_wakes(harness: Harness) -> None:
    session_id = _question(harness, "q-1", "chat:asker")
    assert harness.click("q-1", 1, user="chat:other", chat="c1") == "unauthorized"
    assert harness.click("q-1", 1, user="chat:asker", chat="c1") == "answered"
    row = harness.rows(session_id)[-1]
    assert (row.id, row.kind, row.trigger) == ("qr-q-1", "system", 1)
    content = decode_inbound_content(row.content)
    assert content == QuestionResponse(
        question_id="q-1", selected_option="no", user_id="chat:asker"
    )
    assert harness.waker.wakes == [session_id]
    assert harness.central.get_pending_question("q-1") is None
    assert harness.click("q-1", 0, user="chat:asker", chat="c1") == "gone"


def test_untargeted_questions_take_answers_only_from_their_chat(harness: Harness) -> None:
    _question(harness, "q-2", None)
    assert harness.click("q-2", 0, user="chat:x", chat="elsewhere") == "unauthorized"
    assert harness.click("q-2", 0, user="chat:x", chat="c1") == "answered"


def test_long_question_ids_travel_as_tokens(harness: Harness) -> None:
    long_id = "question-" + "x" * 150
    session_id = _question(harness, long_id, None)
    token = question_token(long_id)
    assert token.startswith("#") and len(token) < 64
    assert harness.click(token, 0, user="chat:x", chat="c1") == "answered"
    content = decode_inbound_content(harness.rows(session_id)[-1].content)
    assert isinstance(content, QuestionResponse) and content.question_id == long_id


def test_a_click_with_an_option_not_on_the_card_is_ignored(harness: Harness) -> None:
    _question(harness, "q-3", None)
    assert harness.click("q-3", 7, user="chat:x", chat="c1") == "invalid"
    assert harness.central.get_pending_question("q-3") is not None


def test_approval_clicks_are_recorded_for_delivery(harness: Harness) -> None:
    group = harness.group("Main")
    harness.owner("chat:owner")
    harness.user("chat:rando")
    options = [
        QuestionOption(label="Approve", value="approve"),
        QuestionOption(label="Reject", value="reject"),
    ]
    harness.central.create_pending_approval(
        PendingApproval(
            approval_id="appr-1",
            session_id=None,
            agent_group_id=group.id,
            request_id="appr-1",
            action="install_packages",
            payload="{}",
            approver_user_id="chat:owner",
            channel_type="chat",
            platform_id="owner",
            platform_message_id="m1",  # delivery records the card's message after sending
            status="pending",
            title="Install Packages Request",
            options_json=msgspec.json.encode(options).decode(),
            created_at_ms=1,
            expires_at_ms=None,
        )
    )
    assert harness.click("appr-1", 0, user="chat:rando") == "unauthorized"
    assert harness.click("appr-1", 0, user="chat:owner") == "approved"
    approval = harness.central.get_pending_approval("appr-1")
    assert approval is not None and approval.status == "approved"
    assert harness.click("appr-1", 1, user="chat:owner") == "gone"


def test_approvals_replay_with_fresh_facts(harness: Harness) -> None:
    """Messages routed while a card was out cache facts (no wirings yet, a stranger's
    rights); the replay after the click must not use them."""
    group = harness.group("Main")
    harness.owner("chat:owner")
    harness.send("@bot first", chat="busy", mention=True, sender="chat:ann", message_id="b1")
    harness.send("chatter meanwhile", chat="busy", sender="chat:ann", message_id="b2")
    card = _card(harness)
    assert harness.click(card.question_id, 0, user="chat:owner") == "connected"
    [session] = harness.sessions(group)
    assert [r.id for r in harness.rows(session)] == [f"b1:{group.id}"]
    strict = harness.chat_row("strict-chat", policy="request_approval")
    harness.wire(strict, group, engage_mode="mention")
    harness.send(
        "@bot let me in", chat="strict-chat", sender="chat:zed", message_id="z1", mention=True
    )
    harness.send("just chatting", chat="strict-chat", sender="chat:zed", message_id="z2")
    sender_card = _card(harness)
    assert harness.click(sender_card.question_id, 0, user="chat:owner") == "approved"
    replayed = [s for s in harness.sessions(group) if s.messaging_group_id == strict.id]
    assert replayed and [r.id for r in harness.rows(replayed[0])] == [f"z1:{group.id}"]


# -- attachments kept with a pending approval -----------------------------------------------


def _saved_files(harness: Harness, session_id: str) -> dict[str, bytes]:
    from nanoclaw_common.messages import ChatContent

    found = harness.central.get_session(session_id)
    assert found is not None
    root = harness.layout.session(found.agent_group_id, found.id).root
    files: dict[str, bytes] = {}
    for row in harness.rows(session_id):
        content = decode_inbound_content(row.content)
        assert isinstance(content, ChatContent)
        for attachment in content.attachments:
            assert attachment.local_path is not None
            files[attachment.name] = (root / attachment.local_path).read_bytes()
    return files


def test_a_strangers_attachments_survive_the_approval(harness: Harness) -> None:
    group = harness.group("Main")
    harness.owner("chat:owner")
    harness.wire(harness.chat_row(policy="request_approval"), group)
    harness.send(
        "here is my report",
        sender="chat:newbie",
        message_id="att-1",
        attachments=[
            {"name": "report.pdf", "data": b"%PDF-1.7 numbers", "kind": "file"},
            {"name": "chart.png", "data": b"\x89PNG", "kind": "image", "mime_type": "image/png"},
        ],
    )
    card = _card(harness)
    assert harness.click(card.question_id, 0, user="chat:owner") == "approved"
    [session] = harness.sessions(group)
    assert _saved_files(harness, session.id) == {
        "report.pdf": b"%PDF-1.7 numbers",
        "chart.png": b"\x89PNG",
    }
    # Kept only while the approval waits: deleted with it.
    assert harness.central.held_files(sender_approval_id=card.question_id) == []


def test_a_new_chats_attachments_survive_the_registration(harness: Harness) -> None:
    group = harness.group("Main")
    harness.owner("chat:owner")
    harness.send(
        "@bot look",
        chat="dm9",
        group=False,
        mention=True,
        sender="chat:ann",
        attachments=[{"name": "photo.jpg", "data": b"\xff\xd8 jpeg", "kind": "image"}],
    )
    card = _card(harness)
    chat = harness.central.find_messaging_group("chat", "dm9")
    assert chat is not None
    assert harness.central.held_files(channel_approval_id=chat.id) != []
    assert harness.click(card.question_id, 0, user="chat:owner") == "connected"
    [session] = harness.sessions(group)
    assert _saved_files(harness, session.id) == {"photo.jpg": b"\xff\xd8 jpeg"}
    assert harness.central.held_files(channel_approval_id=chat.id) == []


def test_held_attachments_are_size_limited(harness: Harness) -> None:
    from nanoclaw_common.messages import ChatContent
    from nanoclaw_router.cards import MAX_HELD_BYTES

    group = harness.group("Main")
    harness.owner("chat:owner")
    harness.wire(harness.chat_row(policy="request_approval"), group)
    part = MAX_HELD_BYTES // 2 + 1  # two of these do not fit together
    harness.send(
        "three files",
        sender="chat:newbie",
        attachments=[
            {"name": "one.bin", "data": b"1" * part},
            {"name": "two.bin", "data": b"2" * part},
            {"name": "small.txt", "data": b"fits"},
        ],
    )
    card = _card(harness)
    held = harness.central.held_files(sender_approval_id=card.question_id)
    assert [h.name for h in held] == ["one.bin", "small.txt"]
    harness.click(card.question_id, 0, user="chat:owner")
    [session] = harness.sessions(group)
    [row] = harness.rows(session)
    content = decode_inbound_content(row.content)
    assert isinstance(content, ChatContent)
    assert [a.name for a in content.attachments] == ["one.bin", "small.txt"]
    assert "[attachments not kept while waiting for approval: two.bin]" in content.text


# -- registration rate limits ---------------------------------------------------------------


def test_registration_cards_are_rate_limited_per_chat_and_overall(harness: Harness) -> None:
    from nanoclaw_router.cards import HOUR_MS, REGISTRATION_CARDS_PER_HOUR

    harness.group("Main")
    harness.owner("chat:owner")
    clock = {"now": 1_800_000_000_000}
    harness.router.cards.clock = harness.router.decisions.clock = lambda: clock["now"]
    # Strangers open one DM after another: the owner gets the first ten cards this hour.
    for n in range(REGISTRATION_CARDS_PER_HOUR + 3):
        harness.send("hi", chat=f"dm{n}", group=False, mention=True, sender=f"chat:s{n}")
    harness.flush()
    assert len(harness.chat.of_kind("question")) == REGISTRATION_CARDS_PER_HOUR
    assert harness.drops() == {"no_agent_wired": 10, "registration_rate_limited": 3}
    # A refused chat is not kept waiting for the card it never got: an hour later its
    # next message asks, like a new chat's.
    clock["now"] += HOUR_MS
    harness.send("hello?", chat="dm11", group=False, mention=True, sender="chat:s11")
    harness.flush()
    assert len(harness.chat.of_kind("question")) == REGISTRATION_CARDS_PER_HOUR + 1
    # The same chat again after its card was answered (rejected, then the denial lifted by
    # an admin): at most one card per chat per hour.
    card = _card(harness)
    assert harness.click(card.question_id, 2, user="chat:owner") == "rejected"
    chat = harness.central.find_messaging_group("chat", "dm11")
    assert chat is not None
    harness.central.set_messaging_group_denied(chat.id, None)
    harness.router.ingest.facts.clear()
    harness.send("me again", chat="dm11", group=False, mention=True, sender="chat:s11")
    harness.flush()
    assert len(harness.chat.of_kind("question")) == REGISTRATION_CARDS_PER_HOUR + 1
    assert harness.drops()["registration_rate_limited"] == 4
