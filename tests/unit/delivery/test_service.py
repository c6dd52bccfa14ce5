"""The service loop: change detection (inotify, and the stat fallback), one task per session
(a slow platform call in one session does not hold up another), graceful stop finishing the
in-flight item, and picking up work left from before a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from nanoclaw_common import messages as m
from nanoclaw_common.sandbox.images import group_image_tag
from nanoclaw_common.store import OutboundStore
from nanoclaw_common.store.outbound import NewOutbound
from nanoclaw_delivery.service import DeliveryService
from tests.unit.delivery.helpers import RecordingAdapter, World, run

WAIT_S = 5.0  # an upper bound for "eventually"; passing runs take milliseconds


async def until(check: Callable[[], object], timeout_s: float = WAIT_S) -> float:
    """Poll ``check`` every millisecond; return the seconds it took (fail after the bound)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.001)
    return time.monotonic() - start


@pytest.mark.parametrize("use_inotify", [True, False])
def test_new_rows_reach_the_adapter_fast(world: World, use_inotify: bool) -> None:
    async def scenario() -> list[float]:
        service = DeliveryService(world.deps)
        runner = asyncio.create_task(service.run(use_inotify=use_inotify))
        await until(lambda: world.session.id in service.sessions)
        latencies = []
        for n in range(20):
            world.text(f"m{n}")
            latencies.append(await until(lambda n=n: len(world.telegram.calls) > n))
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
        await until(lambda: world.deps.counters.in_flight == 1)
        world.text("fast one")
        await until(lambda: world.telegram.texts() == ["fast one"])
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
        await until(lambda: world.telegram.texts() == ["written while down"])
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
        await until(lambda: world.deps.counters.retried == 1)
        world.clock.advance(50)  # the retry is due now: the session task wakes by itself
        await until(lambda: world.telegram.texts() == ["again"])
        service.request_stop()
        await runner

    run(scenario())


def test_approval_loop_applies_decisions(world: World) -> None:
    world.write(m.InstallPackages(apt=["jq"]))

    async def scenario() -> str:
        service = DeliveryService(world.deps)
        runner = asyncio.create_task(service.run())
        await until(lambda: world.central.list_pending_approvals() != [])
        approval = world.central.list_pending_approvals()[0]
        world.central.decide_approval(
            approval.approval_id, "telegram:owner", "approve", now=world.clock()
        )
        await until(lambda: world.central.list_pending_approvals() == [])
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
        await until(lambda: world.telegram.texts() == ["still flowing"])
        await until(lambda: broken.id in service.sessions and service.sessions[broken.id].failures)
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
        await until(lambda: len(world.telegram.calls) == total, timeout_s=30.0)
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
