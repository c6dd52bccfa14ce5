"""``nanoclaw chat``: the local terminal chat (docs/internals.md, "CLI channel").

The client listens on ``run/cli-chat.sock`` for what delivery (and the router) sends to the
terminal, and sends messages to the router on ``run/cli.sock``. A message id is made here and
re-sent until the router acknowledges it, so a router restart neither loses nor doubles it.

``--message TEXT`` sends one message and exits when the turn is over: the agent acked the
message (``processing_ack`` completed or failed) and every reply to it has reached a final
delivery state — or when ``--timeout`` passes (exit status 1). A reply to it is a ``chat``
row addressed to this terminal, written after the message (higher seq) and answering it or a
later row (``in_reply_to``); replies to other chats of an ``agent-shared`` session, or to an
earlier terminal message, are none of this turn's business. ``TurnWatch`` follows them
incrementally: each check reads only the outbound rows it has not seen, and only when a file
changed (``PRAGMA data_version``).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import click

from nanoclaw_cli.context import CliContext, pass_context
from nanoclaw_cli.downloads import save_download
from nanoclaw_common.channels import cli_protocol as wire
from nanoclaw_common.channels.cli import CHANNEL, PLATFORM_ID, socket_is_live
from nanoclaw_common.errors import DecodeError
from nanoclaw_common.ids import new_id
from nanoclaw_common.paths import Layout
from nanoclaw_common.store import CentralStore, InboundReader, OutboundReader
from nanoclaw_common.store.async_central import AsyncCentral
from nanoclaw_common.store.rows import OutboundRow, Session
from nanoclaw_common.untrusted import escaped, terminal_text

FINAL_DELIVERY: Final = frozenset({"delivered", "failed", "denied"})
SEND_RETRY_S: Final = 0.5
POLL_S: Final = 0.1
PAGE: Final = 500  # outbound rows read per query

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass
class Terminal:
    """What the client shows and remembers."""

    save_dir: Path
    interactive: bool
    private_dir: bool = True  # the default folder: kept 0700 (one the operator named: as is)
    texts: dict[str, str] = field(default_factory=dict)
    question: wire.QuestionFrame | None = None
    received: int = 0
    superseded: asyncio.Event = field(default_factory=asyncio.Event)

    def show(self, line: str) -> None:
        # The agent chose most of what is shown: no escape sequence reaches the terminal.
        print(terminal_text(line), flush=True)

    def handle(self, frame: wire.Frame) -> None:
        if isinstance(frame, wire.TextFrame):
            self.received += 1
            self.texts[frame.id] = frame.text
            if frame.text:
                self.show(f"assistant> {frame.text}")
            for part in frame.files:
                try:
                    self.show(f"assistant> [file] {self._save(part)}")
                except OSError as exc:
                    self.show(f"assistant> [file {part.name} not saved: {exc.strerror}]")
        elif isinstance(frame, wire.EditFrame):
            self.texts[frame.id] = frame.text
            self.show(f"assistant (edited)> {frame.text}")
        elif isinstance(frame, wire.ReactionFrame):
            self.show(f"assistant reacted {frame.emoji}")
        elif isinstance(frame, wire.QuestionFrame):
            self.received += 1
            self.question = frame
            self.show(
                f"assistant asks> {frame.title}: {frame.question}"
                if frame.title
                else f"assistant asks> {frame.question}"
            )
            for number, label in enumerate(frame.options, 1):
                self.show(f"  {number}. {label}")
            if self.interactive:
                self.show("  (type the number of your answer)")
        elif isinstance(frame, wire.TypingFrame):
            if self.interactive:
                print("…", end="\r", flush=True)
        elif isinstance(frame, wire.SupersededFrame):
            self.show("[superseded by a newer client]")
            self.superseded.set()

    def _save(self, part: wire.FilePart) -> Path:
        return save_download(self.save_dir, part.name, part.data, private=self.private_dir)


async def take_over_socket(path: Path) -> None:
    """Tell an older chat client it is superseded, then remove its socket."""
    if path.exists() and socket_is_live(path):
        with contextlib.suppress(OSError, TimeoutError):
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 2)
            writer.write(wire.encode_line(wire.SupersededFrame()))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.readline(), 2)
            writer.close()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def listen(path: Path, terminal: Terminal) -> asyncio.AbstractServer:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            frame = wire.decode_frame(line)
            terminal.handle(frame)
            writer.write(wire.encode_line(wire.Received()))
            await writer.drain()
        except (DecodeError, ValueError, ConnectionError):
            pass  # not confirmed: the sender retries
        finally:
            writer.close()

    await take_over_socket(path)
    old_umask = os.umask(0o177)
    try:
        return await asyncio.start_unix_server(serve, path=str(path), limit=wire.MAX_LINE_BYTES)
    finally:
        os.umask(old_umask)


async def request(
    layout: Layout,
    item: wire.Request,
    deadline: float,
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> wire.Answer:
    """Send one request to the router, retrying (same id) until answered or the deadline."""
    path = wire.router_socket(layout)
    last_error = "the router is not running"
    while clock() < deadline:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(path)), max(0.1, deadline - clock())
            )
            try:
                writer.write(wire.encode_line(item))
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), max(0.1, deadline - clock()))
            finally:
                writer.close()
            answer = wire.decode_answer(line)
            if isinstance(answer, wire.Refusal) and answer.error.startswith("not committed"):
                last_error = answer.error
            else:
                return answer
        except (OSError, TimeoutError, DecodeError) as exc:
            last_error = str(exc) or exc.__class__.__name__
        await sleep(SEND_RETRY_S)
    return wire.Refusal(id="", error=f"no answer from the router: {last_error}")


@dataclass
class Tracked:
    """One row of this client's message (one per wired agent group) in its session."""

    row_id: str
    seq: int
    inbound: InboundReader
    outbound: OutboundReader | None = None
    outbound_path: Path | None = None
    settled: bool = False  # the agent acked the row completed or failed
    frozen: bool = False  # replies read after the ack: later rows are later turns'
    cursor: int = 0  # outbound seq read up to
    replies: list[str] = field(default_factory=list)  # ours, not yet in a final state
    versions: tuple[int, int] = (-1, -1)  # data_version of (inbound, outbound) last looked at

    def close(self) -> None:
        self.inbound.close()
        if self.outbound is not None:
            self.outbound.close()


