"""docs/delivery.md's crash table, row by row, as the chaos run checks it: each row must have
been hit (by a forced crash, or by a random kill the files prove landed there) and must
have had the outcome the row promises. ``ROWS`` mirrors the table's "chaos check" column.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from tests.chaos.harness import Event, Message
from tests.chaos.ledger import (
    DELIVERY_DEATHS,
    NOTICES,
    Ledger,
    SessionView,
    expected,
    tag_of,
)
from tests.chaos.model import LONG_PARTS, long_reply
from tests.chaos.scenes import Forced


@dataclass
class Result:
    row: str
    hit: bool = False
    evidence: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.hit and not self.failures


ROWS: Final = {
    "1": "router: event received, nothing committed -> the platform re-sends; answered once",
    "2": "router: committed, not acknowledged -> the re-send is one row, answered once",
    "3": "agent container killed with its batch claimed -> retried (tries+1), answered once",
    "3a": "runner killed before the model call -> retried, answered by one row",
    "3b": "container killed during the model call -> retried, answered by one row",
    "3c": "runner killed after a mid-turn reply -> that reply not repeated, all answered once",
    "3d": "runner killed before the final write and ack -> retried, answered by one row",
    "4": "reply committed while delivery is down -> sent once after the restart",
    "4a": "a forged row refused as read, told, not recorded -> told once, then recorded",
    "5": "delivery recorded it pending -> sent once",
    "6": "sending(n) committed, nothing sent -> attempt n+1, shown once",
    "7": "the send in flight, the platform never got it -> sent again, shown once",
    "8": "the platform accepted it, its answer in transit -> shown twice, inside the window",
    "9": "a reply in parts, a crash between parts -> resumes after the last recorded part",
    "10": "delivered, outbox folder not removed -> never re-sent, folder swept",
    "11": "the attempt past the last one interrupted (terminal) -> sent again, not failed",
    "12": "a system action applied, not recorded -> applied again, idempotently",
    "13": "an agent-to-agent row inserted, not recorded -> not inserted twice",
    "14": "a refusal's note and owner notice queued, not settled -> each written once",
    "15": "an approval decided while delivery was dead -> applied after the restart",
    "16": "an approval applied, its row not deleted -> applied again, the note once",
    "17": "an owner notice queued, not sent -> sent after the restart",
    "18": "an owner notice accepted, not recorded -> sent again, inside the window",
    "P": "the proxy killed during a model call -> the call is retried, answered once, no error",
}


class Checker:
    def __init__(self, ledger: Ledger, forced: list[Forced]) -> None:
        self.ledger = ledger
        self.forced = forced
        self.results = {row: Result(row) for row in ROWS}

    def run(self) -> dict[str, Result]:
        for scene in self.forced:
            for row in scene.rows:
                result = self.results[row]
                if not scene.happened:
                    result.failures.append(f"scene {scene.scene!r} missed: {scene.missed}")
                    continue
                check = CHECKS.get((scene.scene, row), _answered_once)
                check(self, scene, result)
        self._random_container_kills(self.results["3"])
        self._replies_while_delivery_down(self.results["4"])
        return self.results

    # -- shared checks -------------------------------------------------------------------

    def once(
        self,
        message: Message,
        result: Result,
        texts: list[str] | None = None,
        *,
        not_by: Event | None = None,
    ) -> bool:
        """Each text shown once, but for extra copies a later death explains (the ledger
        checked their windows): another scene's kill may duplicate this row too. ``not_by``:
        the scene's own kill, which must not have duplicated anything here."""
        ok = True
        for text in texts if texts is not None else expected(message):
            count = len(self.ledger.shown(message.chat, text))
            extras = self.ledger.extras.get((message.chat, text), [])
            if count - len(extras) != 1:
                ok = False
                result.failures.append(f"{message.tag}: {text[:50]!r} shown {count} times")
            if not_by is not None and not_by in extras:
                ok = False
                result.failures.append(f"{message.tag}: {text[:50]!r} doubled by the scene's kill")
        return ok

    def kill_of(self, scene: Forced) -> Event | None:
        """The death the scene caused: its crash point firing, or its SIGKILL."""
        for event in self.ledger.events:
            if scene.fired:
                fired_at = scene.fired["at_ms"] / 1000
                if event.action == "forced" and abs(event.at - fired_at) < 0.001:
                    return event
            elif (
                event.action == "sigkill"
                and scene.hold_text
                and scene.hold_text in event.detail
                and event.at >= scene.at
            ):
                return event
        return None

    def view(self, message: Message) -> SessionView | None:
        return self.ledger.views.get(message.chat)

    def out_row(self, message: Message, text: str) -> tuple[SessionView | None, str]:
        view = self.view(message)
        if view is None:
            return None, ""
        rows = view.rows_saying(text)
        return view, rows[0].id if rows else ""

    def subject_of(self, scene: Forced, result: Result) -> Message | None:
        """The message a fired router point names, else the scene's own."""
        named = str(scene.fired.get("message", ""))
        for message in self.ledger.messages:
            if message.platform_message_id == named:
                return message
        if scene.subjects:
            return scene.subjects[0]
        result.failures.append(f"{scene.scene}: no message to check")
        return None

    # -- the random kills the files prove hit a row ------------------------------------------

    def _random_container_kills(self, result: Result) -> None:
        """Every message retried after a death of its run, forced or at random, is
        answered by exactly one outbound row per expected text."""
        by_tag = {m.tag: m for m in self.ledger.messages}
        retried = 0
        for view in {v.session.id: v for v in self.ledger.views.values()}.values():
            for row in view.inbound.values():
                message = by_tag.get(tag_of(row))
                if row.tries < 1 or message is None:
                    continue
                retried += 1
                for text in expected(message):
                    writers = view.rows_saying(text)
                    if not text.startswith("[document") and len(writers) != 1:
                        result.failures.append(
                            f"{message.tag} (tries {row.tries}): {text[:40]!r} written by"
                            f" {len(writers)} rows"
                        )
        kills = [e for e in self.ledger.events if e.action == "container-kill"]
        result.hit = retried > 0
        result.evidence.append(
            f"{len(kills)} container kill(s); {retried} message(s) retried, each answered by"
            " one row"
        )

    def _replies_while_delivery_down(self, result: Result) -> None:
        down: list[tuple[float, float]] = [
            (e.at, e.back_at or e.at)
            for e in self.ledger.events
            if e.program == "delivery" and e.action in DELIVERY_DEATHS | {"stop"}
        ]
        starts = [
            e.at for e in self.ledger.events if e.program == "delivery" and e.action == "start"
        ]
        down = [(a, b if b > a else min([s for s in starts if s > a], default=a)) for a, b in down]
        caught = 0
        for view in {v.session.id: v for v in self.ledger.views.values()}.values():
            for row in view.outbound:
                at = row.timestamp_ms / 1000
                if any(a <= at <= b for a, b in down):
                    caught += 1
                    delivery = view.deliveries.get(row.id)
                    if delivery is None or delivery.status not in ("delivered", "denied"):
                        result.failures.append(
                            f"{row.id} written while delivery was down: {delivery}"
                        )
        if caught:
            result.hit = True
            result.evidence.append(f"{caught} reply row(s) committed while delivery was down")


