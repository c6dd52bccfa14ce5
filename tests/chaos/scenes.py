"""The forced crash points: one scene per row of docs/delivery.md's crash table that a random
kill would hit only by luck (or never: the router's "committed, not acknowledged").

A scene puts the crash exactly where its row says, with the real mechanism wherever one
exists: a request the fake Telegram holds (before or after accepting it) while delivery is
SIGKILLed, a model request the fake Messages API holds while the proxy or the agent's
container is killed, a frame the terminal holds; otherwise a test-only crash point
(``nanoclaw_common.faults``) that SIGKILLs the program at that moment. A scene records what
it did (``Forced``); the ledger later checks each row's outcome from what the platforms
showed and what is on disk. A scene that could not make its crash happen says why: the
suite then fails on that row, naming it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from tests.chaos.harness import ChaosStack, Event, Message
from tests.chaos.model import LONG_PARTS, dumps
from tests.fakes.telegram_api import AFTER_ACCEPT, BEFORE_ACCEPT
from tests.stack import BEFORE_SHOW, StackError
from tests.waiting import WaitTimeout, wait_until

_PONG: Final = re.compile(r"pong [a-z]+-\d+")
ARRIVE_S: Final = 30.0  # a held request or an armed point, under load
REPLY_S: Final = 60.0


@dataclass
class Forced:
    """One forced crash: which table rows it is for and what happened."""

    scene: str
    rows: tuple[str, ...]
    at: float = 0.0
    subjects: list[Message] = field(default_factory=list)  # the messages it concerns
    fired: dict[str, Any] = field(default_factory=dict)  # the crash point's record
    fired_more: list[dict[str, Any]] = field(default_factory=list)
    hold_outcome: str = ""
    hold_text: str = ""
    facts: dict[str, Any] = field(default_factory=dict)
    missed: str = ""  # why the crash did not happen as planned ("": it did)

    @property
    def happened(self) -> bool:
        return not self.missed


Scene = Callable[[ChaosStack], Forced]


def _point(
    chaos: ChaosStack, forced: Forced, point: str, chat: str, kind: str = "", **only: str
) -> Forced:
    """Arm ``point`` (for a crash matching ``only``), send a message of ``kind`` in
    ``chat``, wait until the point fired (and supervisord restarted the program)."""
    forced.at = time.time()
    chaos.arm(point, **only)
    forced.subjects.append(chaos.send(chat, kind))
    record = chaos.wait_fired(point, ARRIVE_S)
    if record is None:
        chaos.disarm(point)
        forced.missed = f"{point} armed but not reached within {ARRIVE_S:g}s"
        return forced
    forced.fired = record
    return forced


def router_before_commit(chaos: ChaosStack) -> Forced:
    """Row 1: the event reached the router, nothing committed; the platform re-sends."""
    forced = Forced("router.before_commit", ("1",))
    return _point(chaos, forced, "router.before_commit", "tgb")


def router_after_commit(chaos: ChaosStack) -> Forced:
    """Row 2: committed, not acknowledged (no wake either); the re-send is a duplicate."""
    forced = Forced("router.after_commit", ("2",))
    return _point(chaos, forced, "router.after_commit", "tgd")


def router_before_ack(chaos: ChaosStack) -> Forced:
    """Row 2 after the wakes, from the terminal (the client re-sends the same id)."""
    forced = Forced("router.before_ack", ("2",))
    return _point(chaos, forced, "router.before_ack", "terminal")


def _held_model_call(
    chaos: ChaosStack, forced: Forced, chat: str, kill: Callable[[], Event | None]
) -> Forced:
    forced.at = time.time()
    tag = chaos.reserve(chat)
    hold = chaos.fake_api.hold_request(lambda body: f"ping {tag}" in dumps(body))
    forced.subjects.append(chaos.send(chat, tag=tag))
    if not hold.wait_arrived(ARRIVE_S):
        chaos.fake_api.holds.disarm(hold)
        forced.missed = f"no model request for {tag} within {ARRIVE_S:g}s"
        return forced
    event = kill()
    hold.release()
    hold.done.wait(ARRIVE_S)
    forced.hold_outcome = hold.outcome
    if event is None:
        forced.missed = "the kill found nothing to kill"
    return forced


def container_mid_batch(chaos: ChaosStack) -> Forced:
    """Row 3b: the runner claimed the batch and waits for the model; its container dies."""
    forced = Forced("container mid-batch", ("3b",))
    return _held_model_call(
        chaos, forced, "tga", lambda: chaos.kill_container("tga", "its batch in flight")
    )


def _runner_point(
    chaos: ChaosStack, forced: Forced, point: str, chat: str, kind: str = ""
) -> Forced:
    """Arm the runner's ``point`` in ``chat``'s session, send a message there, wait for the
    runner to die at it (its container ends with it)."""
    forced.at = time.time()
    before = chaos.arm_runner(chat, point)
    forced.subjects.append(chaos.send(chat, kind))
    record = chaos.wait_runner_fired(chat, point, before, REPLY_S)
    if record is None:
        forced.missed = f"runner.{point} armed in {chat}'s session but not reached"
    else:
        forced.fired = record
    return forced


def runner_before_model_call(chaos: ChaosStack) -> Forced:
    """Row 3a: the batch's prompt is in the conversation, no model call made yet."""
    forced = Forced("runner.before_model_call", ("3a",))
    return _runner_point(chaos, forced, "before_model_call", "tgb")


