"""The service loop: change detection (inotify, and the stat fallback), one task per session
(a slow platform call in one session does not hold up another), graceful stop finishing the
in-flight item, and picking up work left from before a restart."""

from __future__ import annotations

import asyncio
import functools
import time

import pytest

from nanoclaw_common import messages as m
from nanoclaw_common.sandbox.images import group_image_tag
from nanoclaw_common.store import OutboundStore
from nanoclaw_common.store.outbound import NewOutbound
from nanoclaw_delivery.service import DeliveryService
from tests.delivery_world import World, run
from tests.fakes.recording import RecordingAdapter
from tests.waiting import wait_until_async

WAIT_S = 5.0  # an upper bound for "eventually"; passing runs take milliseconds
LATENCY_POLL_S = 0.001  # fine enough to measure a latency of milliseconds


def sent_more_than(adapter: RecordingAdapter, count: int) -> bool:
    return len(adapter.calls) > count


@pytest.mark.parametrize("use_inotify", [True, False])
def test_new_rows_reach_the_adapter_fast(world: World, use_inotify: bool) -> None:
    async def scenario() -> list[float]:
        service = DeliveryService(world.deps)
        runner = asyncio.create_task(service.run(use_inotify=use_inotify))
        await wait_until_async(
            lambda: world.session.id in service.sessions,
            timeout_s=WAIT_S,
            what="the session's worker",
        )
        latencies = []
        for n in range(20):
            world.text(f"m{n}")
            written = time.monotonic()
            await wait_until_async(
                functools.partial(sent_more_than, world.telegram, n),
                timeout_s=WAIT_S,
                what=f"send {n + 1}",
                poll_s=LATENCY_POLL_S,
            )
            latencies.append(time.monotonic() - written)
        service.request_stop()
        await runner
        return latencies

    latencies = sorted(run(scenario()))
    assert world.telegram.texts() == [f"m{n}" for n in range(20)]
    # generous bound for a loaded CI machine; bench/delivery.py measures properly
    assert latencies[len(latencies) // 2] < 0.1


def test_a_slow_platform_does_not_hold_up_other_sessions(world: World) -> None:
    slack_chat = world.central.create_messaging_group("slack", "C1", now=world.clock())
    world.central.create_wiring(slack_chat.id, world.group.id, now=world.clock())
    slack_session = world.new_session(world.group, slack_chat)
    slack: RecordingAdapter = world.adapters["slack"]
    slack.gate = asyncio.Event()
    slack_out = OutboundStore(world.layout.session(world.group.id, slack_session.id).outbound_db)

    async def scenario() -> None:
        assert slack.gate is not None
        service = DeliveryService(world.deps)
        runner = asyncio.create_task(service.run())
        slack_out.insert_message(NewOutbound(content=m.SendText(text="slow one")))
        await wait_until_async(
            lambda: world.deps.counters.in_flight == 1,
            timeout_s=WAIT_S,
            what="one send in flight",
        )
        world.text("fast one")
        await wait_until_async(
            lambda: world.telegram.texts() == ["fast one"],
            timeout_s=WAIT_S,
            what='only the text "fast one"',
        )
        assert slack.calls == []  # still stuck in the slack call
        slack_out.insert_message(NewOutbound(content=m.SendText(text="second slow")))
        service.request_stop()  # graceful: the in-flight slack call may finish
        await asyncio.sleep(0)
        slack.gate.set()
        await runner

    run(scenario())
    slack_out.close()
    assert [c[3] for c in slack.calls] == ["slow one"]  # finished; nothing new started
    store = world.inbound(slack_session)
    statuses = [d.status for d in store.list_deliveries()]
    store.close()
    # The second row was never started; the next delivery process picks it up.
    assert statuses == ["delivered"]


def test_startup_finds_rows_written_while_delivery_was_down(world: World) -> None:
    world.text("written while down")
    world.clock.advance(10 * 86_400_000)  # long after the session was last active

    async def scenario() -> None:
        service = DeliveryService(world.deps)
        runner = asyncio.create_task(service.run())
        await wait_until_async(
            lambda: world.telegram.texts() == ["written while down"],
            timeout_s=WAIT_S,
            what='only the text "written while down"',
        )
        service.request_stop()
        await runner

    run(scenario())


def test_retry_is_attempted_when_due(world: World) -> None:
    from nanoclaw_common.errors import RetryLater

    world.telegram.failures.append(RetryLater("blip", delay_s=0.05))

    async def scenario() -> None:
        service = DeliveryService(world.deps)
        runner = asyncio.create_task(service.run())
        world.text("again")
        await wait_until_async(
            lambda: world.deps.counters.retried == 1,
            timeout_s=WAIT_S,
            what="one retry",
        )
        world.clock.advance(50)  # the retry is due now: the session task wakes by itself
        await wait_until_async(
            lambda: world.telegram.texts() == ["again"],
            timeout_s=WAIT_S,
            what='only the text "again"',
        )
        service.request_stop()
        await runner

    run(scenario())


def test_approval_loop_applies_decisions(world: World) -> None:
    world.write(m.InstallPackages(apt=["jq"]))

    async def scenario() -> str:
        service = DeliveryService(world.deps)
        runner = asyncio.create_task(service.run())
        await wait_until_async(
            lambda: world.central.list_pending_approvals() != [],
            timeout_s=WAIT_S,
            what="a pending approval",
        )
        approval = world.central.list_pending_approvals()[0]
        world.central.decide_approval(
            approval.approval_id, "telegram:owner", "approve", now=world.clock()
        )
        await wait_until_async(
            lambda: world.central.list_pending_approvals() == [],
            timeout_s=WAIT_S,
            what="no pending approval",
        )
        service.request_stop()
        await runner
        return approval.approval_id

    approval_id = run(scenario())
    assert world.built() == [(group_image_tag(world.settings.image, world.group.id), ["jq"], [])]
    assert world.due() == [f"approval-{approval_id}"]


def test_a_broken_session_backs_off_and_does_not_stop_others(world: World) -> None:
    broken = world.new_session(world.group, world.home_chat)
    inbound_db = world.layout.session(world.group.id, broken.id).inbound_db
    inbound_db.write_bytes(b"this is not a database" * 100)

    async def scenario() -> DeliveryService:
        service = DeliveryService(world.deps)
        runner = asyncio.create_task(service.run())
        world.text("still flowing")
        await wait_until_async(
            lambda: world.telegram.texts() == ["still flowing"],
            timeout_s=WAIT_S,
            what='only the text "still flowing"',
        )
        await wait_until_async(
            lambda: broken.id in service.sessions and service.sessions[broken.id].failures,
            timeout_s=WAIT_S,
            what="a failure in the broken session",
        )
        failed = service.sessions[broken.id]
        assert failed.next_due is not None and failed.next_due >= world.clock() + 1000
        service.request_stop()
        await runner
        return service

    run(scenario())


def test_a_backlog_longer_than_a_read_page_is_worked_off(world: World) -> None:
    """A stopped session wrote more rows than one read takes (``READ_PAGE_ROWS``) while
    delivery was down. Nothing will poke it again (its container is gone): the service
    must drain it to the end on its own."""
    total = 600
    for n in range(total):
        world.outbound.insert_message(
            NewOutbound(content=m.SendText(text=f"m{n}")), now=world.clock()
        )

    async def scenario() -> None:
        service = DeliveryService(world.deps)
        runner = asyncio.create_task(service.run())
        await wait_until_async(
            lambda: len(world.telegram.calls) == total,
            timeout_s=30.0,
            what=f"{total} sends",
        )
        service.request_stop()
        await runner

    run(scenario())
    assert world.telegram.texts() == [f"m{n}" for n in range(total)]
    store = world.inbound()
    try:
        assert {d.status for d in store.list_deliveries()} == {"delivered"}
    finally:
        store.close()
    from nanoclaw_delivery.tail import READ_PAGE_ROWS

    assert total > READ_PAGE_ROWS
