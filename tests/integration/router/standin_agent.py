"""A stand-in for the agent inside the container, for tests of the chat path without Podman:
it does what the agent runner does with ``inbound.db`` and ``outbound.db`` — claims each
pending message, writes one reply row addressed like the message, and acks it completed."""

from __future__ import annotations

import threading
from pathlib import Path

import apsw

from nanoclaw_common.messages import ChatContent, SendText, decode_inbound_content
from nanoclaw_common.store import CentralStore, InboundReader, NewOutbound, OutboundStore

RUN_ID = "run-standin"


class StandinAgent:
    def __init__(self, home: Path, reply: str = "echo: {text}") -> None:
        self.home = home
        self.reply = reply
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.answered: list[str] = []

    def start(self) -> StandinAgent:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        central = CentralStore(self.home / "central.db")
        try:
            while not self._stop.wait(0.05):
                for session in central.list_sessions(status="active"):
                    root = self.home / "sessions" / session.agent_group_id / session.id
                    try:
                        self._serve(root)
                    except apsw.Error:
                        continue  # files still being created
        finally:
            central.close()

    def _serve(self, root: Path) -> None:
        if not (root / "agent" / "outbound.db").exists():
            return
        outbound = OutboundStore(root / "agent" / "outbound.db")
        inbound = InboundReader(root / "inbound.db")
        try:
            settled = outbound.settled_ids()
            for row in inbound.pending_messages(limit=10, first_poll=False, exclude=settled):
                if row.trigger != 1:
                    continue
                content = decode_inbound_content(row.content)
                text = content.text if isinstance(content, ChatContent) else row.kind
                outbound.claim([row.id], RUN_ID)
                outbound.insert_message(
                    NewOutbound(
                        content=SendText(text=self.reply.format(text=text)),
                        channel_type=row.channel_type,
                        platform_id=row.platform_id,
                        thread_id=row.thread_id,
                        in_reply_to=row.id,
                    ),
                    run_id=RUN_ID,
                    min_seq=inbound.max_seq(),
                )
                outbound.complete([row.id], RUN_ID)
                self.answered.append(row.id)
        finally:
            inbound.close()
            outbound.close()
