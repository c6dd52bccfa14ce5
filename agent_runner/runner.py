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

Acks: ``completed`` when the turn ran; ``failed`` when the model refused for good (the user
was told, with the error, in the batch's chat). A model out of reach for longer than the
run waits (``ModelUnavailable``: the proxy absent, the API overloaded) is no failure: the
run ends without acking and the host retries the claims as a dead run's (``give_back``).
The turn's final output and the batch's ack are one transaction (``finish``), so a runner
killed mid-turn never leaves an answer behind for a batch that will be answered again. The
host decides about retries only for claims a dead run left ``processing``; a retried
batch's prompt says what was already sent in reply to it (mid-turn sends:
``send_message``, output before a tool call).

``/clear`` and ``/compact`` are honoured only from a person's chat message (``command_of``).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from loguru import logger

from agent_runner import prompts, shed
from agent_runner.compaction import archive_transcript
from agent_runner.conversation import Conversation
from agent_runner.destinations import Destinations, Target
from agent_runner.diskfull import DiskFullStop, DiskWait
from agent_runner.faults import Faults
from agent_runner.formatter import decode_content, format_batch, resolve_zone
from agent_runner.mcp import McpTools
from agent_runner.model import ModelError, ModelUnavailable, Provider
from agent_runner.paths import RunnerPaths
from agent_runner.reaper import ToolProcesses
from agent_runner.task_script import run_task_script
from agent_runner.tools import Batch, ToolContext
from agent_runner.turn import TurnEngine, TurnLimitReached
from agent_runner.watch import ChangeWatcher
from nanoclaw_common import messages
from nanoclaw_common.clock import now_ms
from nanoclaw_common.errors import DecodeError
from nanoclaw_common.runner_config import RunnerConfig
from nanoclaw_common.states import AckStatus
from nanoclaw_common.store.inbound import InboundReader
from nanoclaw_common.store.outbound import NewOutbound, OutboundStore
from nanoclaw_common.store.rows import InboundRow, OutboundRow

log = logger.bind(component="runner")

RETRY_QUOTE_CHARS = 1500  # of each earlier reply quoted in a retry note
SCAN_LIMIT = 500  # pending rows looked at per poll (the batch is at most max_messages_per_prompt)
SAFETY_WAKE_S = 2.0  # longest idle sleep: a missed change event costs at most this
ERROR_BACKOFF_S = 1.0


RUNNER_COMMANDS = frozenset({"/clear", "/compact"})


