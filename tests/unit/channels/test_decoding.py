"""Bad input at every channel's front door: whatever arrives, the adapter either produces a
valid event or records a drop (``on_invalid``); it never raises."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanoclaw_common.channels import telegram_updates as tu
from nanoclaw_common.channels.base import INVALID_INPUT
from nanoclaw_common.channels.cli import CliAdapter
from nanoclaw_common.channels.cli_protocol import Ack, Refusal
from nanoclaw_common.channels.common import (
    Backoff,
    button_data,
    make_event,
    parse_button_data,
    question_token,
)
from nanoclaw_common.channels.slack import SlackAdapter
from nanoclaw_common.channels.telegram import TelegramAdapter
from nanoclaw_common.channels.webhook import Signed, WebhookAdapter
from nanoclaw_common.errors import DecodeError
from nanoclaw_common.messages import ActionEvent, InboundEvent
from nanoclaw_common.paths import Layout
from tests.strategies import json_values


class Sink:
    def __init__(self) -> None:
        self.events: list[InboundEvent] = []
        self.actions: list[ActionEvent] = []
        self.invalid: list[str] = []

    async def on_event(self, event: InboundEvent) -> None:
        # What the router does first: the event must survive encoding.
        msgspec.json.encode(event)
        self.events.append(event)

    async def on_action(self, action: ActionEvent) -> None:
        self.actions.append(action)

    async def on_invalid(
        self, channel_type: str, platform_id: str, reason: str, *, code: str = INVALID_INPUT
    ) -> None:
        assert platform_id
        self.invalid.append(reason)


odd_text = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        [
            "\ud800",
            "a\x00b",
            "\u202eevil",
            "👍🏽" * 5,
            "x" * 500,
            "@nano_bot hi",
            "/clear@nano_bot",
        ]
    ),
)
chat_types = st.sampled_from(["private", "group", "supergroup", "channel", "weird", 5])
users = st.one_of(
    st.fixed_dictionaries({"id": st.integers(-(2**40), 2**40), "first_name": odd_text}),
    json_values,
)
messages = st.fixed_dictionaries(
    {
        "message_id": st.one_of(st.integers(0, 2**31), json_values),
        "date": st.one_of(st.integers(0, 2**31), json_values),
        "chat": st.one_of(
            st.fixed_dictionaries({"id": st.integers(-(2**50), 2**50), "type": chat_types}),
            json_values,
        ),
    },
    optional={
        "from": users,
        "text": st.one_of(odd_text, json_values),
        "entities": st.lists(
            st.fixed_dictionaries(
                {
                    "type": st.sampled_from(["mention", "bot_command", "text_mention", "url"]),
                    "offset": st.integers(-2, 30),
                    "length": st.integers(-2, 30),
                }
            ),
            max_size=3,
        ),
        "message_thread_id": st.one_of(st.integers(0, 100), json_values),
        "is_topic_message": st.booleans(),
        "reply_to_message": json_values,
        "sender_chat": st.one_of(
            st.fixed_dictionaries({"id": st.integers(-(2**50), 2**50), "type": chat_types}),
            json_values,
        ),
    },
)
callbacks = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"id": st.text(min_size=1, max_size=10), "from": users},
        optional={
            "data": st.one_of(st.sampled_from(["q-1|0", "#abc|3", "q|x", "||"]), odd_text),
            "message": st.one_of(
                st.fixed_dictionaries(
                    {
                        "message_id": st.integers(0, 2**31),
                        "chat": st.fixed_dictionaries(
                            {"id": st.integers(-(2**50), 2**50), "type": chat_types}
                        ),
                    }
                ),
                json_values,
            ),
        },
    ),
)
updates = st.one_of(
    json_values,
    st.fixed_dictionaries({"update_id": st.integers(0, 2**31), "message": messages}),
    st.fixed_dictionaries({"update_id": st.integers(0, 2**31), "callback_query": callbacks}),
    st.fixed_dictionaries(
        {"update_id": st.integers(0, 2**31)},
        optional={"edited_message": json_values, "poll": json_values},
    ),
)
BOT_ID = 777


def expected_outcome(raw: Any) -> str:
    """What the adapter must do with one update: ``event``, ``action``, ``invalid`` (a
    recorded drop) or ``ignored`` (a decodable message that is no one's words: the bot's
    own, or one with neither text nor files). Decodability is the strict decoders' verdict;
    what is checked here is that the adapter acts on it, exactly once."""
    if not isinstance(raw, dict):
        return "invalid"
    kind = tu.update_kind(raw)
    if kind == "message":
        try:
            message = tu.decode_message(raw["message"])
        except DecodeError:
            return "invalid"
        if message.from_ is not None and message.from_.id == BOT_ID:
            return "ignored"
        text = message.text if message.text is not None else (message.caption or "")
        return "event" if text else "ignored"
    if kind == "callback_query":
        try:
            query = tu.decode_callback(raw["callback_query"])
            if query.message is None or query.data is None:
                return "invalid"
            parse_button_data(query.data)
        except DecodeError:
            return "invalid"
        return "action"
    return "invalid"


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(updates)
def test_telegram_updates_never_escape(raw: Any) -> None:
    adapter = TelegramAdapter("1:x", "http://127.0.0.1:9")
    adapter._bot_id, adapter._bot_username = BOT_ID, "nano_bot"
    sink = Sink()
    asyncio.run(adapter.handle_update(raw, sink))
    outcomes = (
        ["event"] * len(sink.events)
        + ["action"] * len(sink.actions)
        + ["invalid"] * len(sink.invalid)
    )
    expected = expected_outcome(raw)
    assert outcomes == ([] if expected == "ignored" else [expected])
    if sink.events:
        [event] = sink.events
        message = tu.decode_message(raw["message"])
        assert event.platform_id == str(message.chat.id)
        assert event.message_id == f"t{message.chat.id}_{message.message_id}"
        assert event.is_group == (message.chat.type != "private")
        if message.sender_chat is not None:
            assert event.sender_id == f"telegram:chat{message.sender_chat.id}"
        elif message.from_ is not None:
            assert event.sender_id == f"telegram:{message.from_.id}"
        else:
            assert event.sender_id == f"telegram:chat{message.chat.id}"
    if sink.actions:
        [action] = sink.actions
        query = tu.decode_callback(raw["callback_query"])
        assert query.message is not None and query.data is not None
        assert action.user_id == f"telegram:{query.from_.id}"
        assert (action.question_id, action.value) == (
            parse_button_data(query.data)[0],
            str(parse_button_data(query.data)[1]),
        )


def test_messages_on_behalf_of_a_chat_are_that_chats() -> None:
    """Anonymous admins and channels post through shared placeholder users; the sender is
    the chat they post as, so approving one placeholder never approves everyone behind it."""
    adapter = TelegramAdapter("1:x", "http://127.0.0.1:9")
    adapter._bot_id, adapter._bot_username = BOT_ID, "nano_bot"
    sink = Sink()
    group = {"id": -100, "type": "supergroup", "title": "Team"}
    posts = [
        # An anonymous admin of the group: from GroupAnonymousBot, sender_chat = the group.
        ({"id": 1087968824, "is_bot": True, "first_name": "Group"}, group),
        # A channel posting into the group: from Channel_Bot, sender_chat = the channel.
        (
            {"id": 136817688, "is_bot": True, "first_name": "Channel"},
            {"id": -1009, "type": "channel", "title": "News"},
        ),
        # Another channel through the same placeholder user.
        (
            {"id": 136817688, "is_bot": True, "first_name": "Channel"},
            {"id": -1010, "type": "channel", "title": "Other news"},
        ),
    ]
    for number, (placeholder, on_behalf) in enumerate(posts, 1):
        update = {
            "update_id": number,
            "message": {
                "message_id": number,
                "date": 1,
                "chat": group,
                "from": placeholder,
                "sender_chat": on_behalf,
                "text": "hello",
            },
        }
        asyncio.run(adapter.handle_update(update, sink))
    assert [(e.sender_id, e.sender_name) for e in sink.events] == [
        ("telegram:chat-100", "Team"),
        ("telegram:chat-1009", "News"),
        ("telegram:chat-1010", "Other news"),
    ]


def test_telegram_mentions_count_utf16_offsets() -> None:
    message = tu.decode_message(
        {
            "message_id": 1,
            "date": 1,
            "chat": {"id": -5, "type": "group"},
            "text": "👍 @nano_bot hi",
            # 👍 is two UTF-16 code units, so the mention starts at 3.
            "entities": [{"type": "mention", "offset": 3, "length": 9}],
        }
    )
    assert tu.is_mention(message, 777, "nano_bot")
    assert not tu.is_mention(message, 777, "other_bot")


frames = st.one_of(
    st.text(max_size=80),
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["events_api", "interactive", "slash_commands", "hello"]),
            "envelope_id": st.one_of(st.none(), st.text(max_size=10)),
            "payload": st.one_of(
                json_values,
                st.fixed_dictionaries(
                    {
                        "type": st.just("event_callback"),
                        "event": st.one_of(
                            json_values,
                            st.fixed_dictionaries(
                                {
                                    "type": st.sampled_from(
                                        ["message", "app_mention", "reaction_added"]
                                    ),
                                    "channel": odd_text,
                                    "ts": odd_text,
                                    "user": odd_text,
                                    "text": odd_text,
                                }
                            ),
                        ),
                    }
                ),
            ),
        }
    ).map(json.dumps),
)


class Client:
    def __init__(self) -> None:
        self.acks: list[Any] = []

    async def send_socket_mode_response(self, response: Any) -> None:
        self.acks.append(response)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(frames)
def test_slack_frames_never_escape(raw: str) -> None:
    adapter = SlackAdapter("xoxb", "http://127.0.0.1:9/api/")
    adapter._bot_user_id = "UBOT"
    adapter._names = {}  # users.info would need the network: names default to ids

    async def no_lookup(user: str) -> str:
        return user

    async def no_chat_lookup(channel: str) -> str | None:
        return None

    adapter._user_name = no_lookup  # type: ignore[method-assign]
    adapter._chat_name = no_chat_lookup  # type: ignore[method-assign]
    sink, client = Sink(), Client()
    asyncio.run(adapter.handle_frame(client, raw, sink))
    # Every envelope is acknowledged once handled or recorded; nothing else is.
    try:
        envelope = json.loads(raw)
        has_id = (
            isinstance(envelope, dict)
            and isinstance(envelope.get("envelope_id"), str)
            and envelope.get("type") not in ("hello", "disconnect")
        )
    except ValueError:
        has_id = False
    if not sink.invalid or sink.events or sink.actions:
        assert len(client.acks) == (1 if has_id else 0)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_cli_lines_get_an_answer(line: bytes) -> None:
    adapter = CliAdapter(Layout(Path("/nonexistent")))
    sink = Sink()
    answer = asyncio.run(adapter.handle_line(line, sink))
    assert isinstance(answer, Ack | Refusal)
    if isinstance(answer, Refusal):
        assert sink.invalid


@given(
    st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()),
    st.sampled_from(["push", "build.failed", "bad event", ""]),
    st.sampled_from(["d-1", "a.b-c_9", None, "no/slashes"]),
)
def test_webhook_bodies_decode_or_refuse(body: bytes, name: str, delivery: str | None) -> None:
    adapter = WebhookAdapter({"github": "s3cret-value-0123456"}, "127.0.0.1", 0)
    try:
        json.loads(body)
        decodable = True
    except ValueError:
        decodable = False
    valid = decodable and name not in ("bad event", "") and delivery in ("d-1", "a.b-c_9")
    try:
        event = adapter.to_event("github", body, Signed(name, delivery, 1_700_000_000))
    except DecodeError:
        assert not valid
        return
    assert valid
    assert event.channel_type == "webhook" and event.platform_id == "github"
    assert event.message_id == f"wh-github-{delivery}"
    assert event.timestamp_ms == 1_700_000_000_000


def test_backoff_doubles_up_to_its_cap_and_starts_over() -> None:
    backoff = Backoff(base_s=0.5, max_s=30.0)
    assert [backoff.next_delay_s() for _ in range(9)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        30.0,
        30.0,
        30.0,
    ]
    backoff.failures = 10_000  # no overflow however long the trouble lasts
    assert backoff.next_delay_s() == 30.0
    backoff.reset()
    assert backoff.next_delay_s() == 0.5


@given(st.text(min_size=1, max_size=200), st.integers(0, 19))
def test_button_data_round_trips_within_telegram_limits(question_id: str, index: int) -> None:
    data = button_data(question_id, index)
    assert len(data.encode()) <= 64
    token, parsed = parse_button_data(data)
    assert parsed == index and token == question_token(question_id)


@given(odd_text)
def test_events_built_from_odd_text_encode(text: str) -> None:
    try:
        event = make_event(
            channel_type="chat",
            platform_id="p",
            message_id="m",
            sender_id="chat:u",
            text=text,
            timestamp_ms=1,
            sender_name=text,
        )
    except DecodeError:
        return
    msgspec.json.encode(event)
    assert "\x00" not in event.text


def test_oversized_text_is_refused() -> None:
    try:
        make_event(
            channel_type="chat",
            platform_id="p",
            message_id="m",
            sender_id="chat:u",
            text="x" * 100_001,
            timestamp_ms=1,
        )
    except DecodeError as exc:
        assert "over" in str(exc)
    else:
        raise AssertionError("100,001 characters were accepted")


def test_cli_poison_whose_drop_cannot_be_recorded_is_not_acknowledged() -> None:
    """A bad line is refused once its drop is recorded. If even that cannot be committed,
    the answer is ``not committed``, which the client retries (the chat client re-sends on
    exactly that prefix), never a plain refusal."""

    class LockedSink(Sink):
        async def on_invalid(
            self, channel_type: str, platform_id: str, reason: str, *, code: str = INVALID_INPUT
        ) -> None:
            raise OSError("database is locked")

    adapter = CliAdapter(Layout(Path("/nonexistent")))
    # Undecodable as a line, and decodable but not as an event (a question id too long).
    long_click = b'{"type":"click","question_id":"' + b"q" * 300 + b'","option":1}'
    for line in (b"{not json\n", long_click):
        answer = asyncio.run(adapter.handle_line(line, LockedSink()))
        assert isinstance(answer, Refusal) and answer.error.startswith("not committed")
    answer = asyncio.run(adapter.handle_line(b"{not json\n", Sink()))
    assert isinstance(answer, Refusal) and not answer.error.startswith("not committed")
