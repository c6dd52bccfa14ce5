"""The store verbs delivery added: batch recording, open deliveries (paged), parts progress,
operator retry and purge, series-wide task verbs, the schema upgrade (inbound.db); live
sessions, approval decisions, host card ids, router cards and the owner-notice queue
(central.db)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from nanoclaw_common import messages as m
from nanoclaw_common.errors import NotFound
from nanoclaw_common.states import Role
from nanoclaw_common.store import CentralStore, InboundStore, NewInbound, rows
from nanoclaw_common.store.inbound import INBOUND_VERSION
from nanoclaw_common.store.migrations import apply_migrations, central_migrations
from nanoclaw_common.store.owner_notices import OwnerNotices
from nanoclaw_common.store.router_outbox import RouterOutbox
from nanoclaw_common.store.sqlite import Database, Mode
from tests.central_verbs import close_session

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
    close_session(central, closed.id)
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


# -- inbound.db: parts, paging, task states, the version-2 upgrade ----------------------------


def test_parts_progress_keeps_the_first_parts_id(inbound: InboundStore) -> None:
    inbound.record_outbounds([("a", 1)], now=NOW)
    assert inbound.parts_sent("a") == 0
    inbound.record_part("a", 1, "p-1", now=NOW)
    inbound.record_part("a", 2, "p-2", now=NOW + 1)  # a later part's id never replaces it
    inbound.record_part("a", 1, now=NOW + 2)  # progress never goes back
    assert inbound.parts_sent("a") == 2
    assert inbound.platform_message_id("a") == "p-1"
    assert inbound.parts_sent("unknown") == 0
    with pytest.raises(NotFound):
        inbound.record_part("unknown", 1, now=NOW)


def test_open_deliveries_page_by_seq(inbound: InboundStore) -> None:
    """Pages by (seq, id): rows that share a seq (a refused row may repeat another's) are
    never skipped at a page boundary."""
    inbound.record_outbounds([(f"r{n}", 2 * n + 1) for n in range(7)], now=NOW)
    inbound.record_outbounds([("r2-again", 5)], now=NOW)
    pages: list[list[str]] = []
    after: tuple[int, str] | None = None
    while page := inbound.open_deliveries(after=after, limit=3):
        pages.append([d.message_out_id for d in page])
        after = (page[-1].seq, page[-1].message_out_id)
    assert pages == [["r0", "r1", "r2"], ["r2-again", "r3", "r4"], ["r5", "r6"]]


def test_task_statuses_cover_the_series(inbound: InboundStore) -> None:
    inbound.insert_messages([task("t1"), task("t1-next", series="t1")], now=NOW)
    assert inbound.task_statuses("t1") == {"pending"}
    inbound.pause_task("t1")
    assert inbound.task_statuses("t1") == {"paused"}
    inbound.cancel_task("t1")
    assert inbound.task_statuses("t1") == {"completed"}
    assert inbound.task_statuses("nope") == set()


def test_a_version_1_inbound_db_is_upgraded(tmp_path: Path) -> None:
    """A file written before ``deliveries.chunks_sent`` existed (user_version 1) gains the
    column (and the later ones), keeps its rows, and says the current version; opening it
    again changes nothing."""
    path = tmp_path / "old.db"
    store = InboundStore(path)
    store.record_outbounds([("a", 1)], now=NOW)
    store.db.execute("ALTER TABLE deliveries DROP COLUMN chunks_sent")
    store.db.execute("PRAGMA user_version = 1")
    store.close()
    upgraded = InboundStore(path)
    try:
        assert upgraded.db.scalar("PRAGMA user_version") == INBOUND_VERSION
        assert (
            upgraded.db.scalar("SELECT chunks_sent FROM deliveries WHERE message_out_id = 'a'") == 0
        )
        assert upgraded.parts_sent("a") == 0
        upgraded.record_part("a", 1, "p-1", now=NOW)
        assert upgraded.get_delivery("a") is not None
    finally:
        upgraded.close()
    again = InboundStore(path)
    try:
        assert again.parts_sent("a") == 1
    finally:
        again.close()


# -- central.db: card ids, router cards, owner notices (migrations 0031, 0032) ----------------


def test_unguessable_ids_carry_128_random_bits() -> None:
    from nanoclaw_common.store.central import unguessable_id

    ids = {unguessable_id("appr", NOW) for _ in range(100)}
    assert len(ids) == 100
    for value in ids:
        prefix, stamp, tail = value.split("-")
        assert (prefix, stamp, len(tail)) == ("appr", str(NOW), 32)
        int(tail, 16)
    assert len(value) + len("|19") <= 64  # Telegram's button data, as it is


def test_host_card_ids_are_known(central: CentralStore, roles: str) -> None:
    row = approval(central, roles, expires=None)
    assert central.is_card_id("appr-1")
    assert not central.is_card_id("q-1")
    assert central.find_pending_approval_for(row.session_id or "", "out-1") == row
    assert central.find_pending_approval_for(row.session_id or "", "out-2") is None
    chat = central.create_messaging_group("telegram", "300", now=NOW)
    assert central.channel_approval_card(chat.id) is None  # nothing pending for it
    central.create_channel_approval(
        rows.PendingChannelApproval(chat.id, roles, "{}", "telegram:owner", 0, "t", "[]", NOW)
    )
    card = central.channel_approval_card(chat.id)
    assert card is not None and card.startswith("regc-")
    assert central.channel_approval_card(chat.id) == card  # made once, then kept
    assert central.find_channel_approval_by_card(card) is not None
    assert central.list_channel_approval_cards() == [card]
    assert central.is_card_id(card) and central.is_card_id(chat.id)


def test_agent_questions_keep_the_agents_id(central: CentralStore, roles: str) -> None:
    session = central.create_session(roles, None, now=NOW)
    question = rows.PendingQuestion(
        "aq-1", session.id, "out-1", "telegram", "100", None, None, None, "t", "[]", NOW, None
    )
    assert central.create_pending_question(question, agent_question_id="q-mine")
    assert not central.create_pending_question(question, agent_question_id="q-other")
    assert central.agent_question_id("aq-1") == "q-mine"
    assert central.agent_question_id("missing") is None


def test_router_card_messages(central: CentralStore) -> None:
    outbox = RouterOutbox(central)
    card = m.AskQuestion(
        question_id="regc-1",
        title="t",
        question="?",
        options=[m.QuestionOption(label="a", value="a")],
    )
    body = m.encode_text(card)
    outbox.enqueue(
        "reg-1",
        channel_type="chat",
        platform_id="owner",
        thread_id=None,
        kind="question",
        body=body,
        now=NOW,
    )
    # In flight: its chat is known, its message not yet (only a terminal click can match).
    assert central.router_card_messages("regc-1") == [("chat", "owner", None)]
    outbox.mark_sent("reg-1", "m7", now=NOW)
    outbox.enqueue(
        "reg-1-choose",
        channel_type="chat",
        platform_id="owner",
        thread_id=None,
        kind="question",
        body=body,
        now=NOW,
    )
    outbox.mark_sent("reg-1-choose", "m9", now=NOW)
    assert sorted(central.router_card_messages("regc-1")) == [
        ("chat", "owner", "m7"),
        ("chat", "owner", "m9"),
    ]
    assert central.router_card_messages("regc-2") == []
    outbox.enqueue(
        "reg-2",
        channel_type="chat",
        platform_id="other",
        thread_id=None,
        kind="question",
        body=m.encode_text(msgspec.structs.replace(card, question_id="regc-2")),
        now=NOW,
    )
    outbox.mark_failed("reg-2", "chat not found", now=NOW)
    assert central.router_card_messages("regc-2") == []  # never shown: no click can count


def test_registrations_pending_before_migration_0031_keep_their_card(tmp_path: Path) -> None:
    """Their cards went out with the chat's id as the question id: after the upgrade that
    id is their card id, so those cards still answer."""
    db = Database(tmp_path / "central.db", Mode.CENTRAL)
    try:
        apply_migrations(db, [m for m in central_migrations() if m.version < 31])
        db.execute(
            "INSERT INTO agent_groups (id, name, folder, created_at_ms) VALUES ('g', 'G', 'g', 1)"
        )
        db.execute(
            "INSERT INTO messaging_groups (id, channel_type, platform_id, created_at_ms)"
            " VALUES ('mg-old', 'telegram', '5', 1)"
        )
        db.execute(
            "INSERT INTO pending_channel_approvals (messaging_group_id, agent_group_id,"
            " original_event, approver_user_id, created_at_ms) VALUES ('mg-old', 'g', '{}', 'u', 1)"
        )
        apply_migrations(db)
    finally:
        db.close()
    central = CentralStore.open(tmp_path / "central.db")
    try:
        assert central.channel_approval_card("mg-old") == "mg-old"
    finally:
        central.close()


def test_owner_notice_queue(central: CentralStore) -> None:
    """One pending notice per group and kind, counting its causes; a cause counted once
    (a re-run after a crash) is not counted again; causes that came while a DM was on its
    way stay pending; settled notices are purged by age and by count."""
    notices = OwnerNotices(central)
    key = "delivery-owner:g"
    assert notices.queue("g", "denied", "c1", "first", now=NOW)
    assert not notices.queue("g", "denied", "c1", "first again", now=NOW + 1)  # a re-run
    assert notices.queue("g", "denied", "c2", "second", now=NOW + 2)
    assert notices.queue("g", "failed", "c3", "other kind", now=NOW + 2)
    [denied, failed] = notices.list("pending")
    assert (denied.kind, denied.count, denied.text) == ("denied", 2, "second")
    assert (failed.kind, failed.count) == ("failed", 1)
    notices.retry(denied.id, "502", NOW + 5_000, now=NOW + 3)
    assert notices.next_due_ms() == NOW + 2  # the failed-kind one
    assert central.last_notice_ms(key) is None  # a failed send claims nothing
    notices.queue("g", "denied", "c4", "while sending", now=NOW + 4)
    notices.sent(denied, key, now=NOW + 5_000)  # the DM said 2; c4 came meanwhile
    assert central.last_notice_ms(key) == NOW + 5_000
    by_status = {(n.kind, n.status): n for n in notices.list()}
    assert by_status["denied", "sent"].count == 2
    assert by_status["denied", "pending"].count == 1
    assert by_status["denied", "pending"].text == "while sending"
    assert not notices.queue("g", "denied", "c2", "second", now=NOW + 6)  # counted and sent
    notices.fail(failed.id, "gave up", now=NOW + 6_001)
    assert notices.purge(before_ms=NOW + 5_001) == 1  # the sent one: older
    assert notices.purge(before_ms=0, keep=0) == 1  # the failed one: over the count
    assert [(n.kind, n.status) for n in notices.list()] == [("denied", "pending")]
