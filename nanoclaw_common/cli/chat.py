"""``nanoclaw chat``: the local terminal chat (docs/internals.md, "CLI channel").

The client listens on ``run/cli-chat.sock`` for what delivery (and the router) sends to the
terminal, and sends messages to the router on ``run/cli.sock``. A message id is made here and
re-sent until the router acknowledges it, so a router restart neither loses nor doubles it.

``--message TEXT`` sends one message and exits when the turn is over: the agent acked the
message (``processing_ack`` completed or failed) and every reply it wrote has reached a final
delivery state — or when ``--timeout`` passes (exit status 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import click

from nanoclaw_common.channels import cli_protocol as wire
from nanoclaw_common.channels.cli import CHANNEL, PLATFORM_ID, socket_is_live
from nanoclaw_common.cli.context import CliContext, pass_context
from nanoclaw_common.errors import DecodeError
from nanoclaw_common.ids import new_id
from nanoclaw_common.paths import Layout
from nanoclaw_common.store import CentralStore, InboundReader, OutboundReader

FINAL_DELIVERY: Final = frozenset({"delivered", "failed", "denied"})
SEND_RETRY_S: Final = 0.5
POLL_S: Final = 0.1


@dataclass
class Terminal:
    """What the client shows and remembers."""

    save_dir: Path
    interactive: bool
    texts: dict[str, str] = field(default_factory=dict)
    question: wire.QuestionFrame | None = None
    received: int = 0
    superseded: asyncio.Event = field(default_factory=asyncio.Event)

    def show(self, line: str) -> None:
        print(line, flush=True)

    def handle(self, frame: wire.Frame) -> None:
        if isinstance(frame, wire.TextFrame):
            self.received += 1
            self.texts[frame.id] = frame.text
            if frame.text:
                self.show(f"assistant> {frame.text}")
            for part in frame.files:
                self.show(f"assistant> [file] {self._save(part)}")
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
        self.save_dir.mkdir(parents=True, exist_ok=True)
        name = Path(part.name).name.lstrip(".") or "file"
        target = self.save_dir / name
        n = 2
        while target.exists():
            target = self.save_dir / f"{n}-{name}"
            n += 1
        target.write_bytes(part.data)
        return target


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


async def request(layout: Layout, item: wire.Request, deadline: float) -> wire.Answer:
    """Send one request to the router, retrying (same id) until answered or the deadline."""
    path = wire.router_socket(layout)
    last_error = "the router is not running"
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(path)), max(0.1, deadline - time.monotonic())
            )
            try:
                writer.write(wire.encode_line(item))
                await writer.drain()
                line = await asyncio.wait_for(
                    reader.readline(), max(0.1, deadline - time.monotonic())
                )
            finally:
                writer.close()
            answer = wire.decode_answer(line)
            if isinstance(answer, wire.Refusal) and answer.error.startswith("not committed"):
                last_error = answer.error
            else:
                return answer
        except (OSError, TimeoutError, DecodeError) as exc:
            last_error = str(exc) or exc.__class__.__name__
        await asyncio.sleep(SEND_RETRY_S)
    return wire.Refusal(id="", error=f"no answer from the router: {last_error}")


def turn_over(central: CentralStore, layout: Layout, message_id: str) -> bool:
    """The agent acked the message and every reply reached a final delivery state."""
    chat = central.find_messaging_group(CHANNEL, PLATFORM_ID)
    if chat is None:
        return False
    found = False
    for wiring in central.list_wirings(chat.id):
        row_id = f"{message_id}:{wiring.agent_group_id}"
        for session in central.list_sessions(agent_group_id=wiring.agent_group_id):
            paths = layout.session(session.agent_group_id, session.id)
            if not paths.inbound_db.exists() or not paths.outbound_db.exists():
                continue
            inbound = InboundReader(paths.inbound_db)
            try:
                if inbound.get_message(row_id) is None:
                    continue
                found = True
                outbound = OutboundReader(paths.outbound_db)
                try:
                    if row_id not in outbound.settled_ids():
                        return False
                    replies = [
                        r for r in outbound.messages_after(0, limit=100_000) if r.kind == "chat"
                    ]
                finally:
                    outbound.close()
                for reply in replies:
                    delivery = inbound.get_delivery(reply.id)
                    if delivery is None or delivery.status not in FINAL_DELIVERY:
                        return False
            finally:
                inbound.close()
    return found


async def one_message(
    layout: Layout, central: CentralStore, text: str, timeout_s: float, terminal: Terminal
) -> int:
    deadline = time.monotonic() + timeout_s
    message_id = new_id("cli")
    answer = await request(
        layout,
        wire.SendMessage(id=message_id, text=text, sender_name=getpass.getuser()),
        deadline,
    )
    if isinstance(answer, wire.Refusal):
        print(f"error: {answer.error}", file=sys.stderr)
        return 1
    while time.monotonic() < deadline:
        if terminal.superseded.is_set():
            return 1
        if turn_over(central, layout, message_id):
            return 0
        await asyncio.sleep(POLL_S)
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
                print(f"error: {answer.error}", file=sys.stderr, flush=True)
    finally:
        superseded.cancel()


async def run_chat(
    layout: Layout,
    central: CentralStore,
    message: str | None,
    timeout_s: float,
    save_dir: Path,
) -> int:
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    terminal = Terminal(save_dir=save_dir, interactive=message is None)
    path = wire.chat_socket(layout)
    server = await listen(path, terminal)
    try:
        if message is not None:
            return await one_message(layout, central, message, timeout_s, terminal)
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
    code = asyncio.run(
        run_chat(layout, ctx.store(), message, timeout_s, save_dir or layout.home / "downloads")
    )
    sys.exit(code)