def _answered_once(checker: Checker, scene: Forced, result: Result) -> None:
    message = checker.subject_of(scene, result)
    if message is None:
        return
    others = [m for m in scene.subjects if m is not message]
    if all([checker.once(m, result) for m in [message, *others]]):
        result.hit = True
        where = f" ({scene.fired.get('point')})" if scene.fired else ""
        tags = ", ".join(m.tag for m in [message, *others])
        result.evidence.append(f"{scene.scene}{where}: {tags} answered once")


def _relayed_once(checker: Checker, scene: Forced, result: Result) -> None:
    """Row 13: the relay, ops's ack and the final reply each written once."""
    message = scene.subjects[0]
    main, ops = checker.view(message), checker.ledger.views.get("tgc")
    relays = main.rows_saying(f"relay {message.tag}") if main else []
    inserted = [
        row
        for row in (ops.inbound.values() if ops else [])
        if row.id.startswith("a2a-") and f"relay {message.tag}" in row.content
    ]
    acks = ops.rows_saying(f"ack {message.tag}") if ops else []
    counts = (len(relays), len(inserted), len(acks))
    if counts != (1, 1, 1):
        result.failures.append(f"{message.tag}: relay/inserted/ack rows {counts}, not one each")
    if checker.once(message, result) and counts == (1, 1, 1):
        result.hit = True
        result.evidence.append(f"{message.tag}: relayed through ops once ({inserted[0].id})")


def _proxy_survived(checker: Checker, scene: Forced, result: Result) -> None:
    """Row P: the held call's batch answered once, and no error shown meanwhile."""
    errors = [
        copy
        for copies in checker.ledger.copies.values()
        for copy in copies
        if copy.text.startswith("Error:") and scene.at <= copy.at <= scene.at + 30
    ]
    for copy in errors:
        result.failures.append(
            f"{copy.chat} showed {copy.text[:70]!r} {copy.at - scene.at:.2f}s in"
        )
    if scene.hold_outcome != "client gone":
        result.failures.append(f"the held model call was {scene.hold_outcome!r}, not cut off")
    before = len(result.failures)
    _answered_once(checker, scene, result)
    if len(result.failures) > before or errors:
        result.hit = False