def _candidates(central: CentralStore, message_id: str) -> list[tuple[str, list[Session]]]:
    """(the row id the message has in each group the terminal is wired to, that group's
    sessions)."""
    chat = central.find_messaging_group(CHANNEL, PLATFORM_ID)
    if chat is None:
        return []
    return [
        (
            f"{message_id}:{wiring.agent_group_id}",
            central.list_sessions(agent_group_id=wiring.agent_group_id),
        )
        for wiring in central.list_wirings(chat.id)
    ]


class TurnWatch:
    """Is the turn of one terminal message over? ``over()`` is called every poll; it finds
    the message's rows once, then reads only what changed: new outbound rows after its
    cursor, the delivery state of this turn's replies that are not final yet, and the ack
    of the message until it is settled."""

    def __init__(self, central: AsyncCentral, layout: Layout, message_id: str) -> None:
        self.central = central
        self.layout = layout
        self.message_id = message_id
        self.tracked: list[Tracked] = []
        self.rows_read = 0  # outbound rows read, for tests: each is read once

    async def over(self) -> bool:
        if not self.tracked:
            candidates = await self.central.read(_candidates, self.message_id)
            self.tracked = self._locate(candidates)
            if not self.tracked:
                return False
        done = True
        for item in self.tracked:
            done = self._advance(item) and done
        return done

    def close(self) -> None:
        for item in self.tracked:
            item.close()
        self.tracked = []

    def _locate(self, candidates: list[tuple[str, list[Session]]]) -> list[Tracked]:
        """The message's rows (``<message id>:<agent group id>``, or an alternative of it
        after an id collision): committed before the router acknowledged, so normally found
        on the first check."""
        found: list[Tracked] = []
        for row_id, sessions in candidates:
            for session in sessions:
                paths = self.layout.session(session.agent_group_id, session.id)
                if not paths.inbound_db.exists():
                    continue
                inbound = InboundReader(paths.inbound_db)
                # Under its id, or an alternative when another row held that id.
                mine = [
                    r
                    for r in inbound.rows_under(row_id)
                    if (r.kind, r.channel_type, r.platform_id) == ("chat", CHANNEL, PLATFORM_ID)
                ]
                if not mine:
                    inbound.close()
                    continue
                row = mine[-1]
                found.append(Tracked(row.id, row.seq, inbound, outbound_path=paths.outbound_db))
                break
        return found

    def _advance(self, item: Tracked) -> bool:
        """Read what changed for one row; True when its part of the turn is over."""
        if item.outbound is None:
            if item.outbound_path is None or not item.outbound_path.exists():
                return False  # no run has opened the session yet
            item.outbound = OutboundReader(item.outbound_path)
        versions = (item.inbound.data_version(), item.outbound.data_version())
        if versions == item.versions:
            return item.settled and not item.replies
        item.versions = versions
        # The runner writes its replies before it acks, so once the ack is seen, one more
        # read of new rows has every reply of this turn.
        if not item.settled:
            item.settled = item.row_id in item.outbound.settled_ids()
        if not item.frozen:
            self._read_replies(item)
            item.frozen = item.settled
        item.replies = [reply for reply in item.replies if not self._final(item, reply)]
        return item.settled and not item.replies

    def _read_replies(self, item: Tracked) -> None:
        assert item.outbound is not None
        while True:
            page = item.outbound.messages_after(item.cursor, limit=PAGE)
            self.rows_read += len(page)
            for row in page:
                item.cursor = row.seq
                if self._answers(item, row):
                    item.replies.append(row.id)
            if len(page) < PAGE:
                return

    def _answers(self, item: Tracked, row: OutboundRow) -> bool:
        """A reply of this turn: text for this terminal, written after the message, not
        answering an earlier row."""
        if row.kind != "chat" or (row.channel_type, row.platform_id) != (CHANNEL, PLATFORM_ID):
            return False
        if row.seq < item.seq:
            return False
        if row.in_reply_to is None or row.in_reply_to == item.row_id:
            return True
        answered = item.inbound.get_message(row.in_reply_to)
        return answered is None or answered.seq >= item.seq

    def _final(self, item: Tracked, reply_id: str) -> bool:
        delivery = item.inbound.get_delivery(reply_id)
        return delivery is not None and delivery.status in FINAL_DELIVERY


