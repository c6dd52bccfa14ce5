"""Message types: every struct round-trips; malformed and oversized input is a DecodeError."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanoclaw_common import messages as m
from nanoclaw_common.errors import DecodeError
from nanoclaw_common.runner_config import RunnerConfig, decode_runner_config, encode_runner_config
from tests.strategies import as_builtins, instances, json_values

INBOUND_TYPES = [m.ChatContent, m.TaskContent, m.WebhookContent, m.QuestionResponse]
OUTBOUND_TYPES = [
    m.SendText,
    m.EditMessage,
    m.AddReaction,
    m.AskQuestion,
    m.SendCard,
    m.ScheduleTask,
    m.UpdateTask,
    m.PauseTask,
    m.ResumeTask,
    m.CancelTask,
    m.CreateAgent,
    m.InstallPackages,
    m.AddMcpServer,
]


def test_every_content_struct_is_in_its_union() -> None:
    assert set(INBOUND_TYPES) == set(m.InboundContent.__args__)
    assert set(OUTBOUND_TYPES) == set(m.OutboundContent.__args__)
    assert set(m.INBOUND_KIND) == set(INBOUND_TYPES)


@given(st.one_of(*(instances(t) for t in INBOUND_TYPES)))
def test_inbound_content_round_trips(content: m.InboundContent) -> None:
    assert m.decode_inbound_content(m.encode_text(content)) == content
    assert m.decode_inbound_content(m.encode(content)) == content


@given(st.one_of(*(instances(t) for t in OUTBOUND_TYPES)))
def test_outbound_content_round_trips(content: m.OutboundContent) -> None:
    assert m.decode_outbound_content(m.encode(content)) == content
    assert m.outbound_kind(content) == (
        "chat" if isinstance(content, m.CHAT_OPERATIONS) else "system"
    )


@given(instances(m.InboundEvent))
def test_event_round_trips(event: m.InboundEvent) -> None:
    assert m.decode_event(m.encode(event)) == event


@given(instances(m.ActionEvent))
def test_action_round_trips(action: m.ActionEvent) -> None:
    assert m.decode_action(m.encode(action)) == action


@given(instances(RunnerConfig))
def test_runner_config_round_trips(config: RunnerConfig) -> None:
    assert decode_runner_config(encode_runner_config(config)) == config


def test_compact_encoding() -> None:
    text = m.encode_text(m.QuestionResponse(question_id="q1", selected_option="a", user_id="u"))
    assert (
        text
        == '{"type":"question_response","question_id":"q1","selected_option":"a","user_id":"u"}'
    )


DECODERS = [
    m.decode_inbound_content,
    m.decode_outbound_content,
    m.decode_event,
    m.decode_action,
    decode_runner_config,
]


@pytest.mark.parametrize("decode", DECODERS)
@given(data=st.binary(max_size=200) | st.text(max_size=200))
def test_garbage_is_a_decode_error(decode: Any, data: bytes | str) -> None:
    try:
        decode(data)
    except DecodeError as exc:
        assert str(exc).startswith("invalid ")


mutations = st.sampled_from(["drop", "retype", "extra", "tag"])


def mutate(record: dict[str, Any], how: str, key: str, junk: Any) -> dict[str, Any]:
    changed = dict(record)
    if how == "drop":
        changed.pop(key, None)
    elif how == "retype":
        changed[key] = junk
    elif how == "extra":
        changed["unexpected_" + key] = junk
    else:
        changed["type"] = junk
    return changed


@given(
    content=st.one_of(*(instances(t) for t in OUTBOUND_TYPES + INBOUND_TYPES)),
    how=mutations,
    pick=st.integers(0, 50),
    junk=json_values,
)
def test_mutated_payloads_decode_or_raise_decode_error(
    content: msgspec.Struct, how: str, pick: int, junk: Any
) -> None:
    """Take a valid payload, break one field; decoding either still yields a valid struct (the
    change was harmless) or raises DecodeError: never any other exception."""
    record = as_builtins(content)
    key = sorted(record)[pick % len(record)]
    data = json.dumps(mutate(record, how, key, junk))
    for decode in (m.decode_outbound_content, m.decode_inbound_content):
        try:
            decoded = decode(data)
        except DecodeError:
            continue
        assert isinstance(decoded, msgspec.Struct)


def test_oversized_payload_is_refused_before_parsing() -> None:
    huge = '{"type":"text","text":"' + "x" * (m.MAX_PAYLOAD_BYTES + 1) + '"}'
    with pytest.raises(DecodeError, match="over the 1000000-byte limit"):
        m.decode_outbound_content(huge)


def test_field_limits_are_enforced() -> None:
    too_long = m.encode({"type": "text", "text": "x" * (m.MAX_TEXT_CHARS + 1)})
    with pytest.raises(DecodeError, match=r"\$\.text"):
        m.decode_outbound_content(too_long)
    too_many = m.encode({"type": "install_packages", "apt": ["a"] * (m.MAX_PACKAGES + 1)})
    with pytest.raises(DecodeError, match=r"\$\.apt"):
        m.decode_outbound_content(too_many)
    no_options = m.encode(
        {"type": "ask_question", "question_id": "q", "title": "t", "question": "q", "options": []}
    )
    with pytest.raises(DecodeError, match=r"\$\.options"):
        m.decode_outbound_content(no_options)
    bad_channel = m.encode(
        {
            "channel_type": "../x",
            "platform_id": "p",
            "message_id": "1",
            "sender_id": "s",
            "text": "",
            "timestamp_ms": 0,
        }
    )
    with pytest.raises(DecodeError, match=r"\$\.channel_type"):
        m.decode_event(bad_channel)


def test_errors_name_the_field() -> None:
    with pytest.raises(DecodeError) as caught:
        m.decode_outbound_content('{"type":"reaction","message_id":"1","emoji":5}')
    assert str(caught.value) == "invalid outbound content: Expected `str`, got `int` - at `$.emoji`"
    with pytest.raises(DecodeError, match="unknown field `x`"):
        m.decode_outbound_content('{"type":"text","text":"a","x":1}')
    with pytest.raises(DecodeError, match="not valid JSON"):
        m.decode_inbound_content('{"type":')


def test_convert_as_and_decode_as() -> None:
    event = m.convert_as(
        {
            "channel_type": "cli",
            "platform_id": "local",
            "message_id": "1",
            "sender_id": "cli:x",
            "text": "hi",
            "timestamp_ms": 5,
        },
        m.InboundEvent,
        "cli event",
    )
    assert event.text == "hi"
    with pytest.raises(DecodeError, match="invalid cli event"):
        m.convert_as({"text": 1}, m.InboundEvent, "cli event")
    assert m.decode_as(b'{"task_id":"t"}', m.PauseTask, "pause") == m.PauseTask(task_id="t")
