"""The local terminal chat (``nanoclaw chat``): no tokens, two Unix sockets under ``run/``.

Inbound (router): listens on ``run/cli.sock``. Each ``SendMessage`` line becomes an event
for chat ``cli/local`` from ``cli:local``; the ``Ack`` line is written only after the sink
committed, and the client re-sends with the same id until it gets one.

Outbound (delivery, and the router's own notices): connects to ``run/cli-chat.sock``, where
a running ``nanoclaw chat`` listens, writes one frame and waits for the client's receipt.
No client, a refused connection or no receipt within the timeout is ``RetryLater``: the
message stays pending until a terminal is attached. There is no RPC between our daemons:
both talk only to the terminal client. See docs/internals.md, "CLI channel".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path
from typing import Final

from loguru import logger

from nanoclaw_common.channels import cli_protocol as wire
from nanoclaw_common.channels.base import (
    ChannelAdapter,
    InboundSink,
    OutgoingFile,
)
from nanoclaw_common.channels.common import make_action, make_event, not_committed
from nanoclaw_common.clock import now_ms
from nanoclaw_common.errors import DecodeError, PermanentFailure, RetryLater
from nanoclaw_common.ids import new_id
from nanoclaw_common.messages import MAX_ATTACHMENT_BYTES, AskQuestion
from nanoclaw_common.paths import Layout

log = logger.bind(component="cli-channel")

CHANNEL: Final = "cli"
PLATFORM_ID: Final = "local"  # the one terminal chat
USER_ID: Final = "cli:local"
FRAME_TIMEOUT_S: Final = 5.0


class CliAdapter(ChannelAdapter):
    channel_type = CHANNEL
    text_limit = 100_000  # a terminal has no limit; this is the row limit
    supports_threads = False
    supports_cards = False

    def __init__(self, layout: Layout, *, frame_timeout_s: float = FRAME_TIMEOUT_S) -> None:
        self.layout = layout
        self.frame_timeout_s = frame_timeout_s
        self._server: asyncio.AbstractServer | None = None

    # -- inbound (router) -----------------------------------------------------------------

    async def run_inbound(self, sink: InboundSink) -> None:
        path = wire.router_socket(self.layout)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket from a crashed router
        old_umask = os.umask(0o177)  # the socket is created 0600: only our user may chat
        try:
            self._server = await asyncio.start_unix_server(
                lambda r, w: self._serve(r, w, sink), path=str(path), limit=wire.MAX_REQUEST_BYTES
            )
        finally:
            os.umask(old_umask)
        log.info("terminal chat listening on {}", path)
        try:
            await asyncio.Event().wait()
        finally:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sink: InboundSink
    ) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # a line over the limit
                    writer.write(wire.encode_line(wire.Refusal(id="", error="line too long")))
                    await writer.drain()
                    await sink.on_invalid(CHANNEL, PLATFORM_ID, "chat line over the size limit")
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                answer = await self.handle_line(line, sink)
                writer.write(wire.encode_line(answer))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def handle_line(self, line: bytes, sink: InboundSink) -> wire.Answer:
        """One request line → its answer. A decode problem is a refusal (and a recorded
        drop); a sink failure, or a drop that could not be recorded, is a ``not committed``
        refusal the client retries (it is never acknowledged)."""
        try:
            request = wire.decode_request(line)
        except DecodeError as exc:
            try:
                await sink.on_invalid(CHANNEL, PLATFORM_ID, str(exc))
            except Exception as record_exc:
                if not not_committed(CHANNEL, record_exc):
                    log.warning("invalid chat line not recorded: {}", record_exc)
                return wire.Refusal(id="", error=f"not committed: {record_exc}")
            return wire.Refusal(id="", error=str(exc))
        try:
            if isinstance(request, wire.SendMessage):
                event = make_event(
                    channel_type=CHANNEL,
                    platform_id=PLATFORM_ID,
                    message_id=request.id,
                    sender_id=USER_ID,
                    sender_name=request.sender_name,
                    text=request.text,
                    timestamp_ms=now_ms(),
                    # The terminal is the owner's private chat with the assistant.
                    is_mention=True,
                    is_group=False,
                    chat_name="terminal",
                )
                await sink.on_event(event)
                return wire.Ack(id=request.id)
            action = make_action(
                channel_type=CHANNEL,
                platform_id=PLATFORM_ID,
                user_id=USER_ID,
                question_id=request.question_id,
                value=str(request.option),
            )
            await sink.on_action(action)
            return wire.Ack(id=request.question_id)
        except DecodeError as exc:
            try:
                await sink.on_invalid(CHANNEL, PLATFORM_ID, str(exc))
            except Exception as record_exc:
                if not not_committed(CHANNEL, record_exc):
                    log.warning("invalid chat message not recorded: {}", record_exc)
                return wire.Refusal(
                    id=getattr(request, "id", ""), error=f"not committed: {record_exc}"
                )
            return wire.Refusal(id=getattr(request, "id", ""), error=str(exc))
        except Exception as exc:
            if not not_committed(CHANNEL, exc):
                log.warning("chat message not committed: {}", exc)
            return wire.Refusal(id=getattr(request, "id", ""), error=f"not committed: {exc}")

    # -- outbound (delivery) --------------------------------------------------------------

    async def deliver_frame(self, frame: wire.Frame) -> None:
        """Write one frame to the attached terminal and wait for its receipt."""
        path = wire.chat_socket(self.layout)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(path), limit=wire.MAX_REQUEST_BYTES),
                self.frame_timeout_s,
            )
        except (FileNotFoundError, ConnectionRefusedError, TimeoutError, OSError) as exc:
            raise RetryLater(f"no terminal chat attached ({exc.__class__.__name__})") from None
        try:
            writer.write(wire.encode_line(frame))
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), self.frame_timeout_s)
            wire.decode_received(line)
        except (TimeoutError, ConnectionError, DecodeError, OSError) as exc:
            raise RetryLater(f"terminal chat did not confirm ({exc})") from None
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _check(self, platform_id: str) -> None:
        if platform_id != PLATFORM_ID:
            raise PermanentFailure(f"the terminal chat is {PLATFORM_ID!r}, not {platform_id!r}")

    async def send_text(
        self,
        platform_id: str,
        thread_id: str | None,
        text: str,
        files: list[OutgoingFile] | None = None,
    ) -> str | None:
        self._check(platform_id)
        parts = []
        for item in files or []:
            size = item.path.stat().st_size
            if size > MAX_ATTACHMENT_BYTES:
                raise PermanentFailure(f"file {item.name} is {size} bytes, over the limit")
            parts.append(wire.FilePart(name=item.name, data=item.path.read_bytes()))
        message_id = new_id("cliout")
        await self.deliver_frame(wire.TextFrame(id=message_id, text=text, files=parts))
        return message_id

    async def edit_text(
        self, platform_id: str, thread_id: str | None, message_id: str, text: str
    ) -> None:
        self._check(platform_id)
        await self.deliver_frame(wire.EditFrame(id=message_id, text=text))

    async def add_reaction(
        self, platform_id: str, thread_id: str | None, message_id: str, emoji: str
    ) -> None:
        self._check(platform_id)
        await self.deliver_frame(wire.ReactionFrame(id=message_id, emoji=emoji))

    async def send_question(
        self, platform_id: str, thread_id: str | None, question: AskQuestion
    ) -> str | None:
        self._check(platform_id)
        message_id = new_id("cliout")
        await self.deliver_frame(
            wire.QuestionFrame(
                id=message_id,
                question_id=question.question_id,
                title=question.title,
                question=question.question,
                options=[option.label for option in question.options],
            )
        )
        return message_id

    async def set_typing(self, platform_id: str, thread_id: str | None) -> None:
        self._check(platform_id)
        await self.deliver_frame(wire.TypingFrame())


def socket_is_live(path: Path) -> bool:
    """True when something accepts connections on ``path`` (used by the chat client)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True
