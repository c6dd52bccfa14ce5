"""The conversation with the model, kept in ``agent/state/conversation.json`` so a restarted
container resumes it (upstream kept a Claude Code session id; we keep the messages).

The file is rewritten atomically (temp file, fsync, rename) after every change, so a SIGKILL
leaves either the old or the new version. A kill can still stop the runner between a
``tool_use`` and its result; the Messages API refuses such a history, so ``add_user`` first
answers every unanswered ``tool_use`` with an error result ("interrupted") and merges into a
trailing user message instead of starting a second one.

**The open turn.** While a batch is being answered, the state records which inbound rows the
turn answers and where it began (``OpenTurn``). The runner closes it only after the batch's
answer and ack have committed. A run that finds an open turn whose rows are not all settled
knows the previous run died in it: it rolls the conversation back to where that turn began
(``reconcile``), so the dead batch is not left dangling as the last user turn, where the next
batch would be merged into it and the model would answer both. The dead batch's rows come
again through the host's retry path (``tries + 1``, backoff) and are answered then, once,
told what was already sent for them. A turn that ended with an error the user was told about
is closed with a note instead (``close_turn``), so the next batch starts a turn of its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
from loguru import logger

from agent_runner.diskfull import DiskWait
from agent_runner.model import ApiMessage, Block
from agent_runner.paths import write_replacing

log = logger.bind(component="conversation")

STATE_VERSION = 1
INTERRUPTED = "Interrupted: the agent runner restarted before this tool call finished."


class OpenTurn(msgspec.Struct, kw_only=True):
    """The turn being answered: its inbound rows and where it began."""

    rows: list[str]
    start: int  # messages[:start] is the conversation before the turn
    # After a compaction inside the turn: the conversation to go back to (the summary), in
    # place of messages[:start].
    base: list[ApiMessage] | None = None


class ConversationState(msgspec.Struct, kw_only=True):
    version: int = STATE_VERSION
    messages: list[ApiMessage] = []
    open_turn: OpenTurn | None = None
    # Context tokens the last response reported, and characters added since: together an
    # estimate of the next call's size, for the compaction decision.
    context_tokens: int = 0
    chars_since_usage: int = 0
    compactions: int = 0


def _blocks(content: Any) -> list[Block]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content)


def unanswered_tool_uses(messages: list[ApiMessage]) -> list[str]:
    """Ids of the last assistant message's tool_use blocks when no user message follows."""
    if not messages or messages[-1].get("role") != "assistant":
        return []
    return [
        str(block["id"])
        for block in _blocks(messages[-1].get("content", []))
        if block.get("type") == "tool_use"
    ]


def with_user(messages: list[ApiMessage], blocks: list[Block]) -> list[ApiMessage]:
    """``messages`` plus a user turn holding ``blocks`` (a new list; the input is untouched).
    Unanswered tool calls get an error result first; a trailing user message is extended."""
    result = list(messages)
    missing = unanswered_tool_uses(result)
    answered = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
    repairs: list[Block] = [
        {"type": "tool_result", "tool_use_id": tid, "content": INTERRUPTED, "is_error": True}
        for tid in missing
        if tid not in answered
    ]
    if repairs:
        log.warning("answering {} interrupted tool call(s)", len(repairs))
    # tool_result blocks must come first in their user message.
    new_blocks = repairs + blocks
    if result and result[-1].get("role") == "user":
        last = result[-1]
        result[-1] = {"role": "user", "content": _blocks(last.get("content", [])) + new_blocks}
    else:
        result.append({"role": "user", "content": new_blocks})
    return result


def text_chars(blocks: list[Block]) -> int:
    return len(msgspec.json.encode(blocks))


