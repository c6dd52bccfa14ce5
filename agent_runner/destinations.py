"""Where the agent's messages go (upstream-container.md §4, §5.2). The session's
``destinations`` table is the container-side ACL (the host checks again on delivery); every
lookup is live, so destinations the host adds mid-run (after ``create_agent``) are seen at once.
"""

from __future__ import annotations

import msgspec

from nanoclaw_common.store.inbound import InboundReader
from nanoclaw_common.store.rows import DestinationEntry


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
        self, entry: DestinationEntry, batch_reply_to: str | None
    ) -> tuple[Target, str | None] | None:
        """Address a final-output block: thread and in_reply_to follow the latest inbound row
        from that destination, so each destination is answered in its own thread; with no
        such row, no thread and the batch's first row as in_reply_to."""
        where = address(entry)
        if where is None:
            return None
        latest = self.inbound.latest_from(*where)
        if latest is None:
            return Target(entry.name, *where), batch_reply_to
        return Target(entry.name, where[0], where[1], latest.thread_id), latest.id

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
