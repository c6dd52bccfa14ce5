"""The NanoClaw messaging tools: send_message, send_file, edit_message, add_reaction,
send_card and ask_user_question. Each writes exactly one ``messages_out`` row with a
``nanoclaw_common.messages`` struct (upstream-container.md §5.2, §5.4); delivery takes it
from there. Upstream ran these in a separate MCP process, which lost the batch's in_reply_to
[quirk]; here they run in the runner and carry it.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import msgspec

from agent_runner.destinations import RoutingError, Target
from agent_runner.output import split_text
from agent_runner.tools.base import Tool, ToolContext, ToolError, integer, schema, string
from agent_runner.tools.files import open_regular
from nanoclaw_common import messages
from nanoclaw_common.ids import new_id, original_row_id
from nanoclaw_common.store.outbound import NewOutbound

_SAFE_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.,()+@=-]{0,199}$")
DEFAULT_QUESTION_TIMEOUT_S = 300
QUESTION_POLL_S = 1.0


def resolve(ctx: ToolContext, to: str | None) -> Target:
    try:
        return ctx.destinations.for_tool(to)
    except RoutingError as exc:
        raise ToolError(str(exc)) from None


def row_for(target: Target, content: messages.OutboundContent, **extra: Any) -> NewOutbound:
    return NewOutbound(
        content=content,
        channel_type=target.channel_type,
        platform_id=target.platform_id,
        thread_id=target.thread_id,
        **extra,
    )


# -- send_message -------------------------------------------------------------------------


class SendMessageInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    text: str
    to: str | None = None


def send_message(ctx: ToolContext, args: SendMessageInput) -> str:
    if not args.text.strip():
        raise ToolError("text is required")
    target = resolve(ctx, args.to)
    seqs: list[str] = []
    for part in split_text(args.text, messages.MAX_TEXT_CHARS):
        written = ctx.write(
            row_for(target, messages.SendText(text=part), in_reply_to=ctx.batch.in_reply_to)
        )
        seqs.append(str(written.seq))
    ctx.batch.delivered = True
    return f"Message sent to {target.name} (id: {', '.join(seqs)})"


# -- send_file ----------------------------------------------------------------------------


class SendFileInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: str
    to: str | None = None
    text: str = ""
    filename: str | None = None


def _sendable(ctx: ToolContext, raw: str) -> Path:
    """The real path of a file the agent may send: under the workspace or the session's
    inbox (to forward an attachment), never elsewhere (``/session/runner.json``, ``/proc``)."""
    real = Path(os.path.realpath(ctx.workspace_path(raw)))
    for allowed in (ctx.workspace, ctx.session.inbox):
        root = Path(os.path.realpath(allowed))
        if root in real.parents:
            return real
    raise ToolError(f"{raw} is outside the workspace; only files under /workspace can be sent")


def send_file(ctx: ToolContext, args: SendFileInput) -> str:
    if not args.path:
        raise ToolError("path is required")
    real = _sendable(ctx, args.path)
    filename = args.filename or real.name
    if not _SAFE_FILENAME.match(filename) or ".." in filename:
        raise ToolError(
            f"unsafe filename {filename!r}: use letters, digits, spaces and ._-()+@=, at most 200"
        )
    target = resolve(ctx, args.to)
    message_id = new_id("out")
    folder = ctx.session.outbox_for(message_id)
    with open_regular(real, args.path) as source:
        size = os.fstat(source.fileno()).st_size
        if size > messages.MAX_ATTACHMENT_BYTES:
            raise ToolError(
                f"{args.path} is {size} bytes; the limit is {messages.MAX_ATTACHMENT_BYTES}"
            )
        folder.mkdir(parents=True, exist_ok=True)
        # The row commits after the file is complete: delivery never sees a partial file.
        with open(folder / filename, "xb") as copy:
            shutil.copyfileobj(source, copy)
    content = messages.SendText(text=args.text, files=[filename])
    ctx.write(row_for(target, content, in_reply_to=ctx.batch.in_reply_to, id=message_id))
    ctx.batch.delivered = True
    return f"File sent to {target.name} (id: {message_id}, filename: {filename})"


# -- edit_message and add_reaction --------------------------------------------------------


def platform_message(ctx: ToolContext, seq: int) -> tuple[str, Target]:
    """The platform's id of message #seq (an inbound row's, or a delivered outbound row's)
    and the address to act on it."""
    row = ctx.inbound.get_by_seq(seq)
    if row is not None:
        # Inbound chat ids are '<platform message id>:<agent group id>', with '#<n>' after
        # them when another row held that id (ids.alternative_id).
        suffix = f":{ctx.config.agent_group_id}"
        row_id = original_row_id(row.id)
        platform_id = row_id[: -len(suffix)] if row_id.endswith(suffix) else row_id
        where = (row.channel_type, row.platform_id, row.thread_id)
    else:
        out = ctx.outbound.get_by_seq(seq)
        if out is None:
            raise ToolError(f"Message #{seq} not found")
        delivered = ctx.inbound.platform_message_id(out.id)
        if delivered is None:
            raise ToolError(f"Message #{seq} has not been delivered yet")
        platform_id = delivered
        where = (out.channel_type, out.platform_id, out.thread_id)
    channel_type, chat_id, thread_id = where
    if not channel_type or not chat_id:
        raise ToolError(f"Cannot determine destination for message #{seq}")
    return platform_id, Target(f"#{seq}", channel_type, chat_id, thread_id)


class EditInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    message_id: int
    text: str


def edit_message(ctx: ToolContext, args: EditInput) -> str:
    if args.message_id <= 0 or not args.text.strip():
        raise ToolError("message_id and text are required")
    platform_id, target = platform_message(ctx, args.message_id)
    ctx.write(row_for(target, messages.EditMessage(message_id=platform_id, text=args.text)))
    return f"Message edit queued for #{args.message_id}"


class ReactionInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    message_id: int
    emoji: str


def add_reaction(ctx: ToolContext, args: ReactionInput) -> str:
    emoji = args.emoji.strip().strip(":")
    if args.message_id <= 0 or not emoji:
        raise ToolError("message_id and emoji are required")
    if len(emoji) > 64:
        raise ToolError("emoji is too long: give a shortcode name such as thumbs_up")
    platform_id, target = platform_message(ctx, args.message_id)
    ctx.write(row_for(target, messages.AddReaction(message_id=platform_id, emoji=emoji)))
    return f"Reaction queued for #{args.message_id}"


# -- send_card ----------------------------------------------------------------------------


class CardInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    card: dict[str, Any]
    fallback_text: str = ""
    to: str | None = None


def send_card(ctx: ToolContext, args: CardInput) -> str:
    try:
        card = msgspec.convert(args.card, messages.Card)
    except msgspec.ValidationError as exc:
        raise ToolError(f"invalid card: {exc}") from None
    target = resolve(ctx, args.to)
    content = messages.SendCard(card=card, fallback_text=args.fallback_text)
    written = ctx.write(row_for(target, content))
    ctx.batch.delivered = True
    return f"Card sent (id: {written.id})"


# -- ask_user_question --------------------------------------------------------------------


class OptionInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    label: str
    value: str | None = None
    selected_label: str | None = None


class AskInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    title: str
    question: str
    options: list[str | OptionInput]
    timeout_s: int = DEFAULT_QUESTION_TIMEOUT_S


def question_timeout_s(args: AskInput) -> int:
    return min(max(args.timeout_s, 1), 86_400)


def ask_user_question(ctx: ToolContext, args: AskInput) -> str:
    if not args.title.strip() or not args.question.strip() or not args.options:
        raise ToolError("title, question, and options are required")
    options = [
        messages.QuestionOption(label=o, value=o, selected_label=o)
        if isinstance(o, str)
        else messages.QuestionOption(
            label=o.label,
            value=o.value if o.value is not None else o.label,
            selected_label=o.selected_label if o.selected_label is not None else o.label,
        )
        for o in args.options
    ]
    timeout_s = question_timeout_s(args)
    question_id = new_id("q")
    try:
        content = msgspec.convert(
            {
                "type": "ask_question",
                "question_id": question_id,
                "title": args.title,
                "question": args.question,
                "options": [msgspec.to_builtins(o) for o in options],
                "timeout_s": timeout_s,
            },
            messages.AskQuestion,
        )
    except msgspec.ValidationError as exc:
        raise ToolError(f"invalid question: {exc}") from None
    target = resolve(ctx, None)
    # in_reply_to names whose request this is: delivery makes that person the only one who
    # can answer (pending_questions.target_user_id). The batch's trigger row, not its oldest
    # row, which may be someone else's message kept as context.
    asker = ctx.batch.trigger_id or ctx.batch.in_reply_to
    ctx.write(row_for(target, content, id=question_id, in_reply_to=asker))
    ctx.batch.delivered = True
    return wait_for_answer(ctx, question_id, timeout_s)


def wait_for_answer(ctx: ToolContext, question_id: str, timeout_s: float) -> str:
    """Block until the host writes the ``question_response`` row, then ack it. Woken by
    inbound.db changes (not a 1 s poll); the deadline is on ``ctx.monotonic``."""
    deadline = ctx.monotonic() + timeout_s
    while True:
        row = ctx.inbound.find_question_response(question_id, exclude=ctx.settled)
        if row is not None:
            ctx.ack_completed([row.id])
            answer = messages.decode_inbound_content(row.content)
            assert isinstance(answer, messages.QuestionResponse)
            return answer.selected_option
        left = deadline - ctx.monotonic()
        if left <= 0:
            raise ToolError(f"Question timed out after {timeout_s:g}s")
        if ctx.stop.is_set():
            raise ToolError("Question abandoned: the agent is shutting down")
        ctx.wait_for_inbound(min(left, QUESTION_POLL_S))


TOOLS: list[Tool[Any]] = [
    Tool(
        "send_message",
        "Send a message now, mid-turn (e.g. a quick acknowledgement before slow work). "
        "Without 'to' it goes to the current conversation.",
        schema(
            {
                "text": string("The message text."),
                "to": string("Destination name; omit for the current conversation."),
            },
            ["text"],
        ),
        SendMessageInput,
        send_message,
    ),
    Tool(
        "send_file",
        "Send a file from /workspace as an attachment, with optional text.",
        schema(
            {
                "path": string("Path of the file under /workspace."),
                "to": string("Destination name; omit for the current conversation."),
                "text": string("Text to send with the file."),
                "filename": string("Name to send the file under (default: its own name)."),
            },
            ["path"],
        ),
        SendFileInput,
        send_file,
    ),
    Tool(
        "edit_message",
        "Edit a message you sent earlier, by its id (the id= of a message).",
        schema(
            {
                "message_id": integer("The message's id number."),
                "text": string("The new text."),
            },
            ["message_id", "text"],
        ),
        EditInput,
        edit_message,
    ),
    Tool(
        "add_reaction",
        "React to a message with an emoji, by the message's id.",
        schema(
            {
                "message_id": integer("The message's id number."),
                "emoji": string("Emoji shortcode name, e.g. eyes, white_check_mark, thumbs_up."),
            },
            ["message_id", "emoji"],
        ),
        ReactionInput,
        add_reaction,
    ),
    Tool(
        "ask_user_question",
        "Ask the user a multiple-choice question and wait for the answer (default timeout "
        f"{DEFAULT_QUESTION_TIMEOUT_S}s). Returns the chosen option's value.",
        schema(
            {
                "title": string("Short title of the question card."),
                "question": string("The question."),
                "options": {
                    "type": "array",
                    "description": "The choices: strings, or {label, value?, selected_label?}.",
                    "items": {
                        "anyOf": [
                            {"type": "string"},
                            {
                                "type": "object",
                                "properties": {
                                    "label": {"type": "string"},
                                    "value": {"type": "string"},
                                    "selected_label": {"type": "string"},
                                },
                                "required": ["label"],
                            },
                        ]
                    },
                },
                "timeout_s": integer("Seconds to wait for an answer."),
            },
            ["title", "question", "options"],
        ),
        AskInput,
        ask_user_question,
        declared_timeout_ms=lambda _ctx, args: question_timeout_s(args) * 1000,
    ),
    Tool(
        "send_card",
        "Send a display card: {title, description, children: [text...], actions: "
        "[{label, url, style?}]}. Returns at once.",
        schema(
            {
                "card": {
                    "type": "object",
                    "description": "The card: title, description, children, actions.",
                },
                "fallback_text": string("Text for platforms without cards."),
                "to": string("Destination name; omit for the current conversation."),
            },
            ["card"],
        ),
        CardInput,
        send_card,
    ),
]
