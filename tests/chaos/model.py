"""The chaos suite's model: the fake Messages API's ``responder``, answering like a diligent
assistant whose every reply names the message it answers, so that loss and duplicates can be
counted exactly.

It reads what a real model reads: the newest user turn of the conversation (the runner's
prompt, or tool results plus messages pushed in mid-turn). Every ``<message>`` in it whose
text is ``ping <tag> [<kind>]`` is answered once (a message shown twice in the turn, as after
a retry, is answered once), to the chat it came from (its ``from=`` name), unless a retry
note says its answer already went out. ``<tag>`` is ``<chat name>-<n>``. Kinds:

- (none): ``pong <tag>``;
- ``long``: one reply of ``LONG_PARTS`` paragraphs of ~3,000 characters, which Telegram
  takes in as many messages (``pong <tag> part i/k``);
- ``file``: ``write_file`` ``out/<tag>.txt``, then ``send_file`` it with the text
  ``pong <tag> file`` (a text part, then a document part);
- ``task``: ``pong <tag>`` and ``schedule_task`` due in ``TASK_DELAY_S`` with the prompt
  ``task <tag>`` (the reply goes out before the tool runs: a mid-turn send); when the task
  runs it is answered ``pong task <tag>``;
- ``relay``: asks the agent ``ops`` (``<message to="ops">relay <tag></message>``); ops
  answers ``ack <tag>`` to whoever asked, and that agent then sends ``pong <tag>`` to the
  tag's chat: a reply through two agents;
- ``admin``: ``create_agent`` (refused by delivery: a chat member is no admin; the owner is
  told), and ``pong <tag>``;
- ``mcp``: ``add_mcp_server`` (an approval card to the owner), and ``pong <tag>``.

Everything else in a turn (system notes about refusals and approvals) needs no answer: the
turn ends with an ``<internal>`` note, which the runner neither sends nor nudges about.
"""

from __future__ import annotations

import datetime as dt
import html
import itertools
import json
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from agent_runner.runner import RETRY_QUOTE_CHARS

LONG_PARTS: Final = 3
LONG_PARAGRAPH_CHARS: Final = 3000  # Telegram's limit is 4096: one paragraph a message
TASK_DELAY_S: Final = 2.0
KINDS: Final = frozenset({"", "long", "file", "task", "relay", "admin", "mcp"})

_MESSAGE = re.compile(r'<message id="(\d+)"((?:\s+\w+="[^"]*")*)>([\s\S]*?)</message>')
_TASK = re.compile(r"<task((?:\s+\w+=\"[^\"]*\")*)>[\s\S]*?Instructions:\n(task \S+)\s*</task>")
_ATTR = re.compile(r'(\w+)="([^"]*)"')
_PING = re.compile(r"^ping (\S+)(?: (\w+))?$")
_AGENT_WORD = re.compile(r"^(relay|ack) (\S+)$")
_SYSTEM = re.compile(r"<system>([\s\S]*?)</system>")
_ALREADY_SENT = re.compile(r': "([^"\n]*)"')
_ALREADY_ASKED = re.compile(r"^- a (\w+) request$", re.MULTILINE)


def long_reply(tag: str) -> str:
    paragraphs = []
    for part in range(1, LONG_PARTS + 1):
        head = f"pong {tag} part {part}/{LONG_PARTS} "
        paragraphs.append(head + "x" * (LONG_PARAGRAPH_CHARS - len(head)))
    return "\n\n".join(paragraphs)


def chat_of(tag: str) -> str:
    """The chat a tag belongs to (``tga-17`` → ``tga``)."""
    return tag.rsplit("-", 1)[0]


@dataclass(frozen=True)
class Seen:
    """One thing to answer in the newest user turn."""

    key: str  # what makes it unique in the turn (a message's seq, a task's text)
    origin: str  # the destination name it came from
    words: str  # its text