class Conversation:
    def __init__(self, path: Path, *, disk: DiskWait | None = None) -> None:
        self.path = path
        self.state = ConversationState()
        self.disk = disk  # saves wait out a full disk (diskfull.py); None: they raise

    @classmethod
    def load(cls, path: Path, *, disk: DiskWait | None = None) -> Conversation:
        conversation = cls(path, disk=disk)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return conversation
        try:
            conversation.state = msgspec.json.decode(data, type=ConversationState)
        except msgspec.DecodeError as exc:
            # A damaged file must not wedge the session: keep it for inspection, start afresh.
            broken = path.with_name(path.name + ".broken")
            os.replace(path, broken)
            log.error("conversation state unreadable ({}); moved to {}", exc, broken)
        return conversation

    @property
    def messages(self) -> list[ApiMessage]:
        return self.state.messages

    def save(self) -> None:
        def write() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_replacing(self.path, msgspec.json.encode(self.state), fsync=True)

        if self.disk is None:
            write()
        else:
            self.disk.until_written(write, "the conversation state")

    def add_user(self, blocks: list[Block]) -> None:
        self.state.messages = with_user(self.state.messages, blocks)
        self.state.chars_since_usage += text_chars(blocks)
        self.save()

    def add_user_text(self, text: str) -> None:
        self.add_user([{"type": "text", "text": text}])

    def add_assistant(self, content: list[Block], context_tokens: int) -> None:
        self.state.messages.append({"role": "assistant", "content": content})
        self.state.context_tokens = context_tokens
        self.state.chars_since_usage = 0
        self.save()

    def estimated_tokens(self) -> int:
        """The next call's likely input size: the last reported size plus ~4 chars a token
        for what was added since (an overestimate for JSON, which errs on the safe side)."""
        return self.state.context_tokens + self.state.chars_since_usage // 4

    def replace(self, messages: list[ApiMessage], *, summary: ApiMessage | None = None) -> None:
        """After compaction: the summary stands in for everything before. ``summary`` is the
        summary message alone: an open turn rolls back to it (the turn's own prompt may have
        been kept after it, in the same message)."""
        self.state.messages = messages
        self.state.context_tokens = 0
        self.state.chars_since_usage = sum(text_chars(_blocks(m["content"])) for m in messages)
        self.state.compactions += 1
        if self.state.open_turn is not None:
            self.state.open_turn.start = 0
            self.state.open_turn.base = [summary] if summary is not None else []
        self.save()

    def clear(self) -> None:
        self.state = ConversationState()
        self.save()

    # -- the open turn --------------------------------------------------------------------

    def begin_turn(self, row_ids: list[str]) -> None:
        """Mark the start of a turn answering ``row_ids`` (saved with the turn's prompt).
        A history that still ends unanswered (written by an older version) is closed first,
        so the turn starts a message of its own and a roll-back removes only the turn."""
        messages = self.state.messages
        if (messages and messages[-1].get("role") != "assistant") or unanswered_tool_uses(messages):
            self._close("(This earlier turn was interrupted.)")
        self.state.open_turn = OpenTurn(rows=list(row_ids), start=len(self.state.messages))

    def extend_turn(self, row_ids: list[str]) -> None:
        """Rows pushed into the open turn (follow-ups): answered and acked with it."""
        if self.state.open_turn is not None:
            self.state.open_turn.rows += [i for i in row_ids if i not in self.state.open_turn.rows]
            self.save()

    def end_turn(self) -> None:
        """The turn's answer and ack have committed: nothing to roll back any more."""
        if self.state.open_turn is not None:
            self.state.open_turn = None
            self.save()

    def close_turn(self, note: str) -> None:
        """The turn ended with an error the user was told about (its rows are settled): end
        it with ``note`` as the assistant's last word, so the history is well formed and the
        next batch starts a turn of its own."""
        self._close(note)
        self.state.open_turn = None
        self.save()

    def abandon_turn(self) -> list[str]:
        """Roll the conversation back to where the open turn began; return its rows. For a
        turn whose rows will be answered again (a dead run's, or one given back for a retry)."""
        turn = self.state.open_turn
        if turn is None:
            return []
        if turn.base is not None:
            # The summary is a user message: end it here, so the next turn's prompt starts a
            # message of its own rather than being taken for a dangling one.
            self.state.messages = list(turn.base)
            self._close("(Noted: I continue from this summary.)")
        else:
            self.state.messages = self.state.messages[: turn.start]
        self.state.open_turn = None
        self.state.chars_since_usage = sum(
            text_chars(_blocks(m["content"])) for m in self.state.messages
        )
        self.state.context_tokens = 0
        self.save()
        return turn.rows

    def reconcile(self, settled: set[str]) -> list[str]:
        """At the start of a run: an open turn left by the previous run. If every one of its
        rows is settled (acked), it had committed and only the bookkeeping was lost: it is
        kept. Otherwise that run died in it: it is rolled back, and its rows (returned) are
        answered when they come due again."""
        turn = self.state.open_turn
        if turn is None:
            return []
        if set(turn.rows) <= settled:
            self.end_turn()
            return []
        dropped = self.abandon_turn()
        log.info("rolled back a turn the previous run died in ({} message(s))", len(dropped))
        return dropped

    def _close(self, note: str) -> None:
        messages = self.state.messages
        if unanswered_tool_uses(messages):
            messages = with_user(messages, [])
        if messages and messages[-1].get("role") == "user":
            messages = [
                *messages,
                {"role": "assistant", "content": [{"type": "text", "text": note}]},
            ]
        self.state.messages = messages
