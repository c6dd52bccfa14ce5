"""The store verbs delivery added: batch recording, open deliveries, operator retry and purge,
series-wide task verbs (inbound.db); live sessions and approval decisions (central.db)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from nanoclaw_common import messages as m
from nanoclaw_common.errors import NotFound
from nanoclaw_common.states import Role
from nanoclaw_common.store import CentralStore, InboundStore, NewInbound, rows

NOW = 1_700_000_000_000


@pytest.fixture
def inbound(tmp_path: Path) -> Iterator[InboundStore]:
    store = InboundStore(tmp_path / "inbound.db")
    yield store
    store.close()


def task(task_id: str, *, series: str | None = None, prompt: str = "p") -> NewInbound:
    return NewInbound(
        id=task_id,
        content=m.TaskContent(prompt=prompt, script="echo"),
        timestamp_ms=NOW,
        process_after_ms=NOW + 1000,
        recurrence="0 9 * * *",
        series_id=series,
    )


def statuses(store: InboundStore) -> dict[str, str]:
    return {r.id: r.status for r in store.list_messages()}


def test_record_outbounds_batch_is_idempotent(inbound: InboundStore) -> None:
    assert inbound.record_outbounds([("a", 1), ("b", 3)], now=NOW) == 2
    assert inbound.record_outbounds([("b", 3), ("c", 5)], now=NOW) == 1
    assert [d.message_out_id for d in inbound.open_deliveries()] == ["a", "b", "c"]
    assert inbound.delivery_watermark() == 5


def test_open_deliveries_include_future_retries(inbound: InboundStore) -> None:
    inbound.record_outbounds([("a", 1), ("b", 3), ("c", 5)], now=NOW)
    inbound.begin_attempt("a", now=NOW)
    inbound.finish_delivery("a", "retry", next_attempt_at_ms=NOW + 60_000, now=NOW)
    inbound.begin_attempt("b", now=NOW)
    inbound.finish_delivery("b", "delivered", platform_message_id="p", now=NOW)
    assert [d.message_out_id for d in inbound.open_deliveries()] == ["a", "c"]
    assert [d.message_out_id for d in inbound.due_deliveries(now=NOW)] == ["c"]


def test_reopen_delivery_only_settled_problems(inbound: InboundStore) -> None:
    inbound.record_outbounds([("a", 1), ("b", 3)], now=NOW)
    inbound.begin_attempt("a", now=NOW)
    inbound.finish_delivery("a", "failed", error="boom", now=NOW)
    inbound.reopen_delivery("a", now=NOW + 5)
    row = inbound.get_delivery("a")
    assert row is not None
    assert (row.status, row.attempts, row.next_attempt_at_ms) == ("retry", 0, NOW + 5)
    with pytest.raises(NotFound):
        inbound.reopen_delivery("b", now=NOW)  # pending: nothing to reopen


def test_purge_keeps_the_watermark_row(inbound: InboundStore) -> None:
    inbound.record_outbounds([("a", 1), ("b", 3), ("c", 5)], now=NOW)
    for out_id in ("a", "b", "c"):
        inbound.begin_attempt(out_id, now=NOW)
        inbound.finish_delivery(out_id, "failed", error="x", now=NOW)
    assert inbound.purge_deliveries(["failed"], before_ms=NOW + 1) == 2
    assert [d.message_out_id for d in inbound.list_deliveries()] == ["c"]
    assert inbound.delivery_watermark() == 5
    with pytest.raises(ValueError, match="open"):
        inbound.purge_deliveries(["pending"], before_ms=NOW)


def test_purge_respects_age(inbound: InboundStore) -> None:
    inbound.record_outbounds([("a", 1), ("b", 3)], now=NOW)
    inbound.begin_attempt("a", now=NOW)
    inbound.finish_delivery("a", "denied", error="acl", now=NOW + 10)
    assert inbound.purge_deliveries(["denied"], before_ms=NOW + 10) == 0
    assert inbound.purge_deliveries(["denied"], before_ms=NOW + 11) == 1


def test_task_verbs_are_series_wide(inbound: InboundStore) -> None:
    inbound.insert_messages([task("t1"), task("t1-next", series="t1"), task("other")], now=NOW)
    assert inbound.pause_task("t1") == 2
    assert statuses(inbound) == {"t1": "paused", "t1-next": "paused", "other": "pending"}
    assert inbound.pause_task("t1") == 0  # nothing pending left
    assert inbound.resume_task("t1") == 2
    assert inbound.cancel_task("t1") == 2
    cancelled = inbound.get_message("t1-next")
    assert cancelled is not None
    assert (cancelled.status, cancelled.recurrence) == ("completed", None)
    assert inbound.cancel_task("t1") == 0
    assert inbound.cancel_task("missing") == 0


def test_task_verbs_ignore_non_task_rows(inbound: InboundStore) -> None:
    inbound.insert_message(
        NewInbound(
            id="chat1", content=m.ChatContent(text="hi", sender_id="cli:local"), timestamp_ms=NOW
        ),
        now=NOW,
    )
    assert inbound.cancel_task("chat1") == 0
    assert inbound.update_task("chat1", prompt="x") == 0


def test_update_task_merges_fields(inbound: InboundStore) -> None:
    inbound.insert_messages([task("t1"), task("t1-next", series="t1")], now=NOW)
    inbound.pause_task("t1-next")
    assert inbound.update_task("t1", prompt="new") == 2
    for row_id in ("t1", "t1-next"):
        row = inbound.get_message(row_id)
        assert row is not None
        content = m.decode_inbound_content(row.content)
        assert content == m.TaskContent(prompt="new", script="echo")
        assert (row.process_after_ms, row.recurrence) == (NOW + 1000, "0 9 * * *")
    assert inbound.update_task("t1", script=None, process_after_ms=NOW + 5, recurrence=None) == 2
    row = inbound.get_message("t1")
    assert row is not None
    assert m.decode_inbound_content(row.content) == m.TaskContent(prompt="new", script=None)
    assert (row.process_after_ms, row.recurrence) == (NOW + 5, None)
    inbound.cancel_task("t1")
    assert inbound.update_task("t1", prompt="late") == 0


# -- central ------------------------------------------------------------------------------


def test_live_sessions(central: CentralStore) -> None:
    group = central.create_agent_group("A", "a", now=NOW)
    old = central.create_session(group.id, None, now=NOW - 10_000)
    recent = central.create_session(group.id, None, now=NOW - 10)
    running = central.create_session(group.id, None, now=NOW - 10_000)
    central.set_container_status(running.id, "starting", run_id="r1", now=NOW - 10_000)
    closed = central.create_session(group.id, None, now=NOW)
    central.close_session(closed.id)
    live = {s.id for s in central.live_sessions(NOW - 1000)}
    assert live == {recent.id, running.id}
    assert old.id not in live


def approval(central: CentralStore, group_id: str, *, expires: int | None) -> rows.PendingApproval:
    session = central.create_session(group_id, None, now=NOW)
    row = rows.PendingApproval(
        approval_id="appr-1",
        session_id=session.id,
        agent_group_id=group_id,
        request_id="out-1",
        action="install_packages",
        payload="{}",
        approver_user_id="telegram:admin",
        channel_type="telegram",
        platform_id="100",
        platform_message_id=None,
        status="pending",
        title="t",
        options_json="[]",
        created_at_ms=NOW,
        expires_at_ms=expires,
    )
    assert central.create_pending_approval(row)
    return row


@pytest.fixture
def roles(central: CentralStore) -> str:
    group = central.create_agent_group("A", "a", now=NOW)
    for user in ("telegram:admin", "telegram:member", "telegram:owner", "slack:other-admin"):
        central.upsert_user(user, user.split(":")[0], now=NOW)
    central.grant_role("telegram:admin", Role.ADMIN, group.id, now=NOW)
    central.grant_role("telegram:owner", Role.OWNER, now=NOW)
    other = central.create_agent_group("B", "b", now=NOW)
    central.grant_role("slack:other-admin", Role.ADMIN, other.id, now=NOW)
    central.add_member("telegram:member", group.id, now=NOW)
    return group.id


def test_only_an_approver_click_counts(central: CentralStore, roles: str) -> None:
    approval(central, roles, expires=NOW + 1000)
    for outsider in ("telegram:member", "slack:other-admin", "telegram:nobody"):
        assert central.decide_approval("appr-1", outsider, "approve", now=NOW) == "unauthorized"
    assert central.get_pending_approval("appr-1").status == "pending"  # type: ignore[union-attr]
    assert central.decide_approval("appr-1", "telegram:admin", "approve", now=NOW) == "approved"
    assert central.approval_decided_by("appr-1") == "telegram:admin"
    # A second click (even the owner's) cannot change the decision.
    assert central.decide_approval("appr-1", "telegram:owner", "reject", now=NOW) == "gone"
    assert central.get_pending_approval("appr-1").status == "approved"  # type: ignore[union-attr]


def test_owner_may_reject_and_expiry_wins(central: CentralStore, roles: str) -> None:
    approval(central, roles, expires=NOW + 1000)
    assert central.decide_approval("appr-1", "telegram:owner", "approve", now=NOW + 1000) == (
        "expired"
    )
    assert central.decide_approval("appr-1", "telegram:owner", "nope", now=NOW) == "rejected"
    assert central.decide_approval("missing", "telegram:owner", "approve", now=NOW) == "gone"


def test_decision_columns_survive_row_struct(central: CentralStore, roles: str) -> None:
    approval(central, roles, expires=None)
    central.decide_approval("appr-1", "telegram:admin", "approve", now=NOW)
    found = central.get_pending_approval("appr-1")
    assert found is not None
    assert msgspec.structs.astuple(found)[10] == "approved"


def test_begin_attempt_can_record_new_rows_in_the_same_transaction(
    inbound: InboundStore,
) -> None:
    assert inbound.begin_attempt("a", now=NOW, record=[("a", 1), ("b", 3)]) == 1
    a, b = inbound.get_delivery("a"), inbound.get_delivery("b")
    assert a is not None and (a.status, a.attempts) == ("sending", 1)
    assert b is not None and (b.status, b.attempts) == ("pending", 0)
    # already recorded rows are left alone
    assert inbound.begin_attempt("a", now=NOW, record=[("a", 1)]) == 2


def test_messages_between(inbound: InboundStore) -> None:
    inbound.insert_messages([task(f"t{n}") for n in range(5)], now=NOW)  # seq 2, 4, … 10
    assert [r.seq for r in inbound.messages_between(4, 9)] == [4, 6, 8]
    assert inbound.messages_between(9, 4) == []
