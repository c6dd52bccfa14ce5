"""Issue 8, §4: delivery read whole rows before any size check (four 100 MB rows took it from
46 MB to about 520 MB of RSS; a small VPS OOM-kills it). The real ``nanoclaw-delivery``
process, rows of 100 MB in every kind of column: its peak RSS (``VmHWM``) stays where it
was, each oversized row ends ``failed`` with a note to the agent, and the good rows beside
them are delivered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nanoclaw_common import messages as m
from nanoclaw_common.states import ContainerStatus
from nanoclaw_common.store.bounds import UNUSABLE_ID_PREFIX
from tests.delivery_world import World
from tests.fakes.telegram_api import FakeTelegram
from tests.integration.delivery.process import DeliveryProcess
from tests.waiting import wait_until

HUGE_BYTES = 100_000_000
OTHER_BYTES = 10_000_000  # the remaining columns: ten thousand times their bound
# Reading even one of the rows whole would add its 100 MB; the bounded reads add little.
GROWTH_LIMIT_BYTES = 30_000_000


@pytest.fixture
def delivery(world: World, tmp_path: Path) -> Iterator[DeliveryProcess]:
    process = DeliveryProcess(world.settings, tmp_path / "delivery.log")
    yield process
    process.stop()


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def write_huge(world: World, column: str, seq: int, size: int = HUGE_BYTES) -> int:
    """A row with a ``size``-byte ``column``, written as the container could; its rowid."""
    values: dict[str, Any] = {
        "id": f"'huge-{column}'",
        "seq": str(seq),
        "timestamp_ms": str(world.clock()),
        "kind": "'chat'",
        "content": f"'{m.encode_text(m.SendText(text='hi'))}'",
    }
    values[column] = f"replace(hex(zeroblob({size // 2})), '0', 'x')"
    names = sorted(values)
    db = world.outbound.db
    db.execute(
        f"INSERT INTO messages_out ({', '.join(names)})"
        f" VALUES ({', '.join(values[name] for name in names)})"
    )
    return int(db.scalar("SELECT last_insert_rowid()"))


def settled(world: World) -> dict[str, str]:
    store = world.inbound()
    try:
        return {
            d.message_out_id: d.status
            for d in store.list_deliveries()
            if d.status in ("delivered", "failed", "denied")
        }
    finally:
        store.close()


def test_oversized_rows_keep_delivery_small_and_fail_with_a_note(
    world: World, fake_telegram: FakeTelegram, delivery: DeliveryProcess
) -> None:
    # A session whose container runs (delivery watches it however slowly the rows come).
    world.central.set_container_status(world.session.id, ContainerStatus.RUNNING)
    before = world.text("before the big ones")
    write_huge(world, "content", 3)
    write_huge(world, "platform_id", 5)
    delivery.start()  # the start-up scan finds these
    assert delivery.proc is not None
    baseline = peak_rss_bytes(delivery.proc.pid)
    write_huge(world, "in_reply_to", 7)  # the tail picks these up live
    huge_id = write_huge(world, "id", 9)
    write_huge(world, "thread_id", 11, OTHER_BYTES)
    write_huge(world, "channel_type", 13, OTHER_BYTES)
    write_huge(world, "run_id", 15, OTHER_BYTES)
    after = world.text("after the big ones")
    expected = {
        before.id: "delivered",
        "huge-content": "failed",
        "huge-platform_id": "failed",
        "huge-in_reply_to": "failed",
        f"{UNUSABLE_ID_PREFIX}{huge_id}": "failed",
        "huge-thread_id": "failed",
        "huge-channel_type": "failed",
        "huge-run_id": "failed",
        after.id: "delivered",
    }
    wait_until(
        lambda: settled(world) == expected,
        timeout_s=60,
        what="every row settled",
        poll_s=0.05,
        detail=lambda: f"{settled(world)}\n{delivery.log()}",
    )
    growth = peak_rss_bytes(delivery.proc.pid) - baseline
    assert growth < GROWTH_LIMIT_BYTES, f"peak RSS grew by {growth / 1e6:.0f} MB"
    assert [s.text for s in fake_telegram.sent("sendMessage") if s.chat_id == "100"] == [
        "before the big ones",
        "after the big ones",
    ]
    notes = " ".join(text for text, _t, _w in world.notes())
    for column in ("content", "platform_id", "in_reply_to", "id"):
        assert f"{column} is {HUGE_BYTES} bytes" in notes
    for column in ("thread_id", "channel_type", "run_id"):
        assert f"{column} is {OTHER_BYTES} bytes" in notes
    assert delivery.proc.poll() is None  # still up
