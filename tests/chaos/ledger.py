"""What the chaos run did and what came of it: every message sent, every text each chat
showed, what is on disk, and the acts of the run (``Event``), matched up.

Rules (docs/delivery.md is the contract):
- every message gets its expected replies (``expected``), each in the message's own chat;
- a reply shown more than once is a duplicate, allowed only when a delivery death
  (SIGKILL, or a crash point firing in delivery) came inside the duplicate window of the
  earlier copy: after the platform accepted it and within ``WINDOW_S`` (plus however long
  the fake held its answer back), before the next copy; at most one part per session per
  death; and the copies belong to one outbound row (two rows saying the same thing are the
  agent answering twice: never allowed);
- nothing else is shown, except the owner notices and cards the scenes cause (``NOTICES``).

Every problem names the message, its chat, the acts of the run nearest in time and what
the session's files say about it.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from nanoclaw_common import messages as m
from nanoclaw_common.errors import DecodeError
from nanoclaw_common.store.rows import Ack, Delivery, InboundRow, OutboundRow, Session
from tests.chaos.harness import CHAT_BY_NAME, ChaosStack, Event, Message
from tests.chaos.model import long_reply

# The duplicate window is the platform's answer in transit plus one SQLite write: a few
# milliseconds, stretched on a loaded 2-core machine. A delivery death later than this after
# the platform accepted a part means delivery sat on an accepted answer: not allowed.
WINDOW_S: Final = 2.0
TRANSIT_S: Final = 0.5  # a request on the wire when delivery died, logged by the fake after
NEAR_S: Final = 8.0  # how far back and ahead "nearest acts" look
DELIVERY_DEATHS: Final = frozenset({"sigkill", "forced"})

# Texts the scenes make on purpose (the terminal is the owner's DM): pattern -> how many.
NOTICES: Final = {
    "owner notice": re.compile(r"^NanoClaw: a message from agent group \S+ .* was denied: "),
    "owner notices": re.compile(r"^NanoClaw: \d+ messages from agent group \S+ were refused "),
    "approval card": re.compile(r'^Agent "Ops" asks to add a new MCP server'),
    "approval card edit": re.compile(r"^Add MCP Request\n\n✅ Approved by "),
}


@dataclass(frozen=True)
class Copy:
    """One text a chat showed."""

    chat: str
    text: str
    at: float
    held_s: float = 0.0


@dataclass
class SessionView:
    """One session's files after the run."""

    session: Session
    inbound: dict[str, InboundRow]
    outbound: list[OutboundRow]
    texts: dict[str, str]  # outbound row id -> its text ("" for non-text rows)
    files: dict[str, list[str]]
    deliveries: dict[str, Delivery]
    acks: dict[str, Ack]
    outbox: set[str]  # outbox folders left

    def rows_saying(self, text: str) -> list[OutboundRow]:
        """The outbound rows whose text is ``text``, or has it as one of its paragraphs
        (a long reply's parts)."""
        return [
            row
            for row in self.outbound
            if text == self.texts.get(row.id) or text in self.texts.get(row.id, "").split("\n\n")
        ]


@dataclass
class Problem:
    kind: str  # lost | duplicate | wrong chat | notice | failed | timeline
    chat: str
    what: str
    at: float
    rows: str = ""  # the crash table rows it concerns
    detail: list[str] = field(default_factory=list)


def expected(message: Message) -> list[str]:
    """The texts ``message`` must make its chat show (each exactly once)."""
    pong = f"pong {message.tag}"
    if message.kind == "long":
        return long_reply(message.tag).split("\n\n")
    if message.kind == "file":
        return [f"{pong} file", f"[document {message.tag}.txt]"]
    if message.kind == "task":
        return [pong, f"pong task {message.tag}"]
    return [pong]


