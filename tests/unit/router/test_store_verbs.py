"""The store verbs the router added: the router outbox and the last delivery time."""

from __future__ import annotations

from nanoclaw_common.paths import Layout
from nanoclaw_common.store import CentralStore, InboundStore
from nanoclaw_common.store.router_outbox import RouterOutbox


def test_router_outbox_lifecycle(central: CentralStore) -> None:
    outbox = RouterOutbox(central)
    assert outbox.enqueue(
        "card-1",
        channel_type="chat",
        platform_id="p",
        thread_id=None,
        kind="text",
        body='{"text":"hi"}',
        now=1_000,
    )
    # The id is the dedup key: the same cause does not queue twice.
    assert not outbox.enqueue(
        "card-1",
        channel_type="chat",
        platform_id="p",
        thread_id=None,
        kind="text",
        body='{"text":"hi"}',
        now=1_001,
    )
    assert [i.id for i in outbox.due(now=999)] == []
    assert [i.id for i in outbox.due(now=1_000)] == ["card-1"]
    outbox.mark_retry("card-1", "offline", 5_000, now=1_000)
    assert outbox.due(now=4_999) == []
    assert outbox.next_due_ms() == 5_000
    item = outbox.get("card-1")
    assert item is not None and item.attempts == 1 and item.last_error == "offline"
    outbox.mark_sent("card-1", "m7", now=5_000)
    sent = outbox.get("card-1")
    assert sent is not None and (sent.status, sent.platform_message_id) == ("sent", "m7")
    assert outbox.next_due_ms() is None
    outbox.enqueue(
        "card-2",
        channel_type="chat",
        platform_id="p",
        thread_id="t",
        kind="question",
        body="{}",
        now=1,
    )
    outbox.mark_failed("card-2", "forbidden", now=2)
    assert [i.id for i in outbox.list("failed")] == ["card-2"]


def test_last_delivered_ms(layout: Layout) -> None:
    store = InboundStore(layout.home / "inbound.db")
    try:
        assert store.last_delivered_ms() is None
        store.record_outbound("out-1", 1, now=10)
        store.begin_attempt("out-1", now=20)
        assert store.last_delivered_ms() is None
        store.finish_delivery("out-1", "delivered", platform_message_id="p1", now=30)
        assert store.last_delivered_ms() == 30
    finally:
        store.close()