def _batch_retried_once(checker: Checker, scene: Forced, result: Result) -> None:
    """Rows 3a, 3c, 3d: every message of the batch the runner died on (its marker names
    them) was retried and answered by one row."""
    named = set(filter(None, str(scene.fired.get("messages", "")).split(",")))
    batch = [
        m
        for m in checker.ledger.messages
        if any(row_id.startswith(f"{m.platform_message_id}:") for row_id in named)
    ]
    if not batch:
        result.failures.append(
            f"{scene.scene}: the dead batch ({sorted(named)}) holds none of ours"
        )
        return
    for message in batch:
        _retried_once(checker, Forced(scene.scene, scene.rows, subjects=[message]), result)


def _retried_once(checker: Checker, scene: Forced, result: Result) -> None:
    message = scene.subjects[0]
    view = checker.view(message)
    row = (
        view.inbound.get(f"{message.platform_message_id}:{view.session.agent_group_id}")
        if view
        else None
    )
    if row is None or row.tries < 1:
        result.failures.append(f"{message.tag}: not retried after its container died ({row})")
        return
    pong = f"pong {message.tag}"
    if view is not None and len(view.rows_saying(pong)) != 1:
        result.failures.append(f"{message.tag}: answered by {len(view.rows_saying(pong))} rows")
    if checker.once(message, result):
        result.hit = True
        result.evidence.append(f"{message.tag} retried (tries {row.tries}) and answered once")


def _attempted_again(checker: Checker, scene: Forced, result: Result) -> None:
    """A row found in sending was sent again and shown once (rows 5, 6, 7)."""
    out_id = str(scene.fired.get("message", ""))
    message = scene.subjects[0]
    view = checker.view(message)
    if not out_id and view is not None:
        out_id = next((r.id for r in view.rows_saying(scene.hold_text)), "")
    for candidate in checker.ledger.views.values():
        if out_id in candidate.deliveries:
            view = candidate
    delivery = view.deliveries.get(out_id) if view else None
    if delivery is None or delivery.status != "delivered":
        result.failures.append(f"{scene.scene}: {out_id} is {delivery}")
        return
    text = view.texts.get(out_id, "") if view else ""
    owner = next((m for m in checker.ledger.messages if f"pong {m.tag}" == text), None)
    if scene.hold_outcome and scene.hold_outcome != "dropped":
        result.failures.append(f"{scene.scene}: the held send was {scene.hold_outcome}")
    if owner is None:
        result.failures.append(f"{scene.scene}: {out_id} ({text[:30]!r}) answers none of ours")
        return
    if not checker.once(owner, result, [text], not_by=checker.kill_of(scene)):
        return
    result.hit = True
    result.evidence.append(
        f"{scene.scene}: {out_id} ({text[:30]!r}) delivered on attempt {delivery.attempts},"
        " shown once"
    )


def _shown_twice(checker: Checker, scene: Forced, result: Result) -> None:
    """Row 8: the held copy and the one sent again, the second explained by this kill."""
    message = scene.subjects[0]
    copies = checker.ledger.shown(message.chat, scene.hold_text)
    extras = checker.ledger.extras.get((message.chat, scene.hold_text), [])
    kill = checker.kill_of(scene)
    if kill is None or kill not in extras or len(copies) - len(extras) != 1:
        result.failures.append(
            f"{scene.hold_text!r} shown {len(copies)} times; the scene's kill explains"
            f" {'one copy' if kill in extras else 'none'}"
        )
        return
    result.hit = True
    result.evidence.append(
        f"{scene.hold_text!r} shown twice, {copies[1].at - copies[0].at:.2f}s apart"
    )


