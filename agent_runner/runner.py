"""The poll loop (upstream-container.md §2, DESIGN.md §4): pick due pending rows, claim them
for this run, answer them with one turn, ack them.

Picking: pending rows whose ``process_after`` has passed, not acked by any run, the newest
``max_messages_per_prompt`` of them given oldest first; ``on_wake`` rows only on this run's
first poll; ``trigger=0`` rows only as context (a batch without a trigger row waits); system
rows (question answers) are never prompted. When the newest rows are all context but an older
trigger row waits behind them, the batch is the window ending at that trigger row (upstream
left it waiting for the next trigger).

Between batches the loop sleeps on ``ChangeWatcher`` (inotify on inbound.db), so a new row is
claimed within milliseconds; the sleep is bounded by the next not-yet-due row's time, and by
the moment an idle runner sheds the model SDK (``shed``: the loop ends and ``main()``
re-execs the process).

Acks: ``completed`` when the turn ran; ``failed`` when the model call failed (the user was
told, with the error, in the batch's chat). The host decides about retries only for claims a
dead run left ``processing``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from loguru import logger

from agent_runner import shed
from agent_runner.compaction import archive_transcript
from agent_runner.conversation import Conversation
from agent_runner.destinations import Destinations, Target
from agent_runner.formatter import decode_content, format_batch, resolve_zone
from agent_runner.mcp import McpTools
from agent_runner.model import ModelError, Provider
from agent_runner.paths import RunnerPaths
from agent_runner.task_script import run_task_script
from agent_runner.tools import Batch, ToolContext
from agent_runner.turn import TurnEngine, TurnLimitReached
from agent_runner.watch import ChangeWatcher
from nanoclaw_common import messages
from nanoclaw_common.clock import now_ms
from nanoclaw_common.runner_config import RunnerConfig
from nanoclaw_common.store.inbound import InboundReader
from nanoclaw_common.store.outbound import NewOutbound, OutboundStore
from nanoclaw_common.store.rows import InboundRow

log = logger.bind(component="runner")

SCAN_LIMIT = 500  # pending rows looked at per poll (the batch is at most max_messages_per_prompt)
SAFETY_WAKE_S = 2.0  # longest idle sleep: a missed change event costs at most this
ERROR_BACKOFF_S = 1.0


def command_of(row: InboundRow) -> str | None:
    """The slash command a chat row carries (its first word, lower-cased), if any. An exact
    word match: upstream's prefix test made ``/clearance`` a /clear [quirk]."""
    if row.kind != "chat":
        return None
    content = decode_content(row)
    if not isinstance(content, messages.ChatContent):
        return None
    words = content.text.strip().split(maxsplit=1)
    if not words or not words[0].startswith("/"):
        return None
    return words[0].lower()


RUNNER_COMMANDS = ("/clear", "/compact")


def has_script(row: InboundRow) -> bool:
    content = decode_content(row) if row.kind == "task" else None
    return isinstance(content, messages.TaskContent) and bool(content.script)


def select_batch(rows: Sequence[InboundRow], limit: int) -> list[InboundRow]:
    """From pending rows (oldest first), the batch to answer now, or [] to wait."""
    newest = list(rows[-limit:])
    if any(r.trigger for r in newest):
        return newest
    trigger_at = max((i for i, r in enumerate(rows) if r.trigger), default=None)
    if trigger_at is None:
        return []  # only context so far: it rides along with the next trigger row
    return list(rows[max(0, trigger_at - limit + 1) : trigger_at + 1])


