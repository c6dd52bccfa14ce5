"""The destination ACL, checked on the host for every row (the container's own checks are a
courtesy only).

- A chat address with no routing on the row falls back to the session's origin chat (and
  thread). A session without an origin chat (agent-to-agent only) has nowhere to default to:
  the row is refused, never silently dropped (upstream marked it delivered, a quirk).
- Sending to the session's origin chat is allowed. Any other chat needs an
  ``agent_destinations`` row (agent group → that messaging group). An address that is no known
  chat at all is refused.
- Sending to an agent group needs an ``agent_destinations`` row (agent group → target group),
  except to the agent's own group.

Every check is a plain function of the central store, run through ``Deps.central.read``: the
ACL only reads, so it goes on while another process holds ``central.db``'s write lock.
"""

from __future__ import annotations

import msgspec

from nanoclaw_common.states import DestinationType
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.rows import AgentGroup, MessagingGroup, OutboundRow, Session
from nanoclaw_delivery.outcome import Denied

AGENT_CHANNEL = "agent"


class ChatAddress(msgspec.Struct, frozen=True):
    channel_type: str
    platform_id: str
    thread_id: str | None

    def describe(self) -> str:
        thread = f" thread {self.thread_id}" if self.thread_id else ""
        return f"{self.channel_type}:{self.platform_id}{thread}"


def is_agent_row(row: OutboundRow) -> bool:
    return row.channel_type == AGENT_CHANNEL


def origin_chat(central: CentralStore, session: Session) -> MessagingGroup | None:
    if session.messaging_group_id is None:
        return None
    return central.get_messaging_group(session.messaging_group_id)


def chat_address(central: CentralStore, session: Session, row: OutboundRow) -> ChatAddress:
    """Where a chat operation goes (raises ``Denied`` when it has nowhere to go)."""
    if row.channel_type and row.platform_id:
        thread = row.thread_id
        origin = origin_chat(central, session)
        same_chat = origin is not None and (origin.channel_type, origin.platform_id) == (
            row.channel_type,
            row.platform_id,
        )
        if thread is None and same_chat:
            thread = session.thread_id  # a per-thread session answers in its thread
        return ChatAddress(row.channel_type, row.platform_id, thread)
    if row.channel_type or row.platform_id:
        raise Denied(
            "incomplete destination: a row needs both channel_type and platform_id",
            notify_owner=False,
        )
    origin = origin_chat(central, session)
    if origin is None:
        raise Denied(
            "no destination: this session has no chat of its own, so a message must name"
            " a destination",
            notify_owner=False,
        )
    return ChatAddress(origin.channel_type, origin.platform_id, session.thread_id)


def check_chat(central: CentralStore, session: Session, address: ChatAddress) -> MessagingGroup:
    """The messaging group behind ``address`` if this session may write to it."""
    chat = central.find_messaging_group(address.channel_type, address.platform_id)
    if chat is None:
        raise Denied(f"unknown chat {address.channel_type}:{address.platform_id}")
    if chat.id == session.messaging_group_id:
        return chat
    if central.has_destination(session.agent_group_id, DestinationType.CHANNEL, chat.id):
        return chat
    raise Denied(
        f"no destination grants agent group {session.agent_group_id} access to chat"
        f" {address.channel_type}:{address.platform_id}"
    )


def route_chat(
    central: CentralStore, session: Session, row: OutboundRow
) -> tuple[ChatAddress, Denied | None]:
    """A chat operation's address (``Denied`` raised when it has nowhere to go) and the ACL's
    refusal of it, if any: returned, not raised, because the leak guard looks at the address
    (the thread id may come from the container) before the ACL's verdict counts."""
    address = chat_address(central, session, row)
    try:
        check_chat(central, session, address)
    except Denied as refusal:
        return address, refusal
    return address, None


def task_address(central: CentralStore, session: Session, row: OutboundRow) -> ChatAddress | None:
    """Where a scheduled task replies: the row's address after the ACL, or None for a
    session with no chat of its own and no address on the row (agent-to-agent only: the
    agent names destinations itself, as in any turn of that session)."""
    if not (row.channel_type or row.platform_id or origin_chat(central, session)):
        return None
    address = chat_address(central, session, row)
    check_chat(central, session, address)
    return address


def check_agent(central: CentralStore, session: Session, target_id: str | None) -> AgentGroup:
    """The target agent group if this session's group may message it."""
    if not target_id:
        raise Denied("agent message without a target agent group", notify_owner=False)
    target = central.get_agent_group(target_id)
    if target_id != session.agent_group_id and not central.has_destination(
        session.agent_group_id, DestinationType.AGENT, target_id
    ):
        raise Denied(
            f"no destination grants agent group {session.agent_group_id} access to agent"
            f" group {target_id}"
        )
    if target is None:
        raise Denied(f"agent group {target_id} does not exist")
    return target
