"""The delivery engine driving the real outbound halves of the telegram, slack and cli
adapters (python-telegram-bot, slack-sdk, the terminal socket) against local fakes that speak
the platforms' protocols. Time is injected: retries are driven by moving the clock."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from nanoclaw_common import messages as m
from nanoclaw_common.channels.builtin import build_builtin_adapters
from nanoclaw_common.states import EngageMode
from nanoclaw_common.store import OutboundStore
from nanoclaw_common.store.outbound import NewOutbound
from nanoclaw_common.store.rows import Session
from nanoclaw_delivery.operations import host_question_id
from tests.delivery_world import World, run
from tests.fakes.slack_api import FakeSlack
from tests.fakes.telegram_api import FakeTelegram
from tests.integration.delivery.terminal import FakeTerminal


def with_adapters(world: World, body: Callable[[], Awaitable[None]]) -> None:
    """Run ``body`` with the real configured adapters started in one event loop."""

    async def scenario() -> None:
        adapters = build_builtin_adapters(world.settings)
        for adapter in adapters.values():
            await adapter.start()
        world.adapters.clear()
        world.adapters.update(adapters)  # type: ignore[arg-type]
        try:
            await body()
        finally:
            for adapter in adapters.values():
                await adapter.close()

    run(scenario())


async def drain(world: World, session: Session | None = None) -> int | None:
    worker = world.worker(session)
    try:
        return await worker.drain()
    finally:
        worker.close()


# -- telegram -----------------------------------------------------------------------------


def test_telegram_operations(world: World, fake_telegram: FakeTelegram) -> None:
    long_text = ("word " * 1000).strip() + "\n\n" + "tail paragraph"

    async def body() -> None:
        first = world.text("hello")
        world.write(m.SendText(text=long_text))
        files = world.write(m.SendText(text="the file", files=["notes.txt"]))
        (world.paths.outbox / files.id).mkdir(parents=True)
        (world.paths.outbox / files.id / "notes.txt").write_bytes(b"some notes")
        await drain(world)
        world.write(m.EditMessage(message_id=first.id, text="hello, edited"))
        world.write(m.AddReaction(message_id=first.id, emoji="👍"))
        asked = world.user_message("t100_5:main", "telegram:55")
        world.write(
            m.AskQuestion(
                question_id="q-tg",
                title="Lunch?",
                question="Pick one",
                options=[
                    m.QuestionOption(label="Pizza", value="pizza"),
                    m.QuestionOption(label="Soup", value="soup"),
                ],
            ),
            in_reply_to=asked,
        )
        world.write(m.SendCard(card=m.Card(title="Status", description="all green")))
        await drain(world)

    with_adapters(world, body)
    messages = fake_telegram.sent("sendMessage")
    texts = [s.text for s in messages]
    assert texts[0] == "hello"
    # 5,015 characters: cut on a word boundary at the limit; the rest fits in one message
    assert len(texts[1]) <= 4096 and texts[1].endswith("word")
    assert texts[2].startswith("word") and texts[2].endswith("word\n\ntail paragraph")
    assert " ".join(texts[1:3]) == long_text
    assert texts[3] == "the file"
    document = fake_telegram.sent("sendDocument")[0]
    assert (document.filename, document.document) == ("notes.txt", b"some notes")
    edit = fake_telegram.sent("editMessageText")[0]
    assert edit.text == "hello, edited"
    assert int(edit.params["message_id"]) == messages[0].message_id
    reaction = fake_telegram.sent("setMessageReaction")[0]
    assert int(reaction.params["message_id"]) == messages[0].message_id
    question = next(s for s in messages if "Lunch?" in s.text)
    markup = question.params["reply_markup"]
    markup = json.loads(markup) if isinstance(markup, str) else markup
    buttons = [row[0] for row in markup["inline_keyboard"]]
    assert [b["text"] for b in buttons] == ["Pizza", "Soup"]
    key = host_question_id(world.session.id, "q-tg")  # the host's key, not the agent's id
    assert [b["callback_data"] for b in buttons] == [f"{key}|0", f"{key}|1"]
    pending = world.central.get_pending_question(key)
    assert pending is not None and pending.target_user_id == "telegram:55"
    assert texts[-1] == "Status\n\nall green"  # no cards on telegram: the fallback


def test_telegram_down_for_a_minute_then_back(world: World, fake_telegram: FakeTelegram) -> None:
    """502s for a minute of injected time; the default budget (6 attempts, 2 s doubling)
    reaches past it; the message arrives once."""
    outage_ms = 60_000
    start = world.clock()

    async def body() -> None:
        out = world.text("are you there?")
        while (row := world.delivery(out.id)) is None or row.status not in ("delivered", "failed"):
            if world.clock() - start < outage_ms:
                fake_telegram.fail("sendMessage", 502, "Bad Gateway")
            due = await drain(world)
            if due is not None:
                world.clock.value = due
        assert row.status == "delivered" and row.attempts == 6

    with_adapters(world, body)
    assert [s.text for s in fake_telegram.sent("sendMessage")] == ["are you there?"]


def test_telegram_flood_control_and_forbidden(world: World, fake_telegram: FakeTelegram) -> None:
    async def body() -> None:
        fake_telegram.fail("sendMessage", 429, "Too Many Requests", retry_after=9)
        slow = world.text("slow down")
        due = await drain(world)
        assert due == world.clock() + 9_000
        assert world.delivery(slow.id).status == "retry"
        world.clock.value = due
        await drain(world)
        assert world.delivery(slow.id).status == "delivered"
        fake_telegram.fail("sendMessage", 403, "Forbidden: bot was blocked by the user")
        blocked = world.text("blocked")
        await drain(world)
        row = world.delivery(blocked.id)
        assert (row.status, row.attempts) == ("failed", 1)
        assert "blocked" in row.last_error

    with_adapters(world, body)


def test_telegram_denied_destination_tells_the_owner(
    world: World, fake_telegram: FakeTelegram
) -> None:
    async def body() -> None:
        out = world.text("to a chat I may not use", channel_type="telegram", platform_id="200")
        await drain(world)
        assert world.delivery(out.id).status == "denied"

    with_adapters(world, body)
    sent = fake_telegram.sent("sendMessage")
    assert [s.chat_id for s in sent] == ["owner"]  # the owner's DM; nothing to chat 200
    assert "denied" in sent[0].text


# -- slack --------------------------------------------------------------------------------


def slack_world(world: World) -> Session:
    chat = world.central.create_messaging_group("slack", "C100", name="general")
    world.central.create_wiring(chat.id, world.group.id, engage_mode=EngageMode.MENTION)
    return world.central.create_session(world.group.id, chat.id, "1700000000.000100")


def write_to(world: World, session: Session, content: m.OutboundContent, **fields: Any) -> str:
    from nanoclaw_common.sessions import ensure_session_files

    paths = ensure_session_files(world.layout, session)
    store = OutboundStore(paths.outbound_db)
    try:
        return store.insert_message(NewOutbound(content=content, **fields)).id
    finally:
        store.close()


def test_slack_operations(world: World, fake_slack: FakeSlack) -> None:
    session = slack_world(world)

    async def body() -> None:
        first = write_to(world, session, m.SendText(text="hello slack"))
        files = write_to(world, session, m.SendText(text="", files=["a.csv"]))
        folder = world.layout.session(world.group.id, session.id).outbox / files
        folder.mkdir(parents=True)
        (folder / "a.csv").write_bytes(b"x,y\n1,2\n")
        await drain(world, session)
        write_to(world, session, m.EditMessage(message_id=first, text="hello, edited"))
        write_to(world, session, m.AddReaction(message_id=first, emoji="👍"))
        write_to(
            world,
            session,
            m.AskQuestion(
                question_id="q-sl",
                title="Deploy?",
                question="Ship it now?",
                options=[
                    m.QuestionOption(label="Yes", value="yes"),
                    m.QuestionOption(label="No", value="no"),
                ],
            ),
        )
        write_to(
            world,
            session,
            m.SendCard(
                card=m.Card(
                    title="Build",
                    description="passed",
                    actions=[m.CardAction(label="Logs", url="https://ci.example/1")],
                )
            ),
        )
        await drain(world, session)

    with_adapters(world, body)
    posts = fake_slack.calls("chat.postMessage")
    assert posts[0].params["text"] == "hello slack"
    assert posts[0].params["channel"] == "C100"
    assert posts[0].params["thread_ts"] == "1700000000.000100"  # the session's thread
    assert list(fake_slack.uploads().values()) == [b"x,y\n1,2\n"]
    update = fake_slack.calls("chat.update")[0]
    assert update.params["text"] == "hello, edited"
    reaction = fake_slack.calls("reactions.add")[0]
    assert reaction.params["name"] == "thumbsup"
    question = next(p for p in posts if "Deploy?" in str(p.params.get("text")))
    blocks = question.params["blocks"]
    blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
    values = [e["value"] for e in blocks[1]["elements"]]
    key = host_question_id(session.id, "q-sl")
    assert values == [f"{key}|0", f"{key}|1"]
    card = posts[-1]
    card_blocks = card.params["blocks"]
    card_blocks = json.loads(card_blocks) if isinstance(card_blocks, str) else card_blocks
    assert card_blocks[0]["type"] == "header"  # a real card on slack, not the fallback
    assert card.params["text"].startswith("Build")


def test_slack_rate_limit_is_retried(world: World, fake_slack: FakeSlack) -> None:
    session = slack_world(world)

    async def body() -> None:
        fake_slack.fail("chat.postMessage", 429, "ratelimited", retry_after=3)
        out = write_to(world, session, m.SendText(text="later"))
        due = await drain(world, session)
        assert due == world.clock() + 3_000
        world.clock.value = due
        await drain(world, session)
        store = world.inbound(session)
        row = store.get_delivery(out)
        store.close()
        assert row is not None and (row.status, row.attempts) == ("delivered", 2)

    with_adapters(world, body)
    assert [c.params["text"] for c in fake_slack.calls("chat.postMessage")][-1] == "later"


# -- cli (the terminal) -------------------------------------------------------------------


def cli_world(world: World) -> Session:
    chat = world.central.create_messaging_group("cli", "local", name="terminal")
    world.central.create_wiring(chat.id, world.group.id, engage_mode=EngageMode.PATTERN)
    return world.central.create_session(world.group.id, chat.id)


def test_cli_frames_and_no_terminal_means_retry(world: World, terminal: FakeTerminal) -> None:
    session = cli_world(world)

    async def body() -> None:
        terminal.stop()  # nobody attached
        out = write_to(world, session, m.SendText(text="hello terminal"))
        await drain(world, session)
        store = world.inbound(session)
        row = store.get_delivery(out)
        store.close()
        assert row is not None and row.status == "retry"  # never "delivered"
        assert "no terminal chat attached" in (row.last_error or "")
        terminal.start()
        world.clock.advance(2_000)
        write_to(
            world,
            session,
            m.AskQuestion(
                question_id="q-cli",
                title="Sure?",
                question="Go on?",
                options=[m.QuestionOption(label="Yes", value="y")],
            ),
        )
        await drain(world, session)
        wrong = write_to(
            world, session, m.SendText(text="x"), channel_type="cli", platform_id="other"
        )
        world.central.create_messaging_group("cli", "other")
        from nanoclaw_common.states import DestinationType

        other = world.central.find_messaging_group("cli", "other")
        assert other is not None
        world.central.add_destination(
            world.group.id, "other-cli", DestinationType.CHANNEL, other.id
        )
        await drain(world, session)
        store = world.inbound(session)
        assert store.get_delivery(wrong).status == "failed"  # type: ignore[union-attr]
        store.close()

    with_adapters(world, body)
    assert terminal.texts() == ["hello terminal"]
    kinds = [type(f).__name__ for f in terminal.frames]
    assert kinds == ["TextFrame", "QuestionFrame"]