def runner_after_send(chaos: ChaosStack) -> Forced:
    """Row 3c: a reply written mid-turn (before the task's tool call), the turn goes on."""
    forced = Forced("runner.after_send", ("3c",))
    return _runner_point(chaos, forced, "after_send", "tga", "task")


def runner_before_batch_ack(chaos: ChaosStack) -> Forced:
    """Row 3d: the turn ended; its final output and ack not written."""
    forced = Forced("runner.before_batch_ack", ("3d",))
    return _runner_point(chaos, forced, "before_batch_ack", "tgd")


def proxy_mid_call(chaos: ChaosStack) -> Forced:
    """Row P: the proxy dies while it forwards a model call."""
    forced = Forced("proxy mid-call", ("P",))
    return _held_model_call(
        chaos, forced, "tgd", lambda: chaos.sigkill("proxy", "a model call in flight")
    )


def delivery_backlog(chaos: ChaosStack) -> Forced:
    """Rows 4 and 5: replies committed while delivery is down; the restarted delivery
    records them pending and crashes right after that commit."""
    forced = Forced("delivery down, then after_pending", ("4", "5"))
    forced.at = time.time()
    chaos.stop("delivery")
    forced.subjects += [chaos.send("tgc") for _ in range(3)]
    session = chaos.sessions().get("tgc")
    written = False
    if session is not None:
        try:
            written = wait_until(
                lambda: _replies_written(chaos, "tgc", forced.subjects),
                timeout_s=REPLY_S,
                what="the replies written while delivery is stopped",
                poll_s=0.1,
            )
        except WaitTimeout:
            written = False  # recorded below as the miss
    chaos.arm("delivery.after_pending")
    chaos.start("delivery")
    if not written:
        forced.missed = "the replies were not written while delivery was stopped"
    record = chaos.wait_fired("delivery.after_pending", ARRIVE_S)
    if record is None:
        chaos.disarm("delivery.after_pending")
        forced.missed = forced.missed or "delivery.after_pending not reached"
    else:
        forced.fired = record
    return forced


def _replies_written(chaos: ChaosStack, chat: str, messages: list[Message]) -> bool:
    session = chaos.sessions().get(chat)
    if session is None:
        return False
    inbound, outbound = chaos.readers(session)
    try:
        texts = {row.content for row in outbound.messages_after(0, limit=100_000)}
    finally:
        inbound.close()
        outbound.close()
    return all(any(f"pong {m.tag}" in text for text in texts) for m in messages)


def refused_as_read(chaos: ChaosStack) -> Forced:
    """Row 4a: the agent forges a row delivery refuses as it reads it (an even seq); delivery
    dies after telling (its note, the owner-notice count), before the settled record."""
    forced = Forced("delivery.after_refusal_told", ("4a",))
    forced.at = time.time()
    session = chaos.sessions().get("tgc")
    if session is None:
        forced.missed = "tgc has no session"
        return forced
    chaos.arm("delivery.after_refusal_told", session=session.id)
    deadline = time.monotonic() + ARRIVE_S
    while "forged" not in forced.facts:
        # A random kill or an idle stop can take the container away at any moment: a
        # message wakes it again (and is answered like any other).
        if not chaos.container_running("tgc"):
            forced.subjects.append(chaos.send("tgc"))
        try:
            wait_until(
                lambda: chaos.container_running("tgc"),
                timeout_s=max(deadline - time.monotonic(), 0.1),
                what="tgc's container to run for the forged row",
            )
            forced.facts["forged"] = chaos.forge_row("tgc", "forged by the agent")
        except (WaitTimeout, StackError) as exc:
            if time.monotonic() > deadline:
                chaos.disarm("delivery.after_refusal_told")
                forced.missed = f"no row forged in tgc: {exc}"
                return forced
    record = chaos.wait_fired("delivery.after_refusal_told", ARRIVE_S)
    if record is None:
        chaos.disarm("delivery.after_refusal_told")
        forced.missed = "delivery.after_refusal_told armed but not reached"
    else:
        forced.fired = record
    return forced