class ChaosModel:
    """``FakeAnthropic.responder``: a function of the request body (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        # tag -> (time, call number, what this model did about it): for the ledger's
        # account of a lost message (was the model ever asked?).
        self.seen: dict[str, list[tuple[float, int, str]]] = {}

    def history(self, tag: str) -> list[tuple[float, int, str]]:
        with self._lock:
            return list(self.seen.get(tag, []))

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.calls += 1
            call = self.calls
        turn = newest_user_turn(body.get("messages", []))
        texts = [b.get("text", "") for b in turn if b.get("type") == "text"]
        already = already_sent(texts)
        blocks: list[str] = []
        tools: list[dict[str, Any]] = []
        for result in (b for b in turn if b.get("type") == "tool_result"):
            step = continue_tool_chain(str(result.get("tool_use_id", "")))
            if step is not None:
                tools.append(step)
        for item in unique(seen_in(texts)):
            block, tool = answer(item, already)
            blocks += block
            tools += tool
            self._note(item, call, block, tool)
        content: list[dict[str, Any]] = []
        text = "\n".join(blocks)
        if not blocks and not tools:
            text = "<internal>nothing new</internal>"
        if text:
            content.append({"type": "text", "text": text})
        content += tools
        return {"content": content}

    def _note(self, item: Seen, call: int, blocks: list[str], tools: list[dict[str, Any]]) -> None:
        found = re.search(r"(?:ping|relay|ack|task) (\S+)", item.words)
        if found is None:
            return
        did = (
            "; ".join([*blocks, *(f"calls {t['name']}" for t in tools)]) or "nothing (sent before)"
        )
        with self._lock:
            entry = (time.time(), call, did[:80] or "nothing (sent before)")
            self.seen.setdefault(found.group(1), []).append(entry)


def newest_user_turn(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not messages or messages[-1].get("role") != "user":
        return []
    content = messages[-1].get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def already_sent(texts: Iterable[str]) -> set[str]:
    """What a retry note says went out already: each reply's text (the runner quotes it),
    and ``tool:<name>`` for each request a tool made (``a schedule_task request``)."""
    found: set[str] = set()
    for text in texts:
        for note in _SYSTEM.findall(text):
            found.update(_ALREADY_SENT.findall(note))
            found.update(f"tool:{name}" for name in _ALREADY_ASKED.findall(note))
    return found


def seen_in(texts: Iterable[str]) -> list[Seen]:
    found: list[Seen] = []
    for text in texts:
        for seq, attrs, words in _MESSAGE.findall(text):
            origin = dict(_ATTR.findall(attrs)).get("from", "")
            found.append(Seen(f"m{seq}", origin, unescape(words).strip()))
        for attrs, words in _TASK.findall(text):
            origin = dict(_ATTR.findall(attrs)).get("from", "")
            found.append(Seen(f"t{words}", origin, words))
    return found


def unique(items: list[Seen]) -> list[Seen]:
    kept: dict[str, Seen] = {}
    for item in items:
        kept.setdefault(item.key, item)
    return list(kept.values())


def unescape(text: str) -> str:
    return html.unescape(text)


def block(to: str, text: str) -> str:
    return f'<message to="{to}">{text}</message>'


_TOOL_IDS = itertools.count(1)


def tool(name: str, tag: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A tool call; its id is unique (a retried batch calls again) and names the tag."""
    use_id = f"toolu_{next(_TOOL_IDS)}_{name}__{tag}"
    return {"type": "tool_use", "id": use_id, "name": name, "input": arguments}


def answer(item: Seen, already: set[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """The ``<message>`` blocks and tool calls that answer one item."""
    if item.words.startswith("task "):
        tag = item.words.split(" ", 1)[1]
        return _once([block(item.origin, f"pong task {tag}")], already), []
    agent_word = _AGENT_WORD.match(item.words)
    if agent_word is not None:
        verb, tag = agent_word.groups()
        if verb == "relay":
            return _once([block(item.origin, f"ack {tag}")], already), []
        return _once([block(chat_of(tag), f"pong {tag}")], already), []
    ping = _PING.match(item.words)
    if ping is None or (ping.group(2) or "") not in KINDS:
        return [], []
    tag, kind = ping.group(1), ping.group(2) or ""
    pong = f"pong {tag}"
    if kind == "long":
        return _once([block(item.origin, long_reply(tag))], already), []
    if kind == "relay":
        return _once([block("ops", f"relay {tag}")], already), []
    if kind == "file":
        if f"{pong} file" in already:
            return [], []
        path = f"out/{tag}.txt"
        # The destination rides in the tool id: the next step needs it.
        return [], [tool("write_file", f"{tag}__{item.origin}", {"path": path, "content": tag})]
    calls: list[dict[str, Any]] = []
    if kind == "task":
        due = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=TASK_DELAY_S)
        when = due.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        calls.append(tool("schedule_task", tag, {"prompt": f"task {tag}", "process_after": when}))
    elif kind == "admin":
        calls.append(tool("create_agent", tag, {"name": f"helper {tag}"}))
    elif kind == "mcp":
        calls.append(tool("add_mcp_server", tag, {"name": "probe", "command": "true"}))
    # A retried batch does again only what its retry note does not list (the runner's
    # rolled-back turn left no other trace of a tool call that went through).
    calls = [call for call in calls if f"tool:{call['name']}" not in already]
    return _once([block(item.origin, pong)], already), calls


def continue_tool_chain(tool_use_id: str) -> dict[str, Any] | None:
    """The next call of a multi-step answer, from the id of the call just answered."""
    marker = "_write_file__"
    if marker not in tool_use_id:
        return None
    tag, origin = tool_use_id.split(marker, 1)[1].split("__", 1)
    arguments = {"path": f"out/{tag}.txt", "to": origin, "text": f"pong {tag} file"}
    return tool("send_file", tag, arguments)


def _once(blocks: list[str], already: set[str]) -> list[str]:
    """Leave out blocks whose text a retry note lists as sent."""
    kept = []
    for item in blocks:
        inner = item.split(">", 1)[1].rsplit("</message>", 1)[0]
        # The runner quotes at most RETRY_QUOTE_CHARS of a reply, then an ellipsis.
        if inner not in already and inner[:RETRY_QUOTE_CHARS] + "…" not in already:
            kept.append(item)
    return kept


def dumps(body: dict[str, Any]) -> str:
    """The request's text, for a hold's predicate (``"ping tgb-12" in dumps(body)``)."""
    return json.dumps(body.get("messages", [])[-1:])