def _parts_resumed(checker: Checker, scene: Forced, result: Result) -> None:
    message = scene.subjects[0]
    parts = long_reply(message.tag).split("\n\n")
    counts = [len(checker.ledger.shown(message.chat, part)) for part in parts]
    # A crash after part j was accepted but before it was recorded shows part j twice (the
    # second copy explained by that crash); one after it was recorded, or before part j+1
    # arrived, doubles no part. Other deaths may double a part too, inside their window.
    kill = checker.kill_of(scene)
    doubled = [kill in checker.ledger.extras.get((message.chat, part), []) for part in parts]
    unexplained = [
        count - len(checker.ledger.extras.get((message.chat, part), []))
        for count, part in zip(counts, parts, strict=True)
    ]
    want = [False] * LONG_PARTS
    if scene.fired.get("point") == "delivery.after_part_accepted":
        want[int(scene.fired["part"]) - 1] = True
    if kill is None or doubled != want or unexplained != [1] * LONG_PARTS:
        result.failures.append(
            f"{message.tag}: parts shown {counts} times, doubled by the scene's crash"
            f" {doubled} (expected {want})"
        )
        return
    result.hit = True
    result.evidence.append(f"{scene.scene}: {message.tag}'s parts shown {counts} times")


def _outbox_swept(checker: Checker, scene: Forced, result: Result) -> None:
    message = scene.subjects[0]
    out_id = str(scene.fired.get("message", ""))
    view = checker.view(message)
    if view is not None and out_id in view.outbox:
        result.failures.append(f"outbox/{out_id} was left behind")
    if checker.once(message, result):
        result.hit = True
        result.evidence.append(f"{message.tag}: text and file shown once, outbox/{out_id} removed")


def _terminal_patient(checker: Checker, scene: Forced, result: Result) -> None:
    message = scene.subjects[0]
    limit = checker.ledger.chaos.settings.delivery_max_attempts
    view, out_id = checker.out_row(message, f"pong {message.tag}")
    delivery = view.deliveries.get(out_id) if view else None
    before = int(scene.facts.get("attempts_before_kill", 0))
    if before < limit:
        result.failures.append(f"the interrupted attempt was {before}, not past {limit}")
    if delivery is None or delivery.status != "delivered":
        result.failures.append(f"{out_id} is {delivery}, not delivered")
    if checker.once(message, result) and not result.failures:
        result.hit = True
        result.evidence.append(
            f"{message.tag}: attempt {before} of {limit} interrupted, delivered on attempt"
            f" {delivery.attempts if delivery else '?'}"
        )


def _task_once(checker: Checker, scene: Forced, result: Result) -> None:
    message = scene.subjects[0]
    view = checker.view(message)
    tasks = [
        row
        for row in (view.inbound.values() if view else [])
        if row.kind == "task" and f"task {message.tag}" in row.content
    ]
    if len(tasks) != 1:
        result.failures.append(f"{len(tasks)} task rows for {message.tag}, not one")
    if checker.once(message, result) and len(tasks) == 1:
        result.hit = True
        result.evidence.append(f"{message.tag}: one task ({tasks[0].id}), its reply shown once")


def _counted(checker: Checker, cause: str) -> int:
    """How many owner notices counted ``cause`` (notices are coalesced per group and kind;
    each remembers its recent causes' ids)."""
    with checker.ledger.chaos.central() as central:
        rows = central.db.all("SELECT causes FROM owner_notices")
    return sum(1 for (causes,) in rows if cause in json.loads(causes or "[]"))


def _note_and_notice_once(checker: Checker, scene: Forced, result: Result) -> None:
    """Row 14: the refusal's note and its owner-notice count, once each."""
    view = checker.view(scene.subjects[0])
    seq, key, session = (scene.fired.get(name) for name in ("seq", "message", "session"))
    notes = [
        r for r in (view.inbound.values() if view else []) if r.id.startswith(f"delivery-{seq}-")
    ]
    counted = _counted(checker, f"delivery:{session}:{key}:denied")
    if len(notes) != 1 or counted != 1:
        result.failures.append(f"{len(notes)} note(s), counted by {counted} notice(s), #{seq}")
        return
    result.hit = True
    result.evidence.append(f"note {notes[0].id} once, its cause counted once")


def _refusal_told_once(checker: Checker, scene: Forced, result: Result) -> None:
    """Row 4a: the forged row refused (denied), its note and notice count once each."""
    key, session = str(scene.fired.get("message")), str(scene.fired.get("session"))
    view = next((v for v in checker.ledger.views.values() if v.session.id == session), None)
    delivery = view.deliveries.get(key) if view else None
    notes = [r for r in (view.inbound.values() if view else []) if r.id.startswith("refused-")]
    counted = _counted(checker, f"delivery:{session}:{key}:denied")
    if delivery is None or delivery.status != "denied" or len(notes) != 1 or counted != 1:
        result.failures.append(
            f"forged {key}: {delivery}; {len(notes)} refusal note(s); counted {counted} time(s)"
        )
        return
    result.hit = True
    result.evidence.append(f"forged {key} denied as read: one note ({notes[0].id}), one count")