def command_of(row: InboundRow) -> str | None:
    """The runner command (``/clear``, ``/compact``) a row carries, if any.

    Only a person's chat message can carry one: not an agent-to-agent row (a peer agent,
    perhaps prompt-injected, must not wipe this agent's conversation), not a system note,
    not a task or a webhook. The command word is normalized as the router's command gate
    does: ``/Clear@mybot`` is ``/clear``. An exact word: upstream's prefix test made
    ``/clearance`` a /clear [quirk]."""
    if row.kind != "chat" or not row.channel_type or row.channel_type == "agent":
        return None
    content = decode_content(row)
    if not isinstance(content, messages.ChatContent):
        return None
    if content.sender_id == "system" or content.sender_id.startswith("agent:"):
        return None
    words = content.text.strip().split(maxsplit=1)
    if not words or not words[0].startswith("/"):
        return None
    command = words[0].lower().split("@", 1)[0]
    return command if command in RUNNER_COMMANDS else None


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
        faults: Faults | None = None,
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
        self.faults = faults or Faults()
        self.disk = DiskWait(stop)
        self._idle_since_s = monotonic()
        self._due_rows = 0  # the batch size the last poll found
        self._in_turn = False
        self.gave_back = False  # the run ended giving its claims back (give_back)

    # -- lifecycle ------------------------------------------------------------------------

    def setup(self, *, now: int | None = None) -> None:
        self.inbound = InboundReader(self.paths.session.inbound_db)
        self.outbound = OutboundStore(self.paths.session.outbound_db)
        # The run's record waits for room like every other write (a runner started on a
        # full disk must not die: its container would be retried into the same wall).
        resume = functools.partial(self.outbound.resume_run, self.run_id, now=now)
        if self.resumed and self.disk.until_written(resume, "the run's start"):
            log.debug("run resumed: its claims and start time kept", run=self.run_id)
        else:
            if self.resumed:
                # Another run took the session over meanwhile: behave as any fresh start.
                log.warning("cannot resume: container_state names another run", run=self.run_id)
            start = functools.partial(self.outbound.start_run, self.run_id, now=now)
            dropped = self.disk.until_written(start, "the run's start")
            if dropped:
                log.info("dropped {} claim(s) of earlier runs", dropped, run=self.run_id)
        self.destinations = Destinations(self.inbound)
        mcp = (
            McpTools(self.config.mcp_servers, self.paths.workspace)
            if self.config.mcp_servers
            else None
        )
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
            mcp=mcp,
            processes=ToolProcesses(spare=mcp.pids if mcp is not None else frozenset),
            faults=self.faults,
            disk=self.disk,
        )
        self.conversation = Conversation.load(self.paths.conversation_file, disk=self.disk)
        # A turn the previous run died in is rolled back before anything else is added, so
        # its batch is not left as a dangling user turn the next batch would merge into.
        self.conversation.reconcile(self.ctx.settled)
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
        try:
            self.setup()
        except DiskFullStop:
            return False  # stopped before the run was recorded: it claimed nothing
        shedding = False
        try:
            while not self.stop.is_set():
                try:
                    worked = self.step()
                    if not worked and self.shed_due():
                        shedding = True
                        return True
                except DiskFullStop:
                    return False  # stopped during a disk-full wait: claims left unacked
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
        self.disk.until_written(lambda: self.outbound.claim(ids, self.run_id), "a claim")
        self._claimed += ids

    def settle(self, ids: list[str]) -> None:
        """Ack rows completed on their own (a task its script skipped)."""
        if not ids:
            return
        self.ctx.ack_completed(ids)
        done = set(ids)
        self._claimed = [i for i in self._claimed if i not in done]

    # -- one batch ------------------------------------------------------------------------

    def handle(self, batch: list[InboundRow]) -> None:
        self.claim(batch)
        self.disk.best_effort(self.outbound.reset_turns, "the turn count")
        self.batches += 1
        kinds = ",".join(sorted({r.kind for r in batch}))
        log.info("processing {} message(s), kinds: {}", len(batch), kinds, run=self.run_id)
        reply_to = self.reply_target(batch)
        triggers = [r.id for r in batch if r.trigger]
        self.ctx.batch = Batch(
            in_reply_to=batch[0].id, trigger_id=triggers[-1] if triggers else None
        )
        final: list[NewOutbound] = []
        failed = False
        closing: str | None = None  # the conversation's last word on a turn that went wrong
        unavailable: ModelUnavailable | None = None
        stopped = False  # stopped while waiting for disk space: nothing is acked
        self._in_turn = True
        try:
            rest = self.run_commands(batch)
            rest, outputs = self.run_task_scripts(rest)
            if rest:
                self.ctx.batch.rows = list(rest)
                prompt = format_batch(
                    rest,
                    zone_name=self.config.tz,
                    lookup=self.destinations.origin_name,
                    session_root=self.paths.session.root,
                    script_outputs=outputs,
                )
                note = self.retry_note(rest)
                final = self.engine.run(f"{prompt}\n\n{note}" if note else prompt)
        except ModelUnavailable as exc:
            unavailable = exc
        except DiskFullStop:
            stopped = True
            raise
        except ModelError as exc:
            failed = True
            log.warning("model error: {}", exc.user_message, run=self.run_id)
            final = self.notice(reply_to, f"Error: {exc.user_message}")
            closing = f"(This turn failed: {exc.user_message})"
        except TurnLimitReached as exc:
            log.warning("turn limit: {}", exc)
            final = self.notice(
                reply_to,
                f"Error: I stopped after {exc.calls} steps without finishing. Ask again to "
                "continue, or narrow the request.",
            )
            closing = f"(I stopped here, after {exc.calls} steps in one turn.)"
        except Exception as exc:
            failed = True
            log.exception("batch failed")
            final = self.notice(
                reply_to,
                f"Error: the agent hit an internal error ({type(exc).__name__}). The details "
                "are in the agent's log.",
            )
            closing = f"(This turn failed with an internal error, {type(exc).__name__}.)"
        finally:
            self._in_turn = False
            self._idle_since_s = self._monotonic()
            if unavailable is not None:
                self.give_back(unavailable)
            elif stopped:
                log.warning(
                    "stopped while the disk was full: {} claim(s) left for the host's retry",
                    len(self._claimed),
                    run=self.run_id,
                )
            else:
                if failed:
                    self.failures += 1
                self.finish(final, failed=failed, closing=closing)
                log.info("completed {} message(s)", len(batch), run=self.run_id)

    def give_back(self, cause: ModelUnavailable) -> None:
        """End the run without acking what it claimed: the claims stay ``processing`` for
        a run that is over, which the host settles as for a dead run (``tries + 1`` and a
        backoff, or failed after the last try, and only then is the user told), and the
        next run rolls the open turn back, as after a kill. A model out of reach is no
        reason to fail a message, and no reason to tell the user."""
        log.warning(
            "the model stayed out of reach ({}): giving {} claim(s) back to the host",
            cause.reason,
            len(self._claimed),
            run=self.run_id,
        )
        self.gave_back = True
        self.stop.set()

    def finish(self, final: list[NewOutbound], *, failed: bool, closing: str | None = None) -> None:
        """Write the batch's final output and ack everything this batch claimed, in one
        transaction, then close the conversation's open turn (with ``closing`` as the
        assistant's last word when the turn went wrong). Sent mid-turn (tools, output before
        a tool call) is already written; if the runner dies before this commit, the batch is
        retried, the next run rolls the turn back (``Conversation.reconcile``), and the retry
        prompt names what was sent (``retry_note``). The turn is closed only after the
        commit: a kill in between leaves it open with its rows settled, which the next run
        keeps."""
        ids = list(self._claimed)
        self.faults.crash("before_batch_ack", ids)
        written = self.disk.until_written(
            lambda: self.outbound.write_and_ack(
                [self.ctx.batch.stamp(new) for new in final],
                ids,
                AckStatus.FAILED if failed else AckStatus.COMPLETED,
                run_id=self.run_id,
                min_seq=self.inbound.max_seq(),
            ),
            "the batch's answer and ack",
        )
        for row in written:
            log.info("message written", message=row.id, seq=row.seq)
        self.ctx.settled.update(ids)
        self._claimed = []
        if closing is not None:
            self.conversation.close_turn(closing)
        else:
            self.conversation.end_turn()

    def retry_note(self, rows: Sequence[InboundRow]) -> str | None:
        """For a batch an earlier run died on (``tries`` > 0): what the session already sent
        in reply to its rows, so the model does not send it twice."""
        if not any(r.tries for r in rows):
            return None
        sent = self.outbound.replies_to(r.id for r in rows)
        if not sent:
            return None
        log.info("retried batch: {} reply row(s) already sent", len(sent), run=self.run_id)
        return prompts.retry_note([self.describe_sent(r) for r in sent])

    def describe_sent(self, row: OutboundRow) -> str:
        """One line about an outbound row, for ``retry_note``."""
        where = "the current conversation"
        if row.channel_type and row.platform_id:
            where = self.destinations.origin_name(row.channel_type, row.platform_id) or where
        try:
            content = messages.decode_outbound_content(row.content)
        except DecodeError:
            return f"a {row.kind} row to {where}"
        if isinstance(content, messages.SendText):
            files = f" with file(s) {', '.join(content.files)}" if content.files else ""
            return f'to {where}{files}: "{clip(content.text, RETRY_QUOTE_CHARS)}"'
        if isinstance(content, messages.AskQuestion):
            return f'a question to {where}: "{clip(content.question, RETRY_QUOTE_CHARS)}"'
        if isinstance(content, messages.SendCard):
            return f'a card to {where}: "{clip(content.card.title, RETRY_QUOTE_CHARS)}"'
        if isinstance(content, messages.EditMessage):
            return f"an edit of message {content.message_id}"
        if isinstance(content, messages.AddReaction):
            return f"a :{content.emoji}: reaction to message {content.message_id}"
        return f"a {content.__struct_config__.tag} request"

    def reply_target(self, batch: Sequence[InboundRow]) -> Target | None:
        """Where notices about this batch go: the oldest row's chat, else the session's."""
        first = batch[0]
        if first.channel_type and first.platform_id:
            return Target("(batch)", first.channel_type, first.platform_id, first.thread_id)
        return self.destinations.session_target()

    def notice(self, target: Target | None, text: str) -> list[NewOutbound]:
        """A notice for the user, as a row to write (none when there is nowhere to send it)."""
        if target is None:
            log.warning("no chat to tell: {}", text)
            return []
        return [
            NewOutbound(
                content=messages.SendText(text=text[: messages.MAX_TEXT_CHARS]),
                channel_type=target.channel_type,
                platform_id=target.platform_id,
                thread_id=target.thread_id,
            )
        ]

    def run_commands(self, batch: list[InboundRow]) -> list[InboundRow]:
        """Handle ``/clear`` and ``/compact`` (in batch order); returns the rows left to
        prompt. As upstream, the other rows of the batch, those before a ``/clear`` too, are
        answered afterwards, in the fresh conversation: a message is never acked unanswered.
        Each command's notice goes to its own chat, written with the commands' acks."""
        commands = [(row, command_of(row)) for row in batch]
        done = [row for row, command in commands if command]
        if not done:
            return batch
        notices: list[NewOutbound] = []
        for row, command in commands:
            target = (
                Target("(command)", row.channel_type, row.platform_id, row.thread_id)
                if row.channel_type and row.platform_id
                else self.destinations.session_target()
            )
            if command == "/clear":
                self.clear_conversation()
                notices += self.notice(target, "Session cleared.")
            elif command == "/compact":
                compacted = self.engine.compact(force=True)
                notices += self.notice(
                    target, "Conversation compacted." if compacted else "Nothing to compact yet."
                )
        ids = [row.id for row in done]
        self.disk.until_written(
            lambda: self.outbound.write_and_ack(
                notices,
                ids,
                AckStatus.COMPLETED,
                run_id=self.run_id,
                min_seq=self.inbound.max_seq(),
            ),
            "the commands' notices and acks",
        )
        self.ctx.settled.update(ids)
        self._claimed = [i for i in self._claimed if i not in set(ids)]
        return [row for row, command in commands if not command]

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
            result = run_task_script(
                content.script, self.paths.workspace, row.id, self.ctx.processes
            )
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
        if not batch or any(command_of(r) or has_script(r) for r in batch):
            return None
        self.claim(batch)
        self.ctx.batch.rows += batch
        self.conversation.extend_turn([r.id for r in batch])
        log.info("pushing {} follow-up message(s) into the turn", len(batch))
        return format_batch(
            batch,
            zone_name=self.config.tz,
            lookup=self.destinations.origin_name,
            session_root=self.paths.session.root,
        )


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
