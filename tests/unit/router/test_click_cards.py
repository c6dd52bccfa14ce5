"""A click counts for a host card (an install approval, a registration, an unknown-sender
approval) only when it was made on that card: in the card's chat, on the message the card was
posted as. Anything else is refused and recorded; agent questions answer under the agent's
own id."""

from __future__ import annotations

from nanoclaw_common.messages import (
    AskQuestion,
    QuestionOption,
    QuestionResponse,
    decode_inbound_content,
    encode_text,
)
from nanoclaw_common.store.rows import PendingApproval, PendingQuestion
from tests.unit.router.conftest import Harness

APPROVE_REJECT = [
    QuestionOption(label="Approve", value="approve"),
    QuestionOption(label="Reject", value="reject"),
]


def _approval(
    harness: Harness,
    *,
    channel: str = "chat",
    chat: str = "owner",
    message_id: str | None = "m5",
) -> str:
    group = harness.group("Main")
    harness.owner("chat:owner")
    harness.central.create_pending_approval(
        PendingApproval(
            approval_id="appr-1700000000000-0123456789abcdef0123456789abcdef",
            session_id=None,
            agent_group_id=group.id,
            request_id="out-1",
            action="install_packages",
            payload="{}",
            approver_user_id="chat:owner",
            channel_type=channel,
            platform_id=chat,
            platform_message_id=message_id,
            status="pending",
            title="Install Packages Request",
            options_json=encode_text(APPROVE_REJECT),
            created_at_ms=1,
            expires_at_ms=None,
        )
    )
    return "appr-1700000000000-0123456789abcdef0123456789abcdef"


def _status(harness: Harness, approval_id: str) -> str:
    found = harness.central.get_pending_approval(approval_id)
    assert found is not None
    return found.status


def test_an_approval_counts_only_a_click_on_its_card(harness: Harness) -> None:
    """The look-alike: the owner clicks "Yes" on some other message (an agent's card, a
    forwarded copy) whose button carries the approval's id. Refused and recorded; the
    click on the approval's own card counts."""
    approval_id = _approval(harness)
    elsewhere = [
        {"message_id": "m6"},  # another message in the owner's DM
        {"chat": "c1", "message_id": "m5"},  # the same message number, another chat
        {"message_id": None},  # a click naming no message, on a platform that names them
    ]
    for where in elsewhere:
        assert harness.click(approval_id, 0, user="chat:owner", **where) == "not_on_card"  # type: ignore[arg-type]
    assert _status(harness, approval_id) == "pending"
    assert harness.drops() == {"click_not_on_card": 3}
    assert harness.click(approval_id, 0, user="chat:owner", message_id="m5") == "approved"
    assert _status(harness, approval_id) == "approved"


def test_an_approval_card_not_recorded_yet_takes_no_click(harness: Harness) -> None:
    """Delivery records the card's message after the send returns; until then (or when a
    crash lost the answer) no click can be matched to it."""
    approval_id = _approval(harness, message_id=None)
    assert harness.click(approval_id, 0, user="chat:owner", message_id="m5") == "not_on_card"
    assert _status(harness, approval_id) == "pending"


def test_the_terminal_names_no_message_so_its_chat_must_match(harness: Harness) -> None:
    approval_id = _approval(harness, channel="cli", chat="local", message_id="cliout-1")
    assert (
        harness.click(approval_id, 0, user="chat:owner", channel="chat", message_id=None)
        == "not_on_card"
    )
    assert (
        harness.click(
            approval_id, 0, user="chat:owner", channel="cli", chat="local", message_id=None
        )
        == "approved"
    )


def _registration_card(harness: Harness) -> AskQuestion:
    harness.group("Main")
    harness.owner("chat:owner")
    harness.send("@bot hello", chat="newchat", mention=True)
    harness.flush()
    [sent] = harness.chat.of_kind("question")
    assert isinstance(sent.payload, AskQuestion)
    return sent.payload


def test_a_registration_counts_only_a_click_on_its_card(harness: Harness) -> None:
    card = _registration_card(harness)
    chat = harness.central.find_messaging_group("chat", "newchat")
    assert chat is not None
    # The chat's own id no longer opens anything: the card carries a random id.
    assert harness.click(chat.id, 0, user="chat:owner") == "gone"
    # The card's id on another message (a look-alike in the owner's DM) is refused…
    assert harness.click(card.question_id, 0, user="chat:owner", message_id="m99") == (
        "not_on_card"
    )
    assert harness.central.get_channel_approval(chat.id) is not None
    assert harness.drops()["click_not_on_card"] == 1
    # …and the click on the card itself connects the chat.
    assert harness.click(card.question_id, 0, user="chat:owner") == "connected"
    assert harness.central.get_channel_approval(chat.id) is None


def test_the_choose_card_of_a_registration_counts_too(harness: Harness) -> None:
    harness.group("Alpha")
    harness.group("Beta")
    harness.owner("chat:owner")
    harness.send("@bot", chat="c5", mention=True)
    harness.flush()
    [first] = harness.chat.of_kind("question")
    assert harness.click(first.payload.question_id, 0, user="chat:owner") == "choosing"
    harness.flush()
    second = harness.chat.of_kind("question")[-1]
    assert second.payload.question_id == first.payload.question_id
    # The "choose an agent" card carries the same card id; a click on its message counts.
    assert (
        harness.click(
            second.payload.question_id, 0, user="chat:owner", message_id=second.message_id
        )
        == "connected"
    )


def test_a_sender_approval_counts_only_a_click_on_its_card(harness: Harness) -> None:
    group = harness.group("Main")
    harness.owner("chat:owner")
    harness.wire(harness.chat_row(policy="request_approval"), group)
    harness.send("hi", sender="chat:newbie")
    harness.flush()
    [sent] = harness.chat.of_kind("question")
    assert harness.click(sent.payload.question_id, 0, user="chat:owner", message_id="m42") == (
        "not_on_card"
    )
    assert harness.sessions(group) == []
    assert harness.click(sent.payload.question_id, 0, user="chat:owner") == "approved"


def test_an_answer_goes_back_under_the_agents_own_id(harness: Harness) -> None:
    """Delivery keys an agent's question on the host (``aq-…``); the agent waits for a
    response carrying the id it asked with."""
    group = harness.group("Main")
    harness.wire(harness.chat_row(), group)
    [stored] = harness.send("ask me", sender="chat:asker")
    harness.central.create_pending_question(
        PendingQuestion(
            question_id="aq-0123456789abcdef0123456789abcdef",
            session_id=stored.session.id,
            message_out_id="out-1",
            channel_type="chat",
            platform_id="c1",
            thread_id=None,
            platform_message_id="m9",
            target_user_id=None,
            title="Pick",
            options_json=encode_text(APPROVE_REJECT),
            created_at_ms=1,
            expires_at_ms=None,
        ),
        agent_question_id="q-1700000000000-abcdefgh",
    )
    assert harness.click("aq-0123456789abcdef0123456789abcdef", 1, user="chat:x", chat="c1") == (
        "answered"
    )
    content = decode_inbound_content(harness.rows(stored.session)[-1].content)
    assert content == QuestionResponse(
        question_id="q-1700000000000-abcdefgh", selected_option="reject", user_id="chat:x"
    )
