"""Every status string that is stored in a database. A leaf module: stdlib only.

The values are the strings on disk, so renaming a member is a migration.
"""

from __future__ import annotations

from enum import StrEnum


class MessageInStatus(StrEnum):
    """``messages_in.status``: the host's view of an inbound row."""

    PENDING = "pending"  # waiting for a container to claim it (or for process_after)
    COMPLETED = "completed"  # the container acked it completed (synced from processing_ack)
    FAILED = "failed"  # the container acked it failed, or the sweeper gave up after max tries
    PAUSED = "paused"  # a paused scheduled task; resume_task puts it back to pending


class AckStatus(StrEnum):
    """``processing_ack.status``: the container's claim on an inbound row."""

    PROCESSING = "processing"  # claimed by the run in processing_ack.run_id
    COMPLETED = "completed"  # done; the host copies this to messages_in
    FAILED = "failed"  # the runner could not process it; the host copies this too


class DeliveryStatus(StrEnum):
    """``deliveries.status``: the host's durable record of one outbound row."""

    PENDING = "pending"  # seen, not yet attempted
    SENDING = "sending"  # an attempt started; found here after a crash => re-sent
    DELIVERED = "delivered"  # the platform accepted it (platform_message_id may be set)
    RETRY = "retry"  # a retryable failure; next attempt at next_attempt_at_ms
    FAILED = "failed"  # out of attempts, or a permanent failure; reported
    DENIED = "denied"  # refused by the destination ACL or the leak guard; reported


class ContainerStatus(StrEnum):
    """``sessions.container_status``: what the host last did with the session's container."""

    STOPPED = "stopped"
    STARTING = "starting"  # wake() asked Podman; no heartbeat yet
    RUNNING = "running"


class SessionStatus(StrEnum):
    ACTIVE = "active"
    CLOSED = "closed"


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


class EngageMode(StrEnum):
    MENTION = "mention"
    MENTION_STICKY = "mention-sticky"
    PATTERN = "pattern"


class SenderScope(StrEnum):
    ALL = "all"
    KNOWN = "known"


class IgnoredMessagePolicy(StrEnum):
    DROP = "drop"
    ACCUMULATE = "accumulate"


class SessionMode(StrEnum):
    SHARED = "shared"
    PER_THREAD = "per-thread"
    AGENT_SHARED = "agent-shared"


class UnknownSenderPolicy(StrEnum):
    STRICT = "strict"
    REQUEST_APPROVAL = "request_approval"
    PUBLIC = "public"


class Role(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"


class DestinationType(StrEnum):
    CHANNEL = "channel"
    AGENT = "agent"


class MessageKind(StrEnum):
    """``messages_in.kind`` / ``messages_out.kind``."""

    CHAT = "chat"
    TASK = "task"
    WEBHOOK = "webhook"
    SYSTEM = "system"


class CliScope(StrEnum):
    DISABLED = "disabled"
    GROUP = "group"
    GLOBAL = "global"
