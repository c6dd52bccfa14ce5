"""Delivery's test-only crash points, one per row of docs/delivery.md's crash table that
needs one (``nanoclaw_common.faults``; internals.md, "Test-only crash points"). Each call is
a no-op unless a test armed that point; production never does."""

from __future__ import annotations

from collections.abc import Sequence

from nanoclaw_common import messages as m
from nanoclaw_common.faults import Fact
from nanoclaw_common.store.deliveries import Track
from nanoclaw_common.store.rows import OutboundRow
from nanoclaw_delivery.acl import is_agent_row
from nanoclaw_delivery.context import Deps
from nanoclaw_delivery.tail import Fresh


def facts(session_id: str, message_id: str, seq: int) -> dict[str, Fact]:
    """What a crash point's marker says about the row (also the log line's ids)."""
    return {"session": session_id, "message": message_id, "seq": seq}


def after_pending(
    deps: Deps, session_id: str, recorded: Sequence[Track], sending: str = ""
) -> None:
    """Row 5: a commit just left rows ``pending`` (recorded, no attempt yet); ``sending``
    is the row that commit moved on to ``sending`` instead. A refused row is recorded
    settled, not pending."""
    left = [t for t in recorded if t.key != sending and t.status == "pending"]
    if left and deps.faults.enabled:
        deps.faults.crash("delivery.after_pending", **facts(session_id, left[0].key, left[0].seq))


def after_begin(
    deps: Deps,
    session_id: str,
    recorded: Sequence[Track],
    ids: dict[str, Fact],
    attempt: int,
) -> None:
    """Rows 5 and 6, after ``begin_attempt`` committed: the rows it recorded ``pending``
    besides this one; this row in ``sending(n)``, the ACL, leak guard and file staging not
    run yet."""
    after_pending(deps, session_id, recorded, sending=str(ids["message"]))
    deps.faults.crash("delivery.after_sending", **ids, attempt=attempt)


def before_outbox_removed(deps: Deps, ids: dict[str, Fact]) -> None:
    """Row 10: a row with files is ``delivered``, its outbox folder not removed yet."""
    deps.faults.crash("delivery.before_outbox_removed", **ids)


def after_report_queued(deps: Deps, ids: dict[str, Fact], status: str) -> None:
    """Row 14: a refused or failed row's note and owner notice are queued, the row is not
    settled yet."""
    deps.faults.crash("delivery.after_report_queued", **ids, status=str(status))


def after_refusal_told(deps: Deps, session_id: str, items: Sequence[Fresh]) -> None:
    """Row 4a: rows refused as they were read are told about (log lines, owner-notice
    counts, the note), their settled records not written yet."""
    if items and deps.faults.enabled:
        first = items[0].track
        keys = ",".join(item.track.key for item in items)
        deps.faults.crash(
            "delivery.after_refusal_told", **facts(session_id, first.key, first.seq), rows=keys
        )


def after_done(
    deps: Deps, row: OutboundRow, content: m.OutboundContent, ids: dict[str, Fact], attempt: int
) -> None:
    """Rows 8, 12 and 13: the row's effect happened (the platform accepted it, the action
    was applied, the agent's row was inserted), its ``delivered`` is not recorded yet."""
    if not isinstance(content, m.CHAT_OPERATIONS):
        point = "delivery.after_action_applied"
    elif is_agent_row(row):
        point = "delivery.after_agent_row_inserted"
    else:
        point = "delivery.after_platform_accepted"
    deps.faults.crash(point, **ids, attempt=attempt, content=content.__struct_config__.tag)