def after_sending(chaos: ChaosStack) -> Forced:
    """Row 6: ``sending(n)`` committed, the checks not run, nothing sent."""
    forced = Forced("delivery.after_sending", ("6",))
    return _point(chaos, forced, "delivery.after_sending", "tga")


def _held_send(chaos: ChaosStack, forced: Forced, chat: str, stage: str, kind: str = "") -> Forced:
    """A ``sendMessage`` of ``chat``'s reply held by the fake Telegram at ``stage`` while
    delivery is SIGKILLed."""
    forced.at = time.time()
    tag = chaos.reserve(chat)
    wanted = f"pong {tag}" if kind != "long" else f"pong {tag} part 2/{LONG_PARTS}"
    hold = chaos.telegram.hold_send(lambda p: str(p.get("text", "")).startswith(wanted), stage)
    forced.subjects.append(chaos.send(chat, kind, tag))
    if not hold.wait_arrived(REPLY_S):
        chaos.telegram.holds.disarm(hold)
        forced.missed = f"no send of {wanted!r} within {REPLY_S:g}s"
        return forced
    forced.hold_text = wanted
    chaos.sigkill("delivery", f"Telegram holds {wanted!r} ({stage})")
    hold.release()
    hold.done.wait(ARRIVE_S)
    forced.hold_outcome = hold.outcome
    return forced


def platform_not_received(chaos: ChaosStack) -> Forced:
    """Row 7: the send left delivery, the platform has not received it."""
    return _held_send(chaos, Forced("send in flight", ("7",)), "tgb", BEFORE_ACCEPT)


def platform_accepted(chaos: ChaosStack) -> Forced:
    """Row 8: the platform accepted it, its answer is in transit: the duplicate window."""
    return _held_send(chaos, Forced("answer in transit", ("8",)), "tga", AFTER_ACCEPT)


def part_not_received(chaos: ChaosStack) -> Forced:
    """Row 9: a reply in three parts; part 1 recorded, part 2 in flight."""
    forced = Forced("part 2 in flight", ("9",))
    return _held_send(chaos, forced, "tgc", BEFORE_ACCEPT, "long")


def part_accepted(chaos: ChaosStack) -> Forced:
    """Row 9: part 1 accepted, not yet recorded: part 1 is sent again (inside the window)."""
    forced = Forced("delivery.after_part_accepted", ("9",))
    point = "delivery.after_part_accepted"
    return _point(chaos, forced, point, "tgb", "long")


def file_before_cleanup(chaos: ChaosStack) -> Forced:
    """Row 10: a reply with a file delivered, its outbox folder not removed yet."""
    forced = Forced("delivery.before_outbox_removed", ("10",))
    point = "delivery.before_outbox_removed"
    return _point(chaos, forced, point, "tga", "file")


def terminal_last_attempt(chaos: ChaosStack) -> Forced:
    """Row 11: the terminal is away until a reply used up its attempts; then the attempt
    past the last one is interrupted. A reply to the terminal is sent again (the terminal
    is bounded by time, not attempts). The reply is the first one to the terminal that
    reaches the limit (earlier replies hold later ones back: one chat, in order)."""
    forced = Forced("terminal past its attempts", ("11",))
    forced.at = time.time()
    limit = chaos.settings.delivery_max_attempts
    chaos.terminal.detach()
    chaos.send("terminal")
    text = ""

    def at_limit() -> bool:
        nonlocal text
        text = _reply_at(chaos, "terminal", limit)
        return bool(text)

    try:
        limit_reached = wait_until(
            at_limit, timeout_s=REPLY_S, what=f"a reply at {limit} attempts", poll_s=0.1
        )
    except WaitTimeout:
        limit_reached = False  # recorded below as the miss
    hold = chaos.terminal.hold_frame(lambda shown: shown == text, BEFORE_SHOW)
    chaos.terminal.attach()
    forced.subjects += [m for m in chaos.messages if f"pong {m.tag}" == text]
    if not limit_reached or not forced.subjects:
        forced.missed = f"no reply to the terminal reached {limit} attempts"
        chaos.terminal.unhold(hold)
        return forced
    if not hold.arrived.wait(REPLY_S):
        forced.missed = f"{text!r} never reached the terminal again"
        return forced
    forced.facts["attempts_before_kill"] = _attempts_of(chaos, "terminal", text)
    forced.hold_text = text
    chaos.sigkill("delivery", f"the terminal holds {text!r}")
    hold.release()
    return forced


def _attempts_of(chaos: ChaosStack, chat: str, text: str) -> int:
    session = chaos.sessions().get(chat)
    if session is None:
        return 0
    inbound, outbound = chaos.readers(session)
    try:
        for row in outbound.messages_after(0, limit=100_000):
            if f'"{text}"' in row.content:
                delivery = inbound.get_delivery(row.id)
                return delivery.attempts if delivery else 0
        return 0
    finally:
        inbound.close()
        outbound.close()


