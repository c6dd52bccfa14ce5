"""Telegram: python-telegram-bot against the fake Bot API, both halves."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from nanoclaw_common.channels.base import INVALID_INPUT, OutgoingFile
from nanoclaw_common.channels.common import button_data
from nanoclaw_common.channels.telegram import TelegramAdapter
from nanoclaw_common.errors import PermanentFailure, RetryLater
from nanoclaw_common.messages import (
    ActionEvent,
    AskQuestion,
    ChatContent,
    InboundEvent,
    QuestionOption,
    decode_inbound_content,
    encode_text,
)
from nanoclaw_common.store.rows import PendingQuestion
from nanoclaw_router.app import Router
from tests.fakes.telegram_api import BOT_ID, FakeTelegram
from tests.integration.channels.conftest import Delays, FlakySink, Live
from tests.waiting import wait_until_async


def adapter(fake: FakeTelegram) -> TelegramAdapter:
    return TelegramAdapter(fake.token, fake.base_url, poll_timeout_s=1)


def text_of(row: object) -> str:
    content = decode_inbound_content(row.content)  # type: ignore[attr-defined]
    assert isinstance(content, ChatContent)
    return content.text


# -- inbound ------------------------------------------------------------------------------


def test_dms_groups_mentions_and_replies(live: Live, telegram: FakeTelegram) -> None:
    group = live.group()
    live.wire("telegram", "42", group, is_group=False)
    live.wire("telegram", "-100", group, engage_mode="mention")

    async def scenario(router: Router) -> None:
        telegram.push_message(42, "a direct message")
        telegram.push_message(-100, "chatter nobody asked for")
        telegram.push_message(
            -100,
            "👋 @nano_bot can you help",
            entities=[{"type": "mention", "offset": 3, "length": 9}],
        )
        telegram.push_message(
            -100,
            "replying to you",
            reply_to={
                "message_id": 9,
                "date": 1,
                "chat": {"id": -100, "type": "supergroup"},
                "from": {"id": BOT_ID, "is_bot": True, "first_name": "Nano"},
                "text": "an earlier answer",
            },
        )
        await wait_until_async(lambda: len(live.rows()) == 3, timeout_s=10.0, what="three rows")
        await wait_until_async(
            lambda: telegram.pending_updates() == 0, timeout_s=10.0, what="offsets confirmed"
        )

    live.run({"telegram": adapter(telegram)}, scenario)
    texts = sorted(text_of(r) for r in live.rows())
    assert texts == ["a direct message", "replying to you", "👋 @nano_bot can you help"]
    reply = next(r for r in live.rows() if text_of(r) == "replying to you")
    content = decode_inbound_content(reply.content)
    assert isinstance(content, ChatContent) and content.reply_to is not None
    assert content.reply_to.text == "an earlier answer"
    drops = {d.reason: d.message_count for d in live.central.list_drops()}
    assert drops == {"no_agent_engaged": 1}


def test_a_command_after_a_mention_is_still_a_command(live: Live, telegram: FakeTelegram) -> None:
    """``@nano_bot /clear`` is the command ``/clear`` (denied to a non-admin); ordinary
    text after the mention is kept whole."""
    group = live.group()
    live.wire("telegram", "-100", group, engage_mode="mention")
    mention = [{"type": "mention", "offset": 0, "length": 9}]

    async def scenario(router: Router) -> None:
        telegram.push_message(-100, "@Nano_Bot /clear", entities=mention)
        telegram.push_message(-100, "@nano_bot what does /clear do?", entities=mention)
        await wait_until_async(
            lambda: len(live.rows()) == 1, timeout_s=10.0, what="the question's row"
        )
        await wait_until_async(
            lambda: telegram.pending_updates() == 0, timeout_s=10.0, what="offsets confirmed"
        )
        await wait_until_async(
            lambda: telegram.sent("sendMessage"), timeout_s=10.0, what="the denial"
        )

    live.run({"telegram": adapter(telegram)}, scenario)
    assert [text_of(r) for r in live.rows()] == ["@nano_bot what does /clear do?"]
    drops = {d.reason: d.message_count for d in live.central.list_drops()}
    assert drops == {"command_denied": 1}
    [denial] = telegram.sent("sendMessage")
    assert "Permission denied: /clear" in denial.params["text"]


def test_forum_topics_are_threads(live: Live, telegram: FakeTelegram) -> None:
    group = live.group()
    live.wire("telegram", "-200", group, session_mode="per-thread")

    async def scenario(router: Router) -> None:
        telegram.push_message(-200, "in topic 5", thread_id=5)
        telegram.push_message(-200, "in topic 7", thread_id=7)
        telegram.push_message(-200, "topic 5 again", thread_id=5)
        await wait_until_async(lambda: len(live.rows()) == 3, timeout_s=10.0, what="3 inbound rows")

    live.run({"telegram": adapter(telegram)}, scenario)
    sessions = live.sessions()
    assert sorted(s.thread_id or "" for s in sessions) == ["5", "7"]
    for session in sessions:
        for row in live.rows(session):
            assert row.thread_id == session.thread_id


def test_photos_and_documents_are_saved_to_the_inbox(live: Live, telegram: FakeTelegram) -> None:
    group = live.group()
    live.wire("telegram", "42", group, is_group=False)
    telegram.add_file("ph-big", b"\xff\xd8" + b"p" * 100)
    telegram.add_file("doc-1", b"%PDF-1.7 report")

    async def scenario(router: Router) -> None:
        telegram.push_message(
            42,
            None,
            extra={
                "caption": "look at these",
                "photo": [
                    {"file_id": "ph-small", "file_unique_id": "s", "width": 90, "height": 90},
                    {"file_id": "ph-big", "file_unique_id": "b", "width": 900, "height": 900},
                ],
            },
        )
        telegram.push_message(
            42,
            None,
            extra={
                "document": {
                    "file_id": "doc-1",
                    "file_unique_id": "d",
                    "file_name": "../../secret/report.pdf",
                    "mime_type": "application/pdf",
                }
            },
        )
        telegram.push_message(
            42,
            None,
            extra={
                "caption": "too big",
                "document": {"file_id": "huge", "file_name": "x.bin", "file_size": 50_000_000},
            },
        )
        await wait_until_async(lambda: len(live.rows()) == 3, timeout_s=10.0, what="3 inbound rows")

    live.run({"telegram": adapter(telegram)}, scenario)
    [session] = live.sessions()
    root = live.layout.session(group.id, session.id).root
    by_text = {}
    for row in live.rows():
        content = decode_inbound_content(row.content)
        assert isinstance(content, ChatContent)
        by_text[content.text.split("\n")[0]] = content
    photo = by_text["look at these"].attachments
    assert [a.kind for a in photo] == ["image"]
    assert (root / (photo[0].local_path or "")).read_bytes().startswith(b"\xff\xd8")
    doc = by_text[""].attachments if "" in by_text else []
    assert [a.name for a in doc] == ["report.pdf"]
    assert (root / (doc[0].local_path or "")).read_bytes() == b"%PDF-1.7 report"
    big = by_text["too big"]
    assert big.attachments == [] and "not downloaded" in big.text


def test_a_button_click_answers_a_question(live: Live, telegram: FakeTelegram) -> None:
    group = live.group()
    live.wire("telegram", "42", group, is_group=False)

    async def scenario(router: Router) -> None:
        telegram.push_message(42, "ask me")
        await wait_until_async(lambda: len(live.rows()) == 1, timeout_s=10.0, what="1 inbound row")
        [session] = live.sessions()
        live.central.create_pending_question(
            PendingQuestion(
                question_id="q-tg",
                session_id=session.id,
                message_out_id="out-1",
                channel_type="telegram",
                platform_id="42",
                thread_id=None,
                platform_message_id=None,
                target_user_id="telegram:42",
                title="Ready?",
                options_json=encode_text(
                    [
                        QuestionOption(label="Yes", value="yes"),
                        QuestionOption(label="No", value="no"),
                    ]
                ),
                created_at_ms=1,
                expires_at_ms=None,
            )
        )
        telegram.push_callback(42, 9, button_data("q-tg", 0), user_id=42)
        await wait_until_async(lambda: len(live.rows()) == 2, timeout_s=10.0, what="the answer row")
        await wait_until_async(
            telegram.answered_callbacks, timeout_s=10.0, what="answerCallbackQuery"
        )
        await wait_until_async(
            lambda: telegram.sent("editMessageText"), timeout_s=10.0, what="the card edit"
        )

    live.run({"telegram": adapter(telegram)}, scenario)
    answer = live.rows()[-1]
    assert answer.kind == "system" and json.loads(answer.content)["selected_option"] == "yes"
    [edit] = telegram.sent("editMessageText")
    assert edit.params["message_id"] == 9 and "Yes" in edit.text


def test_bad_updates_are_recorded_and_skipped(live: Live, telegram: FakeTelegram) -> None:
    group = live.group()
    live.wire("telegram", "42", group, is_group=False)

    async def scenario(router: Router) -> None:
        telegram.push_raw({"update_id": 900, "message": "not an object"})
        telegram.push_raw({"update_id": 901, "poll": {"id": "p"}})
        telegram.push_raw({"update_id": 902, "message": {"message_id": 1, "chat": {"id": 42}}})
        telegram.push_raw(
            {"update_id": 903, "callback_query": {"id": "c", "from": {"id": 1}, "data": "garbage"}}
        )
        telegram.push_raw(["not", "an", "update"])
        telegram.push_message(42, "x" * 5000)  # over Telegram's own 4096 and still decoded
        telegram.push_message(42, "still alive \ud800 after all that")
        await wait_until_async(
            lambda: len(live.rows()) == 2, timeout_s=10.0, what="the good messages"
        )
        await wait_until_async(
            lambda: telegram.pending_updates() == 0, timeout_s=10.0, what="everything confirmed"
        )

    live.run({"telegram": adapter(telegram)}, scenario)
    texts = [text_of(r) for r in live.rows()]
    assert texts == ["x" * 5000, "still alive ? after all that"]
    # One drop per malformed update (five), each against the chat it names, if any.
    drops = {(d.platform_id, d.reason): d.message_count for d in live.central.list_drops()}
    assert drops == {("unknown", "invalid_input"): 4, ("42", "invalid_input"): 1}


def test_the_offset_moves_only_past_committed_updates(telegram: FakeTelegram) -> None:
    """A sink that cannot commit: the update stays with Telegram."""

    class FailingSink:
        def __init__(self) -> None:
            self.calls = 0

        async def on_event(self, event: InboundEvent) -> None:
            self.calls += 1
            raise OSError("disk full")

        async def on_action(self, action: ActionEvent) -> None:
            raise OSError("disk full")

        async def on_invalid(
            self, channel_type: str, platform_id: str, reason: str, *, code: str = INVALID_INPUT
        ) -> None:
            return None

    import asyncio

    async def main() -> None:
        tg = adapter(telegram)
        await tg.start()
        tg._bot_id, tg._bot_username = BOT_ID, "nano_bot"
        first, _ = telegram.push_message(42, "one")
        telegram.push_message(42, "two")
        telegram.push_message(7, "other chat")
        raw = await tg.bot.do_api_request("getUpdates", api_kwargs={"timeout": 0})
        sink = FailingSink()
        for attempt in range(10):  # however often it fails, it is never skipped
            batch = await tg.process_batch(raw, sink, None)
            # Nothing committed: the next poll confirms nothing, so all three stay queued.
            assert batch.offset == first
            assert batch.failed == [first, first + 1, first + 2]
            assert sink.calls == 3 * (attempt + 1)
        await tg.close()

    asyncio.run(main())
    assert telegram.pending_updates() == 3


def test_a_commit_that_keeps_failing_is_retried_with_backoff_never_skipped(
    live: Live, telegram: FakeTelegram
) -> None:
    """Seven ``database is locked`` in a row (the old code gave up after five and moved the
    offset past the message): the update is fetched again after each, with a doubling,
    capped delay, and committed once the database is free, before the next message."""
    group = live.group()
    live.wire("telegram", "42", group, is_group=False)
    delays = Delays()
    tg = TelegramAdapter(telegram.token, telegram.base_url, poll_timeout_s=1, sleep=delays)

    async def scenario(router: Router) -> None:
        await tg.start()
        sink = FlakySink(router, failures=7)
        inbound = asyncio.create_task(tg.run_inbound(sink))
        try:
            first, _ = telegram.push_message(42, "first")
            await wait_until_async(
                lambda: len(live.rows()) == 1, timeout_s=10.0, what="the retried message"
            )

            # Each failed attempt was followed by a poll that confirmed only what came
            # before it (offset = its id); the offset moved past it only after the commit.
            def polls() -> list[int]:
                named = [o for o in telegram.offsets_seen() if o is not None]
                return named[:8] if len(named) >= 8 else []

            named = await wait_until_async(polls, timeout_s=10.0, what="the polls")
            assert named == [first] * 7 + [first + 1]
            telegram.push_message(42, "second")
            await wait_until_async(
                lambda: len(live.rows()) == 2, timeout_s=10.0, what="the next message"
            )
            await wait_until_async(
                lambda: telegram.pending_updates() == 0, timeout_s=10.0, what="offsets confirmed"
            )
            assert sink.refused == ["t42_1"] * 7
        finally:
            inbound.cancel()
            await asyncio.gather(inbound, return_exceptions=True)
            await tg.close()

    live.run({}, scenario)
    assert [text_of(r) for r in live.rows()] == ["first", "second"]
    assert delays.seen == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert tg.retry.failures == 0  # a good batch starts the backoff over
    assert live.central.list_drops() == []


def test_a_network_error_while_downloading_is_retried_not_dropped(
    live: Live, telegram: FakeTelegram
) -> None:
    """A ``502`` from getFile is transient: the update is fetched again until the file comes
    through. A ``400`` (Telegram says the file is gone) is permanent: the message is kept
    with a note, the file left out."""
    group = live.group()
    live.wire("telegram", "42", group, is_group=False)
    telegram.add_file("ph-1", b"\xff\xd8 the photo")
    telegram.fail("getFile", 502, "Bad Gateway", count=3)
    delays = Delays()
    tg = TelegramAdapter(telegram.token, telegram.base_url, poll_timeout_s=1, sleep=delays)

    async def scenario(router: Router) -> None:
        await tg.start()
        inbound = asyncio.create_task(tg.run_inbound(router))
        try:
            photo = {"photo": [{"file_id": "ph-1", "file_unique_id": "u", "width": 9, "height": 9}]}
            telegram.push_message(42, None, extra={"caption": "holiday", **photo})
            telegram.push_message(
                42,
                None,
                extra={"caption": "old", "document": {"file_id": "gone", "file_name": "x.pdf"}},
            )
            await wait_until_async(
                lambda: len(live.rows()) == 2, timeout_s=10.0, what="both messages"
            )
            await wait_until_async(
                lambda: telegram.pending_updates() == 0, timeout_s=10.0, what="offsets confirmed"
            )
        finally:
            inbound.cancel()
            await asyncio.gather(inbound, return_exceptions=True)
            await tg.close()

    live.run({}, scenario)
    first, second = (decode_inbound_content(r.content) for r in live.rows())
    assert isinstance(first, ChatContent) and isinstance(second, ChatContent)
    assert first.text == "holiday" and [a.kind for a in first.attachments] == ["image"]
    assert second.attachments == []
    assert second.text == "old\n[attachment x.pdf not downloaded: Invalid file_id]"
    assert delays.seen == [0.5, 1.0, 2.0]
    assert live.central.list_drops() == []


def test_a_messages_files_are_capped_together_while_downloading(
    live: Live, telegram: FakeTelegram
) -> None:
    group = live.group()
    live.wire("telegram", "42", group, is_group=False)
    telegram.add_file("ph", b"p" * 600)
    telegram.add_file("doc", b"d" * 600)
    telegram.add_file("voice", b"v" * 300)
    tg = TelegramAdapter(
        telegram.token, telegram.base_url, poll_timeout_s=1, max_message_bytes=1000
    )

    async def scenario(router: Router) -> None:
        telegram.push_message(
            42,
            None,
            extra={
                "caption": "three files",
                "photo": [{"file_id": "ph", "file_unique_id": "p", "width": 1, "height": 1}],
                # Declared too big for what is left: not even downloaded.
                "document": {"file_id": "doc", "file_name": "d.bin", "file_size": 600},
                "voice": {"file_id": "voice", "file_unique_id": "v"},
            },
        )
        await wait_until_async(lambda: len(live.rows()) == 1, timeout_s=10.0, what="1 inbound row")

    live.run({"telegram": tg}, scenario)
    [row] = live.rows()
    content = decode_inbound_content(row.content)
    assert isinstance(content, ChatContent)
    assert [a.kind for a in content.attachments] == ["image", "voice"]
    assert "[attachment d.bin not downloaded: the message is too large]" in content.text


# -- outbound -----------------------------------------------------------------------------


def test_outbound_operations(telegram: FakeTelegram, tmp_path: Path) -> None:
    import asyncio

    report = tmp_path / "report.txt"
    report.write_text("numbers")

    async def main() -> None:
        tg = adapter(telegram)
        await tg.start()
        first = await tg.send_text("-100", "5", "hello topic", [OutgoingFile("r.txt", report)])
        assert first == "t-100_1"
        await tg.edit_text("-100", None, first, "edited")
        await tg.add_reaction("-100", None, "t-100_1", "👍")
        await tg.set_typing("-100", "5")
        card = await tg.send_question(
            "42",
            None,
            AskQuestion(
                question_id="q-" + "z" * 80,
                title="Deploy?",
                question="Ship it now?",
                options=[
                    QuestionOption(label="Ship", value="ship"),
                    QuestionOption(label="Wait", value="wait"),
                ],
            ),
        )
        assert card is not None and card.startswith("t42_")
        assert await tg.open_dm("42") == "42"
        await tg.close()

    asyncio.run(main())
    message, document = telegram.sent("sendMessage")[0], telegram.sent("sendDocument")[0]
    assert message.params["message_thread_id"] == 5 and message.text == "hello topic"
    assert (document.document, document.filename) == (b"numbers", "r.txt")
    [edit] = telegram.sent("editMessageText")
    assert edit.params["message_id"] == 1 and edit.text == "edited"
    [reaction] = telegram.sent("setMessageReaction")
    assert reaction.params["reaction"] == [{"type": "emoji", "emoji": "👍"}]
    [typing] = telegram.sent("sendChatAction")
    assert (typing.params["action"], typing.params["message_thread_id"]) == ("typing", 5)
    keyboard = telegram.sent("sendMessage")[-1].params["reply_markup"]["inline_keyboard"]
    data = [row[0]["callback_data"] for row in keyboard]
    assert all(len(d.encode()) <= 64 for d in data) and data[1].endswith("|1")


@pytest.mark.parametrize(
    ("status", "description", "retry_after", "expected"),
    [
        (400, "Bad Request: chat not found", None, PermanentFailure),
        (403, "Forbidden: bot was blocked by the user", None, PermanentFailure),
        (429, "Too Many Requests: retry after 7", 7, RetryLater),
        (502, "Bad Gateway", None, RetryLater),
    ],
)
def test_outbound_errors_are_classified(
    telegram: FakeTelegram,
    status: int,
    description: str,
    retry_after: int | None,
    expected: type[Exception],
) -> None:
    import asyncio

    telegram.fail("sendMessage", status, description, retry_after=retry_after)

    async def main() -> None:
        tg = adapter(telegram)
        await tg.start()
        try:
            with pytest.raises(expected) as caught:
                await tg.send_text("42", None, "hi")
            if retry_after is not None:
                assert isinstance(caught.value, RetryLater) and caught.value.delay_s == 7
            with pytest.raises(PermanentFailure):
                await tg.send_text("42", None, "   ")
        finally:
            await tg.close()

    asyncio.run(main())


def test_an_unreachable_api_is_retryable() -> None:
    import asyncio

    async def main() -> None:
        tg = TelegramAdapter("1:x", "http://127.0.0.1:9", poll_timeout_s=1)
        await tg.start()
        try:
            with pytest.raises(RetryLater):
                await tg.send_text("42", None, "hi")
        finally:
            await tg.close()

    asyncio.run(main())


def test_registration_card_and_click_over_telegram(live: Live, telegram: FakeTelegram) -> None:
    group = live.group("Helper")
    live.central.upsert_user("telegram:1001", "telegram", "Owner")
    live.central.grant_role("telegram:1001", "owner")

    async def scenario(router: Router) -> None:
        telegram.push_message(
            -300,
            "@nano_bot hello?",
            user_id=55,
            first_name="Stranger",
            title="Book club",
            entities=[{"type": "mention", "offset": 0, "length": 9}],
        )
        card = await wait_until_async(
            lambda: [s for s in telegram.sent("sendMessage") if s.chat_id == "1001"],
            timeout_s=10.0,
            what="the card in the owner's DM",
        )
        keyboard = card[0].params["reply_markup"]["inline_keyboard"]
        assert [row[0]["text"] for row in keyboard] == [
            "Connect to Helper",
            "Connect new agent",
            "Reject",
        ]
        assert "Book club" in card[0].text
        # A stranger pressing the owner's button (a forwarded card) changes nothing.
        telegram.push_callback(
            1001, card[0].message_id or 0, keyboard[0][0]["callback_data"], user_id=55
        )
        telegram.push_callback(
            1001, card[0].message_id or 0, keyboard[0][0]["callback_data"], user_id=1001
        )
        await wait_until_async(
            lambda: len(live.rows()) == 1, timeout_s=10.0, what="the replayed message"
        )

    live.run({"telegram": adapter(telegram)}, scenario)
    chat = live.central.find_messaging_group("telegram", "-300")
    assert chat is not None and chat.name == "Book club"
    [wiring] = live.central.list_wirings(chat.id)
    assert (wiring.agent_group_id, wiring.engage_mode) == (group.id, "mention")
    assert live.central.can_access_agent_group("telegram:55", group.id)
    assert text_of(live.rows()[0]) == "@nano_bot hello?"


def test_a_leftover_webhook_is_removed_without_dropping_updates(
    live: Live, telegram: FakeTelegram
) -> None:
    group = live.group()
    live.wire("telegram", "42", group, is_group=False)
    telegram.set_webhook("https://old.example/hook")
    telegram.push_message(42, "sent while the webhook was set")

    async def scenario(router: Router) -> None:
        await wait_until_async(
            lambda: len(live.rows()) == 1, timeout_s=15, what="the pending message"
        )

    live.run({"telegram": adapter(telegram)}, scenario)
    [deletion] = telegram.webhook_deletions()
    assert deletion.get("drop_pending_updates") in (False, None)


def test_messages_on_behalf_of_a_chat_are_approved_one_chat_at_a_time(
    live: Live, telegram: FakeTelegram
) -> None:
    """Two channels post into a group through the same placeholder user (Channel_Bot). The
    group lets in only known senders, and one channel is a member: its post is stored, the
    other channel's is dropped. Identities by ``from`` would have let both in, or neither."""
    group = live.group()
    live.wire("telegram", "-100", group, policy="strict")
    live.central.upsert_user("telegram:chat-1009", "telegram", "News")
    live.central.add_member("telegram:chat-1009", group.id)
    channel_bot = 136817688

    async def scenario(router: Router) -> None:
        for channel, title in ((-1009, "News"), (-1010, "Spam")):
            telegram.push_message(
                -100,
                f"post from {title}",
                user_id=channel_bot,
                first_name="Channel",
                extra={"sender_chat": {"id": channel, "type": "channel", "title": title}},
            )
        await wait_until_async(
            lambda: telegram.pending_updates() == 0, timeout_s=10.0, what="both handled"
        )
        await wait_until_async(live.central.list_drops, timeout_s=10.0, what="the stranger's drop")

    live.run({"telegram": adapter(telegram)}, scenario)
    [row] = live.rows()
    content = decode_inbound_content(row.content)
    assert isinstance(content, ChatContent)
    assert (content.sender_id, content.sender_name, content.text) == (
        "telegram:chat-1009",
        "News",
        "post from News",
    )
    [drop] = live.central.list_drops()
    assert (drop.reason, drop.user_id) == ("unknown_sender_strict", "telegram:chat-1010")
    assert live.central.get_user(f"telegram:{channel_bot}") is None
