"""Owner notices about failed and refused rows: durable (queued in central.db before the row
is settled, sent by a pass that a restart resumes), rate limited per agent group with the
window claimed only by a successful send, and naming a command that works."""

from __future__ import annotations

import asyncio
import re
import shlex
import time

from click.testing import CliRunner

from nanoclaw_common.cli import cli
from nanoclaw_common.errors import PermanentFailure, RetryLater
from nanoclaw_delivery.context import Deps, Offload
from nanoclaw_delivery.service import DeliveryService
from tests.unit.delivery.helpers import World, run


def refused(world: World, text: str = "psst") -> str:
    """A row the ACL refuses (chat 200 is not a destination): the owner should hear."""
    return world.text(text, channel_type="telegram", platform_id="200").id


def owner_dms(world: World) -> list[str]:
    return [c[3] for c in world.telegram.calls if c[1] == "dm-owner"]


def test_the_notice_names_a_command_that_works(world: World) -> None:
    out = refused(world)
    world.drain()
    [notice] = owner_dms(world)
    commands = re.findall(r"`(nanoclaw [^`]+)`", notice)
    assert commands == ["nanoclaw deliveries list --failed"]
    args = shlex.split(commands[0])[1:]
    result = CliRunner(env={"COLUMNS": "250"}).invoke(
        cli, ["--home", str(world.layout.home), *args]
    )
    assert result.exit_code == 0, result.output
    assert out in result.output or "telegram:200" in result.output


def test_a_failed_send_does_not_silence_the_group(world: World) -> None:
    """The owner's DM fails once: the notice is kept and retried, and no window is claimed,
    so the owner still hears about the problem (before: one failed send claimed the hour
    and the notice was gone)."""
    world.telegram.fail_at[1] = RetryLater("502 Bad Gateway")  # the notice's DM
    refused(world, "first")
    world.drain()
    assert owner_dms(world) == []
    world.clock.advance(60_000)  # past the notice's retry time
    refused(world, "second")  # another problem: its report runs a notice pass
    world.drain()
    [sent] = owner_dms(world)
    assert "#1" in sent  # the first problem's notice, retried
    from nanoclaw_delivery.notify import owner_notice_key

    # The window started with that send: the second problem is counted, not sent.
    assert [n.status for n in world.central.list_owner_notices()] == ["sent", "suppressed"]
    [first, _second] = world.central.list_owner_notices()
    assert first.attempts == 2 and first.updated_at_ms == world.clock()
    window = world.central.last_notice_ms(owner_notice_key(world.group.id))
    assert window == world.clock()


def test_one_notice_per_group_is_in_flight(world: World) -> None:
    """While the group's oldest notice waits for its retry, later ones wait behind it: the
    owner gets the oldest first, and no window is claimed by the failure."""
    from nanoclaw_delivery.notify import owner_notice_key, send_owner_notices

    world.telegram.fail_at[1] = RetryLater("502 Bad Gateway")
    refused(world, "first")
    world.drain()
    [waiting] = world.central.list_owner_notices("pending")
    assert waiting.attempts == 1 and "502" in (waiting.last_error or "")
    assert world.central.last_notice_ms(owner_notice_key(world.group.id)) is None
    refused(world, "second")
    world.drain()
    assert owner_dms(world) == []  # the second does not overtake the first
    world.clock.value = waiting.next_attempt_at_ms
    assert run(send_owner_notices(world.deps)) == 1
    [sent] = owner_dms(world)
    assert "#1" in sent


def test_a_permanent_failure_lets_the_next_notice_through(world: World) -> None:
    world.telegram.fail_at[1] = PermanentFailure("bot was blocked by the user")
    refused(world, "first")
    world.drain()
    refused(world, "second")
    world.drain()
    assert len(owner_dms(world)) == 1  # not silenced by the failure
    assert [n.status for n in world.central.list_owner_notices()] == ["failed", "sent"]
    assert "blocked" in (world.central.list_owner_notices()[0].last_error or "")


def test_notices_are_given_up_after_a_day(world: World) -> None:
    from nanoclaw_delivery.notify import send_owner_notices

    world.telegram.connected = False  # the DM cannot be opened
    refused(world)
    world.drain()
    for _ in range(400):
        pending = world.central.list_owner_notices("pending")
        if not pending:
            break
        world.clock.value = pending[0].next_attempt_at_ms
        run(send_owner_notices(world.deps))
    [given_up] = world.central.list_owner_notices("failed")
    assert "gave up after a day" in (given_up.last_error or "")
    assert given_up.updated_at_ms - given_up.created_at_ms >= 24 * 3600 * 1000


def test_a_notice_queued_before_a_crash_is_sent_after_the_restart(world: World) -> None:
    """Delivery dies after queueing a notice and settling the row, before the DM went out
    (the send is beside the drain). The next delivery process sends it from the queue."""
    world.telegram.connected = False  # the notice cannot go out before the "crash"
    out = refused(world)
    world.drain()
    assert world.delivery(out).status == "denied"
    assert owner_dms(world) == []
    # A new process: fresh in-memory state, the same files, the platform reachable again.
    world.telegram.connected = True
    world.clock.advance(60_000)
    deps = Deps(
        settings=world.settings,
        layout=world.layout,
        central=world.central,
        adapters=world.adapters,
        images=world.deps.images,
        offload=Offload(),
        clock=world.clock,
    )

    async def scenario() -> None:
        service = DeliveryService(deps)
        runner = asyncio.create_task(service.run())
        deadline = time.monotonic() + 5
        while not owner_dms(world):
            assert time.monotonic() < deadline, "the queued notice was not sent"
            await asyncio.sleep(0.01)
        service.request_stop()
        await runner

    try:
        run(scenario())
    finally:
        deps.offload.close()
    [notice] = owner_dms(world)
    assert "denied" in notice
    assert [(n.status, n.attempts) for n in world.central.list_owner_notices()] == [("sent", 2)]