async def one_message(
    layout: Layout,
    central: AsyncCentral,
    text: str,
    timeout_s: float,
    terminal: Terminal,
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    message_id: str | None = None,
) -> int:
    """Send ``text``, wait for its turn to be over; the exit status (1: refused, timed out
    or superseded). ``message_id``: the id to send it under (a new one by default)."""
    deadline = clock() + timeout_s
    message_id = message_id or new_id("cli")
    answer = await request(
        layout,
        wire.SendMessage(id=message_id, text=text, sender_name=getpass.getuser()),
        deadline,
        clock=clock,
        sleep=sleep,
    )
    if isinstance(answer, wire.Refusal):
        print(f"error: {escaped(answer.error)}", file=sys.stderr)
        return 1
    watch = TurnWatch(central, layout, message_id)
    try:
        while clock() < deadline:
            if terminal.superseded.is_set():
                return 1
            if await watch.over():
                return 0
            await sleep(POLL_S)
    finally:
        watch.close()
    print(f"no complete reply within {timeout_s:g}s", file=sys.stderr)
    return 1


def stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str]:
    """Lines typed by the user, read by a daemon thread (a blocked read must not keep the
    process alive once the chat is over); "" means end of input."""
    queue: asyncio.Queue[str] = asyncio.Queue()

    def read() -> None:
        while True:
            line = sys.stdin.readline()
            loop.call_soon_threadsafe(queue.put_nowait, line)
            if not line:
                return

    threading.Thread(target=read, daemon=True, name="stdin").start()
    return queue


async def interactive(layout: Layout, terminal: Terminal) -> int:
    print("Chatting with your assistant. Type /quit to leave.", flush=True)
    lines = stdin_lines(asyncio.get_running_loop())
    superseded = asyncio.ensure_future(terminal.superseded.wait())
    try:
        while True:
            next_line = asyncio.ensure_future(lines.get())
            await asyncio.wait({next_line, superseded}, return_when=asyncio.FIRST_COMPLETED)
            if superseded.done():
                next_line.cancel()
                return 1
            line = next_line.result()
            if not line:
                return 0
            text = line.strip()
            if not text:
                continue
            if text in ("/quit", "/exit"):
                return 0
            item: wire.Request
            question = terminal.question
            if question is not None and text.isdigit() and 1 <= int(text) <= len(question.options):
                item = wire.Click(question_id=question.question_id, option=int(text) - 1)
                terminal.question = None
            else:
                item = wire.SendMessage(id=new_id("cli"), text=text, sender_name=getpass.getuser())
            answer = await request(layout, item, time.monotonic() + 30)
            if isinstance(answer, wire.Refusal):
                print(f"error: {escaped(answer.error)}", file=sys.stderr, flush=True)
    finally:
        superseded.cancel()


async def run_chat(
    layout: Layout,
    central: AsyncCentral,
    message: str | None,
    timeout_s: float,
    save_dir: Path,
    *,
    private_dir: bool = True,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> int:
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    terminal = Terminal(save_dir=save_dir, interactive=message is None, private_dir=private_dir)
    path = wire.chat_socket(layout)
    server = await listen(path, terminal)
    try:
        if message is not None:
            return await one_message(
                layout, central, message, timeout_s, terminal, clock=clock, sleep=sleep
            )
        return await interactive(layout, terminal)
    finally:
        server.close()
        # Leave the socket to a newer client that took it over.
        if not terminal.superseded.is_set():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


@click.command()
@click.option("--message", "-m", help="Send one message, print the replies, exit.")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=120.0,
    show_default=True,
    help="With --message: give up after this many seconds.",
)
@click.option(
    "--save-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where files from the assistant go (default <home>/downloads).",
)
@pass_context
def chat(ctx: CliContext, message: str | None, timeout_s: float, save_dir: Path | None) -> None:
    """Chat with your assistant in the terminal (needs the router, and delivery for replies)."""
    layout = ctx.layout
    ctx.store()  # the schema, before the loop runs
    central = AsyncCentral(layout.central_db, readers=1)
    try:
        code = asyncio.run(
            run_chat(
                layout,
                central,
                message,
                timeout_s,
                save_dir or layout.home / "downloads",
                private_dir=save_dir is None,
            )
        )
    finally:
        central.close()
    sys.exit(code)