class Runner:
    def __init__(
        self,
        *,
        config: RunnerConfig,
        paths: RunnerPaths,
        run_id: str,
        provider: Callable[[], Provider],
        stop: threading.Event,
        watcher: ChangeWatcher | None = None,
        resumed: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
        sdk_loaded: Callable[[], bool] = shed.sdk_loaded,
    ) -> None:
        """``resumed``: this process replaced a runner of the same run that shed the model SDK
        (``shed``); it continues that run instead of starting one."""
        self.config = config
        self.paths = paths
        self.run_id = run_id
        self._provider = provider
        self.stop = stop
        self.watcher = watcher or ChangeWatcher(paths.session.inbound_db)
        self.resumed = resumed
        # on_wake rows belong to a freshly started container, not to a re-exec of one.
        self.first_poll = not resumed
        self.batches = 0
        self.failures = 0
        self._claimed: list[str] = []
        self._monotonic = monotonic
        self._sdk_loaded = sdk_loaded
        self._idle_since_s = monotonic()
        self._due_rows = 0  # the batch size the last poll found
        self._in_turn = False

    # -- lifecycle ------------------------------------------------------------------------

    def setup(self, *, now: int | None = None) -> None:
        self.inbound = InboundReader(self.paths.session.inbound_db)
        self.outbound = OutboundStore(self.paths.session.outbound_db)
        if self.resumed and self.outbound.resume_run(self.run_id, now=now):
            log.debug("run resumed: its claims and start time kept", run=self.run_id)
        else:
            if self.resumed:
                # Another run took the session over meanwhile: behave as any fresh start.
                log.warning("cannot resume: container_state names another run", run=self.run_id)
            dropped = self.outbound.start_run(self.run_id, now=now)
            if dropped:
                log.info("dropped {} claim(s) of earlier runs", dropped, run=self.run_id)
        self.destinations = Destinations(self.inbound)
        self.ctx = ToolContext(
            inbound=self.inbound,
            outbound=self.outbound,
            destinations=self.destinations,
            run_id=self.run_id,
            config=self.config,
            session=self.paths.session,
            workspace=self.paths.workspace,
            stop=self.stop,
            wait_for_inbound=self.watcher.wait,
            settled=self.outbound.settled_ids(),
            mcp=McpTools(self.config.mcp_servers, self.paths.workspace)
            if self.config.mcp_servers
            else None,
        )
        self.conversation = Conversation.load(self.paths.conversation_file)
        if self.conversation.messages:
            log.info("resuming conversation ({} messages)", len(self.conversation.messages))
        self.engine = TurnEngine(
            provider=self._provider,
            conversation=self.conversation,
            ctx=self.ctx,
            paths=self.paths,
            follow_ups=self.follow_ups,
        )

    def teardown(self, *, shedding: bool = False) -> None:
        """Close what the process holds: MCP server processes, the DBs, the watcher (before a
        re-exec too: nothing else needs flushing, every change was committed or fsynced as
        it happened)."""
        log.info(
            "{}: {} batch(es) handled, {} failed, {} model call(s)",
            "winding down for the re-exec" if shedding else "stopping",
            self.batches,
            self.failures,
            self.engine.calls,
            run=self.run_id,
        )
        if self.ctx.mcp is not None:
            self.ctx.mcp.close()
        self.inbound.close()
        self.outbound.close()
        self.watcher.close()

    def run(self) -> bool:
        """Poll until stopped. True when the loop ended to shed the model SDK: the caller
        re-execs the process (``shed.reexec``) once this has torn down."""
        self.setup()
        shedding = False
        try:
            while not self.stop.is_set():
                try:
                    worked = self.step()
                    if not worked and self.shed_due():
                        shedding = True
                        return True
                except Exception:
                    # A storage hiccup (busy past the timeout, a vanished file) must not end
                    # the runner; an error that persists is logged every second.
                    log.exception("poll failed")
                    self.stop.wait(ERROR_BACKOFF_S)
                    continue
                if not worked:
                    self.watcher.wait(self.idle_timeout_s())
            return False
        finally:
            self.teardown(shedding=shedding)

    def idle_timeout_s(self, now: int | None = None, *, now_s: float | None = None) -> float:
        """How long the idle wait may last: until the next not-yet-due row, the moment to
        shed the SDK, or ``SAFETY_WAKE_S``, whichever comes first."""
        stamp = now_ms() if now is None else now
        timeout = SAFETY_WAKE_S
        due = self.inbound.next_due_after(stamp)
        if due is not None:
            timeout = min(timeout, max(0.0, (due - stamp) / 1000))
        mono = self._monotonic() if now_s is None else now_s
        until_shed = shed.seconds_until_shed(
            self.activity(), shed_after_s=self.config.shed_after_s, now_s=mono
        )
        if until_shed is not None:
            timeout = min(timeout, until_shed)
        return timeout

    # -- shedding the model SDK (shed.py) -------------------------------------------------

    def activity(self) -> shed.Activity:
        state = self.outbound.container_state()
        return shed.Activity(
            sdk_loaded=self._sdk_loaded(),
            due_rows=self._due_rows,
            claimed=len(self._claimed),
            in_turn=self._in_turn,
            tool=state.current_tool if state is not None else None,
            idle_since_s=self._idle_since_s,
        )

    def shed_due(self, *, now_s: float | None = None) -> bool:
        """Whether to shed the SDK now; logs the decision."""
        mono = self._monotonic() if now_s is None else now_s
        if not shed.should_shed(self.activity(), shed_after_s=self.config.shed_after_s, now_s=mono):
            return False
        idle_s = mono - self._idle_since_s
        log.info("shedding the model SDK after {:.0f} s idle", idle_s, run=self.run_id)
        return True

    # -- one poll -------------------------------------------------------------------------

    def pending(self, *, now: int | None, first_poll: bool) -> list[InboundRow]:
        rows = self.inbound.pending_messages(
            limit=SCAN_LIMIT,
            first_poll=first_poll,
            exclude=self.ctx.settled.union(self._claimed),
            now=now,
        )
        answers = [r.id for r in rows if r.kind == "system"]
        if answers:
            # An answer nobody waits for (its question timed out, or the run that asked
            # died): ack it so it does not linger as pending work.
            log.info("acking {} unawaited question answer(s)", len(answers))
            self.ctx.ack_completed(answers)
        return [r for r in rows if r.kind != "system"]

    def step(self, *, now: int | None = None) -> bool:
        """Pick and answer one batch; False when there was nothing to do."""
        rows = self.pending(now=now, first_poll=self.first_poll)
        self.first_poll = False
        batch = select_batch(rows, self.config.max_messages_per_prompt)
        self._due_rows = len(batch)
        if not batch:
            return False
        self.handle(batch)
        self._due_rows = 0
        return True

    def claim(self, rows: Sequence[InboundRow]) -> None:
        ids = [r.id for r in rows]
        self.outbound.claim(ids, self.run_id)
        self._claimed += ids

    def settle(self, ids: list[str], *, failed: bool = False) -> None:
        if not ids:
            return
        if failed:
            self.outbound.fail(ids, self.run_id)
            self.ctx.settled.update(ids)
        else:
            self.ctx.ack_completed(ids)
        done = set(ids)
        self._claimed = [i for i in self._claimed if i not in done]

    # -- one batch ------------------------------------------------------------------------

    def handle(self, batch: list[InboundRow]) -> None:
        self.claim(batch)
        self.outbound.reset_turns()
        self.batches += 1
        kinds = ",".join(sorted({r.kind for r in batch}))
        log.info("processing {} message(s), kinds: {}", len(batch), kinds, run=self.run_id)
        reply_to = self.reply_target(batch)
        self.ctx.batch = Batch(in_reply_to=batch[0].id)
        failed = False
        self._in_turn = True
        try:
            rest = self.run_commands(batch, reply_to)
            rest, outputs = self.run_task_scripts(rest)
            if rest:
                prompt = format_batch(
                    rest,
                    zone_name=self.config.tz,
                    lookup=self.destinations.origin_name,
                    session_root=self.paths.session.root,
                    script_outputs=outputs,
                )
                self.engine.run(prompt)
        except ModelError as exc:
            failed = True
            log.warning("model error: {}", exc.user_message, run=self.run_id)
            self.notify(reply_to, f"Error: {exc.user_message}")
        except TurnLimitReached as exc:
            log.warning("turn limit: {}", exc)
            self.notify(
                reply_to,
                f"Error: I stopped after {exc.calls} steps without finishing. Ask again to "
                "continue, or narrow the request.",
            )
        except Exception as exc:
            failed = True
            log.exception("batch failed")
            self.notify(
                reply_to,
                f"Error: the agent hit an internal error ({type(exc).__name__}). The details "
                "are in the agent's log.",
            )
        finally:
            self._in_turn = False
            self._idle_since_s = self._monotonic()
            if failed:
                self.failures += 1
            self.settle(list(self._claimed), failed=failed)
            log.info("completed {} message(s)", len(batch), run=self.run_id)

    def reply_target(self, batch: Sequence[InboundRow]) -> Target | None:
        """Where notices about this batch go: the oldest row's chat, else the session's."""
        first = batch[0]
        if first.channel_type and first.platform_id:
            return Target("(batch)", first.channel_type, first.platform_id, first.thread_id)
        return self.destinations.session_target()

    def notify(self, target: Target | None, text: str) -> None:
        if target is None:
            log.warning("no chat to tell: {}", text)
            return
        self.ctx.write(
            NewOutbound(
                content=messages.SendText(text=text[: messages.MAX_TEXT_CHARS]),
                channel_type=target.channel_type,
                platform_id=target.platform_id,
                thread_id=target.thread_id,
            )
        )

    def run_commands(self, batch: list[InboundRow], reply_to: Target | None) -> list[InboundRow]:
        """Handle ``/clear`` and ``/compact``; returns the rows left to prompt. Rows older
        than a ``/clear`` belong to the cleared conversation and are acked unprompted."""
        commands = [(i, command_of(r)) for i, r in enumerate(batch)]
        clears = [i for i, c in commands if c == "/clear"]
        rest = batch
        if clears:
            last = clears[-1]
            self.clear_conversation()
            self.notify(reply_to, "Session cleared.")
            self.settle([r.id for r in batch[: last + 1]])
            rest = batch[last + 1 :]
        compacts = [r for r in rest if command_of(r) == "/compact"]
        if compacts:
            done = self.engine.compact(force=True)
            self.notify(reply_to, "Conversation compacted." if done else "Nothing to compact yet.")
            self.settle([r.id for r in compacts])
            rest = [r for r in rest if r not in compacts]
        return rest

    def clear_conversation(self) -> None:
        archived = archive_transcript(
            self.conversation.messages,
            self.paths.archive_dir,
            title=None,
            assistant_name=self.config.assistant_name,
            now_ms=now_ms(),
            zone=resolve_zone(self.config.tz)[1],
        )
        self.conversation.clear()
        log.info("conversation cleared (archived to {})", archived)

    def run_task_scripts(self, rows: list[InboundRow]) -> tuple[list[InboundRow], dict[str, Any]]:
        kept: list[InboundRow] = []
        outputs: dict[str, Any] = {}
        for row in rows:
            content = decode_content(row) if row.kind == "task" else None
            if not isinstance(content, messages.TaskContent) or not content.script:
                kept.append(row)
                continue
            result = run_task_script(content.script, self.paths.workspace, row.id)
            if result.wake:
                kept.append(row)
                outputs[row.id] = result.data
            else:
                log.info("task {} skipped by its script", row.id)
                self.settle([row.id])
        return kept, outputs

    def follow_ups(self) -> str | None:
        """Messages that arrived while tools ran: claimed and formatted for the live turn.
        Commands are left for the loop; context-only arrivals wait for a trigger."""
        rows = self.pending(now=None, first_poll=False)
        batch = select_batch(rows, self.config.max_messages_per_prompt)
        # Commands and scripted tasks need the loop's handling: they wait for the next batch.
        if not batch or any(command_of(r) in RUNNER_COMMANDS or has_script(r) for r in batch):
            return None
        self.claim(batch)
        log.info("pushing {} follow-up message(s) into the turn", len(batch))
        return format_batch(
            batch,
            zone_name=self.config.tz,
            lookup=self.destinations.origin_name,
            session_root=self.paths.session.root,
        )