def _reply_at(chaos: ChaosStack, chat: str, limit: int) -> str:
    """The text of a reply to ``chat`` attempted at least ``limit`` times, not delivered."""
    session = chaos.sessions().get(chat)
    if session is None:
        return ""
    inbound, outbound = chaos.readers(session)
    try:
        for delivery in inbound.list_deliveries("retry"):
            if delivery.attempts >= limit:
                row = outbound.get_message(delivery.message_out_id)
                if row is not None and row.channel_type == "cli":
                    found = _PONG.search(row.content)
                    if found:
                        return found.group(0)
        return ""
    finally:
        inbound.close()
        outbound.close()


def task_applied(chaos: ChaosStack) -> Forced:
    """Row 12: ``schedule_task`` applied, ``delivered`` not recorded: applied again."""
    forced = Forced("delivery.after_action_applied", ("12",))
    point = "delivery.after_action_applied"
    # Only the schedule_task row: an earlier scene's system row may still be in flight.
    return _point(chaos, forced, point, "tga", "task", content="schedule_task")


def agent_row_inserted(chaos: ChaosStack) -> Forced:
    """Row 13: an agent-to-agent row inserted into the target, not recorded."""
    forced = Forced("delivery.after_agent_row_inserted", ("13",))
    point = "delivery.after_agent_row_inserted"
    return _point(chaos, forced, point, "tgb", "relay")


def refusal_noticed(chaos: ChaosStack) -> Forced:
    """Rows 14, 17 and 18: a refused ``create_agent``: its note and owner notice queued,
    then a crash before the row is settled; the restarted delivery sends the notice and
    crashes again just after the DM was accepted, so the owner sees it twice."""
    forced = Forced("refusal, its notice", ("14", "17", "18"))
    # Only this group's notice: another scene's (row 4a's) may be on its way meanwhile.
    chaos.arm("delivery.after_notice_accepted", group=chaos.groups["main"].id)
    _point(
        chaos,
        forced,
        "delivery.after_report_queued",
        "tga",
        "admin",
    )
    second = chaos.wait_fired("delivery.after_notice_accepted", REPLY_S)
    if second is None:
        chaos.disarm("delivery.after_notice_accepted")
        forced.missed = forced.missed or "the owner notice was never sent"
    else:
        forced.fired_more.append(second)
    return forced


def approval(chaos: ChaosStack) -> Forced:
    """Rows 12, 15 and 16: an ``add_mcp_server`` card goes to the owner (the terminal) and
    delivery dies before the request row is recorded (``delivery.after_action_applied``);
    the owner approves while it is dead; the restarted delivery re-runs the request (which
    finds its approval: no second card), applies the approval and dies again before
    deleting it (``delivery.after_approval_applied``), so it is applied again."""
    forced = Forced("approval", ("12", "15", "16"))
    forced.at = time.time()
    chaos.arm("delivery.after_approval_applied")
    point = "delivery.after_action_applied"
    _point(chaos, forced, point, "tgc", "mcp", content="add_mcp_server")
    card = _card(chaos)
    if forced.missed or card is None:
        chaos.disarm("delivery.after_approval_applied")
        shown = chaos.terminal.question()
        forced.missed = forced.missed or (
            f"no approval card reached the terminal (the crash came at {forced.fired};"
            f" the terminal's last question: {shown.question[:80] if shown else None!r})"
        )
        return forced
    answer = chaos.terminal.click(card, 0)  # "Approve", as the owner types 1
    forced.facts["clicked_at"] = time.time()
    forced.facts["killed_at"] = forced.fired["at_ms"] / 1000
    forced.facts["click_answer"] = repr(answer)
    record = chaos.wait_fired("delivery.after_approval_applied", REPLY_S)
    if record is None:
        chaos.disarm("delivery.after_approval_applied")
        forced.missed = "the approval was not applied"
    else:
        forced.fired_more.append(record)
    return forced


def _card(chaos: ChaosStack) -> str | None:
    """The question id of the approval card the terminal shows, once it shows one."""
    question = chaos.terminal.question()
    if question is None or "add a new MCP server" not in question.question:
        return None
    return question.question_id


SCENES: Final[tuple[Scene, ...]] = (
    router_before_commit,
    router_after_commit,
    router_before_ack,
    runner_before_model_call,
    container_mid_batch,
    runner_after_send,
    runner_before_batch_ack,
    proxy_mid_call,
    delivery_backlog,
    refused_as_read,
    after_sending,
    platform_not_received,
    platform_accepted,
    part_not_received,
    part_accepted,
    file_before_cleanup,
    terminal_last_attempt,
    task_applied,
    agent_row_inserted,
    refusal_noticed,
    approval,
)