def _notice_sent(checker: Checker, scene: Forced, result: Result, *, twice: bool) -> None:
    about = f"(session {scene.fired.get('session')}, #{scene.fired.get('seq')})"
    copies = [c for c in checker.ledger.copies["terminal"] if about in c.text]
    killed_at = scene.fired.get("at_ms", 0) / 1000
    if twice:
        second = scene.fired_more[0]["at_ms"] / 1000 if scene.fired_more else 0.0
        if len(copies) == 2 and copies[0].at <= second <= copies[1].at:
            result.hit = True
            result.evidence.append(f"owner notice shown twice, around the kill at {second:.2f}")
        else:
            result.failures.append(f"owner notice shown {len(copies)} times")
    elif copies and copies[0].at > killed_at:
        result.hit = True
        result.evidence.append(
            f"owner notice first shown {copies[0].at - killed_at:.2f}s after the kill"
        )
    else:
        result.failures.append(f"owner notice not shown after the kill ({len(copies)} copies)")


def _approval_requested_once(checker: Checker, scene: Forced, result: Result) -> None:
    """Row 12, an approval request: re-run after the crash, it found its approval (no
    second card) and was delivered."""
    cards = [c for c in checker.ledger.copies["terminal"] if NOTICES["approval card"].match(c.text)]
    out_id = str(scene.fired.get("message", ""))
    view = checker.view(scene.subjects[0])
    delivery = view.deliveries.get(out_id) if view else None
    if len(cards) != 1 or delivery is None or delivery.status != "delivered":
        result.failures.append(f"{len(cards)} approval card(s); the request row is {delivery}")
        return
    result.hit = True
    result.evidence.append(
        f"approval request {out_id} re-run on attempt {delivery.attempts}: one card"
    )


def _approval_applied(checker: Checker, scene: Forced, result: Result) -> None:
    clicked = float(scene.facts.get("clicked_at", 0.0))
    killed = float(scene.facts.get("killed_at", 0.0))
    if result.row == "15" and not killed < clicked:
        result.failures.append("the approval was not decided after delivery was killed")
    approval = str(scene.fired_more[0].get("approval", "")) if scene.fired_more else ""
    view = checker.view(scene.subjects[0])
    notes = [r for r in (view.inbound.values() if view else []) if r.id == f"approval-{approval}"]
    with checker.ledger.chaos.central() as central:
        config = central.get_container_config(checker.ledger.chaos.groups["ops"].id)
        left = [a for a in central.list_pending_approvals() if a.approval_id == approval]
    if config is None or '"probe"' not in config.mcp_servers:
        result.failures.append("the approved MCP server is not in the group's config")
    if len(notes) != 1:
        result.failures.append(f"{len(notes)} notes for approval {approval}")
    if left:
        result.failures.append(f"approval {approval} still pending: {left[0].status}")
    if not result.failures:
        result.hit = True
        result.evidence.append(
            f"approved {clicked - killed:.2f}s after delivery was killed, applied, one note"
            + (" (applied twice)" if result.row == "16" else "")
        )


CHECKS: Final[dict[tuple[str, str], Callable[[Checker, Forced, Result], None]]] = {
    ("container mid-batch", "3b"): _retried_once,
    ("runner.before_model_call", "3a"): _batch_retried_once,
    ("runner.after_send", "3c"): _batch_retried_once,
    ("runner.before_batch_ack", "3d"): _batch_retried_once,
    ("proxy mid-call", "P"): _proxy_survived,
    ("delivery.after_agent_row_inserted", "13"): _relayed_once,
    ("delivery down, then after_pending", "4"): _answered_once,
    ("delivery.after_refusal_told", "4a"): _refusal_told_once,
    ("delivery down, then after_pending", "5"): _attempted_again,
    ("delivery.after_sending", "6"): _attempted_again,
    ("send in flight", "7"): _attempted_again,
    ("answer in transit", "8"): _shown_twice,
    ("part 2 in flight", "9"): _parts_resumed,
    ("delivery.after_part_accepted", "9"): _parts_resumed,
    ("delivery.before_outbox_removed", "10"): _outbox_swept,
    ("terminal past its attempts", "11"): _terminal_patient,
    ("delivery.after_action_applied", "12"): _task_once,
    ("refusal, its notice", "14"): _note_and_notice_once,
    ("refusal, its notice", "17"): lambda c, s, r: _notice_sent(c, s, r, twice=False),
    ("refusal, its notice", "18"): lambda c, s, r: _notice_sent(c, s, r, twice=True),
    ("approval", "12"): _approval_requested_once,
    ("approval", "15"): _approval_applied,
    ("approval", "16"): _approval_applied,
}
