"""A stand-in for the agent inside the container, for tests of the chat path without Podman:
it does what the agent runner does with ``inbound.db`` and ``outbound.db`` — claims each
pending message, writes one reply row addressed like the message, and acks it completed.

With ``woken_only`` it serves only sessions whose container is not ``stopped`` (as a real
run exists only after a wake), and after answering it marks the container ``stopped``, as
the sweeper does when a run exits: a test can then tell a needed wake from a spurious one.
"""

from __future__ import annotations

import threading
from pathlib import Path

import apsw

from nanoclaw_common.messages import ChatContent, SendText, decode_inbound_content
from nanoclaw_common.states import ContainerStatus
from nanoclaw_common.store import CentralStore, InboundReader, NewOutbound, OutboundStore

RUN_ID = "run-standin"


class StandinAgent:
    def __init__(
        self, home: Path, reply: str = "echo: {text}", *, woken_only: bool = False
    ) -> None:
        self.home = home
        self.reply = reply
        self.woken_only = woken_only
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
                    woken = session.container_status != ContainerStatus.STOPPED
                    if self.woken_only and not woken:
                        continue
                    root = self.home / "sessions" / session.agent_group_id / session.id
                    try:
                        answered = self._serve(root)
                    except apsw.Error:
                        continue  # files still being created
                    if self.woken_only and answered:
                        # The run is over: its container stops, as the sweeper records.
                        central.set_container_status(session.id, ContainerStatus.STOPPED)
        finally:
            central.close()

    def _serve(self, root: Path) -> int:
        """Answer what is pending; how many rows were answered."""
        if not (root / "agent" / "outbound.db").exists():
            return 0
        outbound = OutboundStore(root / "agent" / "outbound.db")
        answered = 0
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
                answered += 1
        finally:
            inbound.close()
            outbound.close()
        return answered