class Ledger:
    def __init__(self, chaos: ChaosStack) -> None:
        self.chaos = chaos
        self.messages = list(chaos.messages)
        self.watchdog = chaos.watchdog_restarts()
        self.events = sorted([*chaos.events, *self.watchdog], key=lambda e: e.at)
        self._times = [e.at for e in self.events]
        self.copies: dict[str, list[Copy]] = {}
        self.views: dict[str, SessionView] = {}  # chat name -> its session's view
        self.wanted: dict[str, dict[str, Message]] = defaultdict(dict)  # chat -> text -> msg
        # (chat, text) -> the delivery death that explains each extra copy (``problems``)
        self.extras: dict[tuple[str, str], list[Event]] = {}
        for message in self.messages:
            for text in expected(message):
                self.wanted[message.chat][text] = message

    # -- gathering ---------------------------------------------------------------------------

    def read(self) -> None:
        """Read what every chat showed and every session's files (after the drain)."""
        for name in CHAT_BY_NAME:
            self.copies[name] = [
                Copy(name, text, at, held) for at, text, held in self.chaos.platform_texts(name)
            ]
        views: dict[str, SessionView] = {}
        for name, session in self.chaos.sessions().items():
            views[name] = views.get(session.id) or self._view(session)
            views[session.id] = views[name]
        self.views = {name: view for name, view in views.items() if name in CHAT_BY_NAME}

    def _view(self, session: Session) -> SessionView:
        inbound, outbound = self.chaos.readers(session)
        try:
            out_rows = outbound.messages_after(0, limit=1_000_000)
            texts, files = {}, {}
            for row in out_rows:
                try:
                    content = m.decode_outbound_content(row.content)
                except DecodeError:
                    continue
                if isinstance(content, m.SendText):
                    texts[row.id] = content.text
                    files[row.id] = list(content.files)
            view = SessionView(
                session=session,
                inbound={row.id: row for row in inbound.list_messages(limit=1_000_000)},
                outbound=out_rows,
                texts=texts,
                files=files,
                deliveries={d.message_out_id: d for d in inbound.list_deliveries()},
                acks={a.message_id: a for a in outbound.acks()},
                outbox=_folders(self.chaos.session_paths(session).outbox),
            )
        finally:
            inbound.close()
            outbound.close()
        return view

    # -- matching ------------------------------------------------------------------------------

    def shown(self, chat: str, text: str) -> list[Copy]:
        return sorted((c for c in self.copies.get(chat, []) if c.text == text), key=lambda c: c.at)

    def missing(self) -> list[str]:
        """Expected texts not shown yet (the drain waits for this to be empty)."""
        gone = []
        for chat, wanted in self.wanted.items():
            seen = {c.text for c in self.copies.get(chat, [])}
            gone += [f"{chat}: {text[:60]}" for text in wanted if text not in seen]
        return gone

    def at_rest(self) -> bool:
        """Nothing more will come: every message the agents hold is acked, every reply is in
        a final delivery state (a lost message stays lost)."""
        for view in {v.session.id: v for v in self.views.values()}.values():
            if any(d.status in ("pending", "sending", "retry") for d in view.deliveries.values()):
                return False
            for row in view.inbound.values():
                if row.status == "pending" and row.trigger and row.id not in view.acks:
                    return False
        return True

    def problems(self) -> tuple[list[Problem], list[str]]:
        """Every breach of the rules, and an explanation of each allowed duplicate."""
        problems: list[Problem] = []
        explained: list[str] = []
        self.extras = {}
        used: set[tuple[int, str]] = set()  # (death index, session id): one part each
        for message in self.messages:
            for text in expected(message):
                copies = self.shown(message.chat, text)
                if not copies:
                    problems.append(self._lost(message, text))
                    continue
                for earlier, later in itertools.pairwise(copies):
                    reason = self._explain(message.chat, text, earlier, later, used)
                    if reason.startswith("explained"):
                        explained.append(f"{message.chat} {text[:40]!r}: {reason}")
                    else:
                        problems.append(self._duplicate(message, text, earlier, later, reason))
        problems += self._strays(used, explained)
        problems += self._failures()
        problems += [
            Problem("watchdog", e.program, f"the watchdog restarted {e.program}: {e.detail}", e.at)
            for e in self.watchdog
        ]
        return problems, explained

    def _explain(
        self,
        chat: str,
        text: str,
        earlier: Copy,
        later: Copy,
        used: set[tuple[int, str]],
        *,
        sender: str = "",
    ) -> str:
        """Why ``later`` repeats ``earlier``: the delivery death inside the window, or what
        rules that out. ``sender``: who sent it, if not the chat's session worker (each
        death may explain one part per sender)."""
        view = self.views.get(chat)
        if view is not None:
            saying = view.rows_saying(text)
            if len(saying) > 1:
                runs = ", ".join(f"{row.id} (run {row.run_id}, seq {row.seq})" for row in saying)
                return f"the agent wrote it {len(saying)} times: {runs}"
            shown = len(self.shown(chat, text))
            for row in saying:
                delivery = view.deliveries.get(row.id)
                if delivery is not None and delivery.attempts < shown:
                    return f"shown {shown} times but {row.id} was attempted {delivery.attempts}"
        session = sender or (view.session.id if view is not None else chat)
        # The window opens when the request leaves delivery: a death just before the
        # platform logged it (the request already on the wire) counts too.
        start = earlier.at - TRANSIT_S
        end = earlier.at + earlier.held_s + WINDOW_S
        for index, event in enumerate(self.events):
            if event.program != "delivery" or event.action not in DELIVERY_DEATHS:
                continue
            if start <= event.at <= min(end, later.at) and (index, session) not in used:
                used.add((index, session))
                self.extras.setdefault((chat, text), []).append(event)
                gap = event.at - earlier.at
                return f"explained by {event.describe()} {gap:+.3f}s from the platform's copy"
        return "no delivery death inside the window after the first copy"

    def _strays(self, used: set[tuple[int, str]], explained: list[str]) -> list[Problem]:
        """Texts nobody expects in that chat: a reply in the wrong chat, an error notice."""
        problems: list[Problem] = []
        notices: Counter[str] = Counter()
        for chat, copies in self.copies.items():
            for copy in copies:
                if copy.text in self.wanted.get(chat, {}):
                    continue
                owner = next((c for c, w in self.wanted.items() if copy.text in w), None)
                if owner is not None:
                    problems.append(
                        Problem(
                            "wrong chat",
                            chat,
                            f"{copy.text[:60]!r} (a reply for {owner}) shown in {chat}",
                            copy.at,
                            detail=self.near(copy.at),
                        )
                    )
                    continue
                notice = next((n for n, p in NOTICES.items() if p.match(copy.text)), None)
                if notice is not None and chat == "terminal":
                    notices[copy.text] += 1  # two notices about different causes differ
                    if notices[copy.text] > 1:
                        earlier = self.shown(chat, copy.text)[0]
                        reason = self._explain(
                            chat, copy.text, earlier, copy, used, sender="owner notices"
                        )
                        # The card itself is never sent twice (crash row 12); its outcome
                        # edit may be, with the approval applied again (row 16).
                        excusable = notice != "approval card" and reason.startswith("explained")
                        if excusable or notice == "approval card edit":
                            explained.append(f"{notice}: {reason}")
                            continue
                        row = "12" if notice == "approval card" else "18"
                        problems.append(Problem("duplicate", chat, notice, copy.at, row, [reason]))
                    continue
                problems.append(self._notice(chat, copy))
        return problems

    def _failures(self) -> list[Problem]:
        """What the files say went wrong even if no chat showed it."""
        problems: list[Problem] = []
        seen: set[str] = set()
        for chat, view in self.views.items():
            if view.session.id in seen:
                continue
            seen.add(view.session.id)
            for row in view.inbound.values():
                if row.status == "failed":
                    ack = view.acks.get(row.id)
                    acked = f"acked failed by {ack.run_id}" if ack else "given up by the host"
                    at = (ack.status_changed_ms if ack else row.timestamp_ms) / 1000
                    problems.append(
                        Problem(
                            "failed",
                            chat,
                            f"inbound {row.id} ({tag_of(row) or 'not one of ours'}) failed"
                            f" after {row.tries} tries: {acked}",
                            at,
                            guess_rows(self.nearest(at)),
                            self.near(at),
                        )
                    )
            for delivery in view.deliveries.values():
                if delivery.message_out_id in self.chaos.refused_on_purpose:
                    continue  # a row a scene forged to be refused (crash row 4a)
                if delivery.status not in ("delivered",) and not (
                    delivery.status == "denied"
                    and "create_agent is admin-only" in (delivery.last_error or "")
                ):
                    problems.append(
                        Problem(
                            "failed",
                            chat,
                            f"outbound {delivery.message_out_id} (seq {delivery.seq}) is"
                            f" {delivery.status} after {delivery.attempts} attempt(s):"
                            f" {delivery.last_error}",
                            delivery.updated_at_ms / 1000,
                            detail=self.near(delivery.updated_at_ms / 1000),
                        )
                    )
        return problems

    # -- describing ----------------------------------------------------------------------------

    def near(self, at: float) -> list[str]:
        """The run's acts nearest to ``at`` (within ``NEAR_S``), nearest first."""
        low = bisect.bisect_left(self._times, at - NEAR_S)
        high = bisect.bisect_right(self._times, at + NEAR_S)
        close = sorted(self.events[low:high], key=lambda e: abs(e.at - at))[:4]
        return [f"nearest: {event.describe(at)}" for event in close] or ["no act of the run nearby"]

    def nearest(self, at: float) -> Event | None:
        """The act most likely to have caused something seen at ``at``: the latest one
        before it (within ``NEAR_S``), else the first one after."""
        before = [e for e in self.events if at - NEAR_S <= e.at <= at]
        if before:
            return before[-1]
        after = [e for e in self.events if at < e.at <= at + NEAR_S]
        return after[0] if after else None

    def deaths_of(self, chat: str, before: float, within_s: float = 60.0) -> list[Event]:
        """Kills of the container of ``chat``'s session in the ``within_s`` before."""
        sessions = {chat} | ({"tgc", "tgd"} if chat in ("tgc", "tgd") else set())
        return [
            e
            for e in self.events
            if e.action == "container-kill"
            and e.program.split(":", 1)[1] in sessions
            and before - within_s <= e.at <= before
        ]

    def _lost(self, message: Message, text: str) -> Problem:
        problem = Problem(
            "lost",
            message.chat,
            f"{message.tag} ({message.text!r}) never got {text[:50]!r}",
            message.at,
            guess_rows(self.nearest(message.at)),
        )
        problem.detail = self.timeline(message) + self.asked(message) + self.near(message.at)
        return problem

    def asked(self, message: Message) -> list[str]:
        """What the model was asked about ``message`` and what it answered."""
        history = self.chaos.model.history(message.tag)
        if not history:
            return ["the model was never shown it"]
        return [
            f"model call #{call} at {at - message.at:+.2f}s: {did}" for at, call, did in history
        ]

    def _duplicate(
        self, message: Message, text: str, earlier: Copy, later: Copy, reason: str
    ) -> Problem:
        rows = guess_rows(self.nearest(earlier.at))
        detail: list[str] = []
        if reason.startswith("the agent wrote it"):
            # Not a resend: a run answered the message twice. The usual cause is a run that
            # died with the message's batch in hand (row 3), whose successor answered it
            # again; name the deaths of that session's container before the first copy.
            rows = "3 (agent container)"
            deaths = self.deaths_of(message.chat, earlier.at)
            named = ", ".join(e.describe(earlier.at) for e in deaths)
            detail.append(f"its container was killed before: {named or '(not in the last 60 s)'}")
        problem = Problem(
            "duplicate",
            message.chat,
            f"{message.tag}: {text[:50]!r} shown at {earlier.at:.3f} and {later.at:.3f}: {reason}",
            earlier.at,
            rows,
        )
        problem.detail = detail + self.timeline(message) + self.near(earlier.at)
        return problem

    def _notice(self, chat: str, copy: Copy) -> Problem:
        problem = Problem("notice", chat, f"unexpected {copy.text[:120]!r}", copy.at)
        view = self.views.get(chat)
        if view is not None:
            for row in view.rows_saying(copy.text):
                answered = view.inbound.get(row.in_reply_to or "")
                tag = tag_of(answered)
                problem.detail.append(
                    f"written as {row.id} (seq {row.seq}, run {row.run_id}) in reply to"
                    f" {row.in_reply_to} ({tag or 'not one of ours'})"
                )
        problem.rows = guess_rows(self.nearest(copy.at), copy.text)
        problem.detail += self.near(copy.at)
        return problem

    def timeline(self, message: Message) -> list[str]:
        """What the session's files say about ``message``."""
        view = self.views.get(message.chat)
        if view is None:
            return [f"{message.chat} has no session"]
        group = view.session.agent_group_id
        row = view.inbound.get(f"{message.platform_message_id}:{group}")
        if row is None:
            return [f"no inbound row {message.platform_message_id}:{group} (never committed)"]
        ack = view.acks.get(row.id)
        lines = [
            f"inbound {row.id} seq {row.seq}: {row.status}, tries {row.tries}, acked"
            f" {ack.status + ' by ' + ack.run_id if ack else 'never'}"
            f"{f' at {ack.status_changed_ms / 1000 - message.at:+.2f}s' if ack else ''}"
        ]
        for out in view.outbound:
            if out.in_reply_to == row.id or message.tag in view.texts.get(out.id, ""):
                delivery = view.deliveries.get(out.id)
                state = (
                    f"{delivery.status}, {delivery.attempts} attempt(s)"
                    if delivery
                    else "untracked"
                )
                lines.append(
                    f"outbound {out.id} seq {out.seq} run {out.run_id}: "
                    f"{view.texts.get(out.id, out.kind)[:60]!r} ({state})"
                )
        return lines


# Texts whose cause is known whatever act came nearest.
SIGNATURES: Final = {
    "Error: Could not reach the model API": "P (proxy: the model call failed)",
    "Error: the agent hit an internal error": "3 (the runner failed a batch)",
}


def guess_rows(event: Event | None, text: str = "") -> str:
    """The crash table rows a problem concerns: by what it says, else by the act most
    likely to have caused it."""
    for start, rows in SIGNATURES.items():
        if text.startswith(start):
            return rows
    if event is None:
        return "none near"
    if event.program == "router":
        return "1-2 (router)"
    if event.program == "delivery":
        return "4-18 (delivery)"
    if event.program.startswith("container"):
        return "3 (agent container)"
    if event.program == "proxy":
        return "P (proxy)"
    return f"({event.program})"


def tag_of(row: InboundRow | None) -> str:
    if row is None:
        return ""
    found = re.search(r"ping (\S+)", row.content)
    return found.group(1) if found else ""


def _folders(path: Path) -> set[str]:
    try:
        return {entry.name for entry in path.iterdir() if entry.is_dir()}
    except OSError:
        return set()
