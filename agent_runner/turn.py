"""One turn: the model/tool loop that answers a prompt.

The loop calls the model, runs the tools it asks for, feeds the results back, and repeats
until the model ends its turn. Along the way:

- every response's text is parsed; its ``<message to>`` blocks are sent at once (a block
  before a slow tool call is an acknowledgement), per-destination threaded;
- messages that arrive while tools run are claimed and pushed in with the tool results
  (upstream pushed follow-ups into the live query); the accumulate gate applies to them too
  (upstream skipped it [quirk]);
- when the turn ends with nothing delivered since the last push but with scratchpad text,
  one nudge asks for wrapped output; unknown destinations get one note naming the real ones.
  Only one such correction per stretch, so a model that never wraps cannot loop;
- before each call, a conversation past ``compaction.compact_threshold`` is compacted;
- a turn stops after ``max_turns_per_batch`` model calls (a runaway loop).

The system prompt and the tool list carry cache breakpoints, and so does the newest message,
so each call reads the conversation so far from the prompt cache.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger

from agent_runner import compaction, prompts, tools
from agent_runner.conversation import Conversation, with_user
from agent_runner.formatter import resolve_zone
from agent_runner.model import ApiMessage, Block, ModelError, ModelRequest, ModelResponse, Provider
from agent_runner.output import parse_output, split_text
from agent_runner.paths import RunnerPaths
from agent_runner.tools import ToolContext, ToolError
from agent_runner.tools.files import open_regular
from nanoclaw_common import messages
from nanoclaw_common.clock import now_ms
from nanoclaw_common.store.outbound import NewOutbound

log = logger.bind(component="turn")

MAX_OUTPUT_TOKENS = 8192
MAX_MEMORY_CHARS = 50_000
CACHE = {"type": "ephemeral"}

# () -> the formatted prompt of messages that arrived mid-turn (now claimed), or None.
FollowUps = Callable[[], str | None]


class TurnLimitReached(Exception):
    def __init__(self, calls: int) -> None:
        super().__init__(f"stopped after {calls} model calls in one turn")
        self.calls = calls


def with_cache_breakpoint(messages_: list[ApiMessage]) -> list[ApiMessage]:
    """A copy whose newest message's last block carries ``cache_control``."""
    if not messages_:
        return messages_
    result = list(messages_)
    last = copy.deepcopy(result[-1])
    content = last.get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if content and content[-1].get("type") in ("text", "tool_result", "tool_use", "image"):
        content[-1]["cache_control"] = CACHE
    last["content"] = content
    result[-1] = last
    return result


