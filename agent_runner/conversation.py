"""The conversation with the model, kept in ``agent/state/conversation.json`` so a restarted
container resumes it (upstream kept a Claude Code session id; we keep the messages).

The file is rewritten atomically (temp file, fsync, rename) after every change, so a SIGKILL
leaves either the old or the new version. A kill can still stop the runner between a
``tool_use`` and its result; the Messages API refuses such a history, so ``add_user`` first
answers every unanswered ``tool_use`` with an error result ("interrupted") and merges into a
trailing user message instead of starting a second one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
from loguru import logger

from agent_runner.model import ApiMessage, Block
from agent_runner.paths import write_replacing

log = logger.bind(component="conversation")

STATE_VERSION = 1
INTERRUPTED = "Interrupted: the agent runner restarted before this tool call finished."


class ConversationState(msgspec.Struct, kw_only=True):
    version: int = STATE_VERSION
    messages: list[ApiMessage] = []
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
    def __init__(self, path: Path) -> None:
        self.path = path
        self.state = ConversationState()

    @classmethod
    def load(cls, path: Path) -> Conversation:
        conversation = cls(path)
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_replacing(self.path, msgspec.json.encode(self.state), fsync=True)

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

    def replace(self, messages: list[ApiMessage]) -> None:
        """After compaction: the summary stands in for everything before."""
        self.state.messages = messages
        self.state.context_tokens = 0
        self.state.chars_since_usage = sum(text_chars(_blocks(m["content"])) for m in messages)
        self.state.compactions += 1
        self.save()

    def clear(self) -> None:
        self.state = ConversationState()
        self.save()
