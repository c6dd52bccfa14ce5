"""The local terminal chat's wire format: line-delimited JSON over two Unix sockets.

- ``run/cli.sock`` (the router listens): the chat client sends ``SendMessage`` / ``Click``
  lines; the router answers each with ``Ack`` (after the commit) or ``Refusal``. The client
  makes the message id, so a re-send after a lost answer is deduplicated.
- ``run/cli-chat.sock`` (the chat client listens): whoever delivers to the terminal (delivery,
  or the router for its own cards and notices) connects, writes one ``Frame`` and waits for
  ``Received``. No listener, or no answer, means the terminal is not there: a retryable
  failure, never "delivered".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from nanoclaw_common.errors import DecodeError
from nanoclaw_common.messages import MAX_ATTACHMENT_BYTES, MAX_TEXT_CHARS
from nanoclaw_common.paths import Layout

MAX_LINE_BYTES: Final = 64_000_000  # a frame may carry files (base64)
MAX_REQUEST_BYTES: Final = 1_000_000
MessageId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")]
Text = Annotated[str, Meta(max_length=MAX_TEXT_CHARS)]
Small = Annotated[str, Meta(max_length=1_000)]


class Wire(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type"):
    pass


# -- client -> router (run/cli.sock) ------------------------------------------------------


class SendMessage(Wire, frozen=True, tag="message"):
    id: MessageId
    text: Text
    sender_name: Small = ""


class Click(Wire, frozen=True, tag="click"):
    question_id: Small
    option: Annotated[int, Meta(ge=0, le=99)]


class Ack(Wire, frozen=True, tag="ack"):
    id: str


class Refusal(Wire, frozen=True, tag="refused"):
    id: str
    error: str


Request = SendMessage | Click
Answer = Ack | Refusal


# -- deliverer -> chat client (run/cli-chat.sock) -----------------------------------------


class FilePart(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Small
    data: Annotated[bytes, Meta(max_length=MAX_ATTACHMENT_BYTES)]


class TextFrame(Wire, frozen=True, tag="text"):
    id: str
    text: Text
    files: list[FilePart] = []


class EditFrame(Wire, frozen=True, tag="edit"):
    id: str
    text: Text


class ReactionFrame(Wire, frozen=True, tag="reaction"):
    id: str
    emoji: Small


class QuestionFrame(Wire, frozen=True, tag="question"):
    id: str
    question_id: Small
    title: Small
    question: Text
    options: list[Small]


class TypingFrame(Wire, frozen=True, tag="typing"):
    pass


class SupersededFrame(Wire, frozen=True, tag="superseded"):
    pass


class Received(Wire, frozen=True, tag="received"):
    pass


Frame = TextFrame | EditFrame | ReactionFrame | QuestionFrame | TypingFrame | SupersededFrame

_request_decoder = msgspec.json.Decoder(Request)
_answer_decoder = msgspec.json.Decoder(Answer)
_frame_decoder = msgspec.json.Decoder(Frame)
_received_decoder = msgspec.json.Decoder(Received)
_encoder = msgspec.json.Encoder()


def encode_line(value: Wire) -> bytes:
    return _encoder.encode(value) + b"\n"


def _decode(decoder: msgspec.json.Decoder, line: bytes, what: str, limit: int):  # type: ignore[no-untyped-def, type-arg]
    if len(line) > limit:
        raise DecodeError(f"{what} over {limit} bytes")
    try:
        return decoder.decode(line)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise DecodeError(f"invalid {what}: {exc}") from None
    except RecursionError:
        # msgspec recurses to skip a value while it looks for a union's tag.
        raise DecodeError(f"invalid {what}: nested too deep") from None


def decode_request(line: bytes) -> Request:
    result: Request = _decode(_request_decoder, line, "chat request", MAX_REQUEST_BYTES)
    return result


def decode_answer(line: bytes) -> Answer:
    result: Answer = _decode(_answer_decoder, line, "router answer", MAX_REQUEST_BYTES)
    return result


def decode_frame(line: bytes) -> Frame:
    result: Frame = _decode(_frame_decoder, line, "chat frame", MAX_LINE_BYTES)
    return result


def decode_received(line: bytes) -> Received:
    result: Received = _decode(_received_decoder, line, "receipt", MAX_REQUEST_BYTES)
    return result


def router_socket(layout: Layout) -> Path:
    return layout.cli_socket


def chat_socket(layout: Layout) -> Path:
    return layout.run_dir / "cli-chat.sock"


Kind = Literal["text", "edit", "reaction", "question", "typing", "superseded"]
