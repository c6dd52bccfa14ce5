"""Where the agent's messages go (upstream-container.md §4, §5.2). The session's
``destinations`` table is the container-side ACL (the host checks again on delivery); every
lookup is live, so destinations the host adds mid-run (after ``create_agent``) are seen at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from nanoclaw_common.store.inbound import InboundReader
from nanoclaw_common.store.rows import DestinationEntry, InboundRow


class Target(msgspec.Struct, frozen=True):
    """A resolved address for an outbound row."""

    name: str
    channel_type: str
    platform_id: str
    thread_id: str | None = None


class RoutingError(Exception):
    """The agent named no usable destination; the message says what it can use."""


def address(entry: DestinationEntry) -> tuple[str, str] | None:
    """(channel_type, platform_id) of a destination, None when the row is incomplete."""
    if entry.type == "agent":
        return ("agent", entry.agent_group_id) if entry.agent_group_id else None
    if entry.channel_type and entry.platform_id:
        return entry.channel_type, entry.platform_id
    return None


class Destinations:
    def __init__(self, inbound: InboundReader) -> None:
        self.inbound = inbound

    def all(self) -> list[DestinationEntry]:
        return self.inbound.destinations()

    def find(self, name: str) -> DestinationEntry | None:
        return self.inbound.find_destination(name)

    def origin_name(self, channel_type: str, platform_id: str) -> str | None:
        """The ``from=`` name of a row's address (reverse lookup)."""
        entry = self.inbound.find_destination_by_address(channel_type, platform_id)
        return entry.name if entry else None

    def _known(self) -> str:
        return ", ".join(d.name for d in self.all()) or "(none)"

    def for_tool(self, to: str | None) -> Target:
        """Resolve a tool's ``to`` argument (omitted: the current conversation)."""
        routing = self.inbound.routing()
        if not to:
            if routing.channel_type and routing.platform_id:
                return Target(
                    "(current conversation)",
                    routing.channel_type,
                    routing.platform_id,
                    routing.thread_id,
                )
            entries = self.all()
            if not entries:
                raise RoutingError("No destinations configured.")
            if len(entries) > 1:
                raise RoutingError(
                    'You have multiple destinations — specify "to". Options: '
                    + ", ".join(d.name for d in entries)
                )
            to = entries[0].name
        entry = self.find(to)
        where = address(entry) if entry else None
        if entry is None or where is None:
            raise RoutingError(f'Unknown destination "{to}". Known: {self._known()}')
        channel_type, platform_id = where
        thread_id = None
        if entry.type == "channel" and (routing.channel_type, routing.platform_id) == where:
            thread_id = routing.thread_id
        return Target(entry.name, channel_type, platform_id, thread_id)

    def for_block(
        self,
        entry: DestinationEntry,
        batch: Sequence[InboundRow],
        batch_reply_to: str | None,
    ) -> tuple[Target, str | None] | None:
        """Address a final-output block. To a destination the batch has rows from: the
        newest of them is what it answers (``in_reply_to``) and its thread is used, so each
        destination is answered in its own thread. To any other destination: the batch's
        first row, and the thread of that chat's newest message. Never a row outside the
        batch as ``in_reply_to``: a message that arrived after the batch was read is not
        answered by it."""
        where = address(entry)
        if where is None:
            return None
        for row in reversed(batch):
            if (row.channel_type, row.platform_id) == where:
                return Target(entry.name, where[0], where[1], row.thread_id), row.id
        latest = self.inbound.latest_from(*where)
        thread_id = latest.thread_id if latest is not None else None
        return Target(entry.name, where[0], where[1], thread_id), batch_reply_to

    def session_target(self) -> Target | None:
        """The session's own chat (for notices such as "Session cleared.")."""
        routing = self.inbound.routing()
        if routing.channel_type and routing.platform_id:
            return Target(
                "(current conversation)",
                routing.channel_type,
                routing.platform_id,
                routing.thread_id,
            )
        return None