class TurnEngine:
    def __init__(
        self,
        *,
        provider: Callable[[], Provider],
        conversation: Conversation,
        ctx: ToolContext,
        paths: RunnerPaths,
        follow_ups: FollowUps,
    ) -> None:
        self._provider = provider
        self.conversation = conversation
        self.ctx = ctx
        self.paths = paths
        self.follow_ups = follow_ups
        self.threshold = compaction.compact_threshold(
            ctx.config.model, ctx.config.compact_at_tokens
        )
        self.calls = 0  # model calls in this run
        self.batch_calls = 0  # ... in the current turn; container_state.turns mirrors it

    # -- prompt pieces --------------------------------------------------------------------

    def system_prompt(self) -> list[Block]:
        """Rebuilt per call from live state: destinations added mid-run (create_agent) and
        memory the agent just edited are seen at once (upstream fixed it at start-up)."""
        parts = [prompts.BASE_INSTRUCTIONS]
        memory = read_memory(self.paths)
        if memory.strip():
            parts.append(f"## Your memory (AGENT.md)\n\n{memory.strip()}")
        parts.append(
            prompts.system_addendum(self.ctx.config.assistant_name, self.ctx.destinations.all())
        )
        return [{"type": "text", "text": "\n\n".join(parts), "cache_control": CACHE}]

    def call(self, request: ModelRequest) -> ModelResponse:
        limit = self.ctx.config.max_turns_per_batch
        if self.batch_calls >= limit:
            raise TurnLimitReached(self.batch_calls)
        self.calls += 1
        self.batch_calls += 1
        self.ctx.disk.best_effort(self.ctx.outbound.count_turn, "the turn count")
        self.ctx.faults.crash("before_model_call", self.ctx.batch.answers)
        return self._provider().create(request)

    # -- compaction -----------------------------------------------------------------------

    def compact(self, *, force: bool = False) -> bool:
        """Summarize and archive when the conversation nears the context window (or always,
        with ``force``). A fresh prompt at the end is kept verbatim after the summary."""
        msgs = self.conversation.messages
        if not force and self.conversation.estimated_tokens() < self.threshold:
            return False
        keep: list[ApiMessage] = []
        if (
            msgs
            and msgs[-1].get("role") == "user"
            and all(b.get("type") == "text" for b in _blocks(msgs[-1]))
        ):
            keep, msgs = [msgs[-1]], msgs[:-1]
        if not msgs:
            return False
        log.info(
            "compacting conversation (~{} tokens, {} messages)",
            self.conversation.estimated_tokens(),
            len(msgs),
        )
        destinations = self.ctx.destinations.all()
        request = ModelRequest(
            system=self.system_prompt(),
            tools=tools.definitions(self.ctx.mcp),
            messages=with_cache_breakpoint(
                with_user(
                    msgs, [{"type": "text", "text": prompts.compaction_instructions(destinations)}]
                )
            ),
            max_tokens=MAX_OUTPUT_TOKENS,
            tool_choice={"type": "none"},
        )
        try:
            title, summary = compaction.split_summary(self.call(request).text())
        except ModelError as exc:
            if not exc.context_overflow:
                raise
            # Too long even to summarize: archive it and start over with a pointer to it.
            title, summary = None, ""
        zone = resolve_zone(self.ctx.config.tz)[1]
        archived = compaction.archive_transcript(
            msgs,
            self.paths.archive_dir,
            title=title,
            assistant_name=self.ctx.config.assistant_name,
            now_ms=now_ms(),
            zone=zone,
        )
        where = f"/workspace/conversations/{archived.name}" if archived else "(nothing archived)"
        if not summary:
            summary = f"(No summary: the conversation was too long. Its transcript is at {where}.)"
        else:
            summary += f"\n\n(Full transcript: {where})"
        # Mid-turn (the history ends with tool results awaiting the model): tell it to go on.
        mid_turn = not keep and msgs[-1].get("role") == "user"
        opening = prompts.compacted_opening(summary, mid_turn=mid_turn)
        summary_message: ApiMessage = {
            "role": "user",
            "content": [{"type": "text", "text": opening}],
        }
        new_messages: list[ApiMessage] = [summary_message]
        if keep:
            new_messages = with_user(new_messages, _blocks(keep[0]))
        self.conversation.replace(new_messages, summary=summary_message)
        log.info("conversation compacted; transcript archived to {}", where)
        return True

    # -- output ---------------------------------------------------------------------------

    def plan(self, text: str) -> tuple[list[NewOutbound], list[str], str]:
        """The rows the ``<message to>`` blocks of ``text`` make, not yet written; the
        unknown destinations; the scratchpad."""
        parsed = parse_output(text)
        planned: list[NewOutbound] = []
        unknown: list[str] = []
        for block in parsed.blocks:
            entry = self.ctx.destinations.find(block.to)
            addressed = (
                self.ctx.destinations.for_block(
                    entry, self.ctx.batch.rows, self.ctx.batch.in_reply_to
                )
                if entry
                else None
            )
            if addressed is None:
                log.warning('unknown destination in <message to="{}">, dropping block', block.to)
                unknown.append(block.to)
                continue
            if not block.body:
                log.info('empty <message to="{}"> block, nothing to send', block.to)
                continue
            target, in_reply_to = addressed
            planned += [
                NewOutbound(
                    content=messages.SendText(text=part),
                    channel_type=target.channel_type,
                    platform_id=target.platform_id,
                    thread_id=target.thread_id,
                    in_reply_to=in_reply_to,
                    answers=self.ctx.batch.answers,
                )
                for part in split_text(block.body, messages.MAX_TEXT_CHARS)
            ]
        if parsed.scratchpad:
            log.debug("scratchpad: {}", parsed.scratchpad[:500])
        return planned, unknown, parsed.scratchpad

    def send(self, planned: list[NewOutbound]) -> None:
        """Write rows at once: output that comes before more work (a tool call, a note)."""
        for new in planned:
            written = self.ctx.write(new)
            log.info("message written", message=written.id, seq=written.seq)
        if planned:
            self.ctx.batch.delivered = True

    # -- the loop -------------------------------------------------------------------------

    def run(self, prompt: str) -> list[NewOutbound]:
        """Answer ``prompt`` (the batch ``ctx.batch``): the turn's final output rows, **not
        yet written**. The caller writes them together with the batch's ack
        (``OutboundStore.write_and_ack``), so a runner killed in between never leaves an
        answer whose batch will be answered again, and then closes the conversation's open
        turn. Raises ``ModelError`` or ``TurnLimitReached``; everything already sent stays
        sent, and the conversation keeps what happened."""
        if self.ctx.mcp is not None:
            self.ctx.mcp.start()  # first turn only: their tools join the list from now on
        self.conversation.begin_turn(list(self.ctx.batch.answers))
        self.conversation.add_user_text(prompt)
        self.ctx.batch.delivered = False
        corrected = False
        unknown: list[str] = []
        self.batch_calls = 0
        overflow_retried = False
        while True:
            self.compact()
            request = ModelRequest(
                system=self.system_prompt(),
                tools=tools.definitions(self.ctx.mcp),
                messages=with_cache_breakpoint(self.conversation.messages),
                max_tokens=MAX_OUTPUT_TOKENS,
            )
            try:
                response = self.call(request)
            except ModelError as exc:
                if exc.context_overflow and not overflow_retried:
                    overflow_retried = True
                    self.compact(force=True)
                    continue
                raise
            self.conversation.add_assistant(response.content, response.usage.context_tokens)
            planned, new_unknown, scratchpad = self.plan(response.text())
            unknown += new_unknown
            if response.stop_reason == "tool_use":
                self.send(planned)
                if self._run_tools(response):
                    corrected, unknown = False, []  # new messages: a new stretch
                continue
            if response.stop_reason == "pause_turn":
                self.send(planned)
                continue  # a server tool paused; sending the response back resumes it
            delivered = self.ctx.batch.delivered or bool(planned)
            note = None
            if not corrected and unknown:
                note = prompts.unknown_destinations_note(unknown, self.ctx.destinations.all())
            elif not corrected and not delivered and scratchpad:
                log.warning('agent output had no <message to="..."> blocks; nudging once')
                note = prompts.nudge(self.ctx.destinations.all())
            if note is None:
                return planned
            self.send(planned)
            corrected = True
            unknown = []
            self.conversation.add_user_text(note)

    def _run_tools(self, response: ModelResponse) -> bool:
        """Run the response's tool calls; True when follow-up messages went in too."""
        results: list[Block] = []
        for use in response.tool_uses():
            name = str(use.get("name", ""))
            log.info("tool {} called", name)
            text, is_error = tools.execute(self.ctx, name, use.get("input", {}))
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": use.get("id"),
                "content": text,
            }
            if is_error:
                result["is_error"] = True
            results.append(result)
        extra = self.follow_ups()
        if extra is not None:
            results.append({"type": "text", "text": extra})
            self.ctx.batch.delivered = False
        self.conversation.add_user(results)
        return extra is not None


def read_memory(paths: RunnerPaths) -> str:
    """AGENT.md, when it is a regular file inside the workspace. The agent can replace it
    with anything (a FIFO would hang the runner, a symlink could pull in files from outside
    the workspace), so it is read like any tool path."""
    root = os.path.realpath(paths.workspace)
    real = os.path.realpath(paths.memory_file)
    if os.path.dirname(real) != root:
        return ""
    try:
        with open_regular(Path(real), "AGENT.md") as handle:
            return handle.read(MAX_MEMORY_CHARS * 4).decode("utf-8", errors="replace")[
                :MAX_MEMORY_CHARS
            ]
    except ToolError:
        return ""


def _blocks(message: ApiMessage) -> list[Block]:
    content = message.get("content", [])
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content)
