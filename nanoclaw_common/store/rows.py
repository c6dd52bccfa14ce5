"""Row structs returned by the stores. Field order equals the column order the stores SELECT
(``sqlite.columns``), so a row tuple becomes a struct with ``Row(*values)``."""

from __future__ import annotations

import msgspec


class Row(msgspec.Struct, frozen=True):
    pass


# -- central.db ---------------------------------------------------------------------------


class AgentGroup(Row, frozen=True):
    id: str
    name: str
    folder: str
    created_at_ms: int


class MessagingGroup(Row, frozen=True):
    id: str
    channel_type: str
    platform_id: str
    name: str | None
    is_group: int  # 0 or 1
    unknown_sender_policy: str
    denied_at_ms: int | None
    created_at_ms: int


class Wiring(Row, frozen=True):
    id: str
    messaging_group_id: str
    agent_group_id: str
    engage_mode: str
    engage_pattern: str | None
    sender_scope: str
    ignored_message_policy: str
    session_mode: str
    priority: int
    created_at_ms: int


class User(Row, frozen=True):
    id: str
    kind: str
    display_name: str | None
    created_at_ms: int


class RoleGrant(Row, frozen=True):
    user_id: str
    role: str
    agent_group_id: str | None
    granted_by: str | None
    granted_at_ms: int


class Member(Row, frozen=True):
    user_id: str
    agent_group_id: str
    added_by: str | None
    added_at_ms: int


class UserDm(Row, frozen=True):
    user_id: str
    channel_type: str
    messaging_group_id: str
    resolved_at_ms: int


class Session(Row, frozen=True):
    id: str
    agent_group_id: str
    messaging_group_id: str | None
    thread_id: str | None
    agent_provider: str | None
    status: str
    container_status: str
    run_id: str | None
    run_started_at_ms: int | None
    last_active_ms: int | None
    created_at_ms: int


class AgentDestination(Row, frozen=True):
    agent_group_id: str
    local_name: str
    target_type: str
    target_id: str
    created_at_ms: int


class PendingQuestion(Row, frozen=True):
    question_id: str
    session_id: str
    message_out_id: str
    channel_type: str | None
    platform_id: str | None
    thread_id: str | None
    platform_message_id: str | None
    target_user_id: str | None
    title: str
    options_json: str
    created_at_ms: int
    expires_at_ms: int | None


class PendingApproval(Row, frozen=True):
    approval_id: str
    session_id: str | None
    agent_group_id: str | None
    request_id: str
    action: str
    payload: str
    approver_user_id: str | None
    channel_type: str | None
    platform_id: str | None
    platform_message_id: str | None
    status: str
    title: str
    options_json: str
    created_at_ms: int
    expires_at_ms: int | None


class PendingSenderApproval(Row, frozen=True):
    id: str
    messaging_group_id: str
    agent_group_id: str
    sender_identity: str
    sender_name: str | None
    original_event: str
    approver_user_id: str
    title: str
    options_json: str
    created_at_ms: int


class PendingChannelApproval(Row, frozen=True):
    messaging_group_id: str
    agent_group_id: str
    original_event: str
    approver_user_id: str
    awaiting_name: int  # 0 or 1
    title: str
    options_json: str
    created_at_ms: int


class DroppedMessage(Row, frozen=True):
    channel_type: str
    platform_id: str
    reason: str
    user_id: str | None
    sender_name: str | None
    messaging_group_id: str | None
    agent_group_id: str | None
    detail: str | None
    message_count: int
    first_seen_ms: int
    last_seen_ms: int


class ContainerConfig(Row, frozen=True):
    agent_group_id: str
    provider: str | None
    model: str | None
    effort: str | None
    image_tag: str | None
    assistant_name: str | None
    max_messages_per_prompt: int | None
    skills: str
    mcp_servers: str
    packages_apt: str
    packages_pip: str
    additional_mounts: str
    cli_scope: str
    token_budget_daily: int | None
    updated_at_ms: int
    group_disk_quota_mb: int | None = None  # migration 0100; None: the setting
    session_disk_quota_mb: int | None = None


class TokenUsage(Row, frozen=True):
    agent_group_id: str
    day: str
    input_tokens: int
    output_tokens: int
    requests: int


# -- inbound.db -------------------------------------------------------------------------


class InboundRow(Row, frozen=True):
    id: str
    seq: int
    kind: str
    timestamp_ms: int
    status: str
    process_after_ms: int | None
    recurrence: str | None
    series_id: str | None
    tries: int
    trigger: int  # 0 = context only
    platform_id: str | None
    channel_type: str | None
    thread_id: str | None
    content: str  # JSON; decode with messages.decode_inbound_content(kind, content)
    source_session_id: str | None
    on_wake: int  # 0 or 1
    created_at_ms: int


class Delivery(Row, frozen=True):
    message_out_id: str
    seq: int
    status: str
    attempts: int
    next_attempt_at_ms: int | None
    last_error: str | None
    platform_message_id: str | None
    created_at_ms: int
    updated_at_ms: int
    out_rowid: int | None = None  # the row's rowid in outbound.db (None: recorded by seq only)
    inbound_seq: int | None = None  # messages_in's max seq when the row was first recorded


class DestinationEntry(Row, frozen=True):
    """One row of a session's ``destinations`` projection."""

    name: str
    display_name: str | None
    type: str
    channel_type: str | None
    platform_id: str | None
    agent_group_id: str | None


class Routing(Row, frozen=True):
    channel_type: str | None
    platform_id: str | None
    thread_id: str | None


# -- outbound.db ------------------------------------------------------------------------


class OutboundRow(Row, frozen=True):
    id: str
    seq: int
    in_reply_to: str | None
    timestamp_ms: int
    deliver_after_ms: int | None
    kind: str
    platform_id: str | None
    channel_type: str | None
    thread_id: str | None
    content: str  # JSON written by the container: hostile; decode strictly
    run_id: str | None


class Ack(Row, frozen=True):
    message_id: str
    status: str
    run_id: str
    status_changed_ms: int


class ContainerState(Row, frozen=True):
    run_id: str | None
    started_at_ms: int | None
    current_tool: str | None
    tool_declared_timeout_ms: int | None
    tool_started_at_ms: int | None
    turns: int
    updated_at_ms: int


class ProxyToken(Row, frozen=True):
    token_hash: str
    session_id: str
    agent_group_id: str
    run_id: str
    created_at_ms: int
    bound_to: str | None = None  # the peer identity it works from (migration 0070)
