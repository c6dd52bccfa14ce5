"""Owner notices about failed and refused rows: durable (queued in central.db before the row
is settled, sent by a pass that a restart resumes), rate limited per agent group with the
window claimed only by a successful send, and naming a command that works."""

from __future__ import annotations

import asyncio
import re
import shlex

from click.testing import CliRunner

from nanoclaw_cli import cli
from nanoclaw_common.disk import OWNER_NOTICE_KIND
from nanoclaw_common.errors import PermanentFailure, RetryLater
from nanoclaw_common.store.async_central import AsyncCentral
from nanoclaw_delivery.context import Deps, Offload
from nanoclaw_delivery.service import DeliveryService
from tests.delivery_world import World, run
from tests.waiting import wait_until_async


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
    and the notice was gone). A second problem meanwhile joins the same notice."""
    world.telegram.fail_at[1] = RetryLater("502 Bad Gateway")  # the notice's DM
    refused(world, "first")
    world.drain()
    assert owner_dms(world) == []
    world.clock.advance(60_000)  # past the notice's retry time
    refused(world, "second")  # another problem: its report runs a notice pass
    world.drain()
    [sent] = owner_dms(world)
    assert "2 messages" in sent and "#3" in sent  # both problems, the latest quoted
    from nanoclaw_delivery.notify import owner_notice_key

    [notice] = world.notices.list()
    assert (notice.status, notice.count, notice.attempts) == ("sent", 2, 2)
    assert notice.updated_at_ms == world.clock()
    window = world.central.last_notice_ms(owner_notice_key(world.group.id))
    assert window == world.clock()


def test_a_notice_waiting_for_its_retry_gathers_later_problems(world: World) -> None:
    """While the group's notice waits for its retry, later problems of the same kind are
    counted into it, not queued beside it: the owner gets one DM, and no window is claimed
    by the failure."""
    from nanoclaw_delivery.notify import owner_notice_key, send_owner_notices

    world.telegram.fail_at[1] = RetryLater("502 Bad Gateway")
    refused(world, "first")
    world.drain()
    [waiting] = world.notices.list("pending")
    assert waiting.attempts == 1 and "502" in (waiting.last_error or "")
    assert world.central.last_notice_ms(owner_notice_key(world.group.id)) is None
    refused(world, "second")
    world.drain()
    assert owner_dms(world) == []  # nothing overtakes the retry
    [gathered] = world.notices.list("pending")
    assert gathered.id == waiting.id and gathered.count == 2
    world.clock.value = waiting.next_attempt_at_ms
    assert run(send_owner_notices(world.deps)) == 1
    [sent] = owner_dms(world)
    assert "2 messages" in sent


def test_a_notice_inside_the_window_waits_for_its_end(world: World) -> None:
    """After a notice went out, later problems wait for the end of the group's window and
    then go out together, counted (before: each was marked suppressed and never told)."""
    from nanoclaw_delivery.notify import send_owner_notices

    refused(world, "first")
    world.drain()
    assert len(owner_dms(world)) == 1
    for n in range(3):
        world.clock.advance(1_000)
        refused(world, f"later {n}")
        world.drain()
    assert len(owner_dms(world)) == 1  # inside the hour
    [waiting] = world.notices.list("pending")
    interval_ms = int(world.settings.owner_notice_interval_s * 1000)
    sent_at = world.notices.list("sent")[0].updated_at_ms
    assert waiting.count == 3 and waiting.next_attempt_at_ms == sent_at + interval_ms
    world.clock.value = waiting.next_attempt_at_ms
    assert run(send_owner_notices(world.deps)) == 1
    assert "3 messages" in owner_dms(world)[1]


def test_a_permanent_failure_is_retried_too(world: World) -> None:
    """A refused DM (the owner blocked the bot) is retried like any failure: the owner may
    unblock it, and meanwhile the group's one notice only counts on (before: a failed row
    per problem)."""
    from nanoclaw_delivery.notify import send_owner_notices

    world.telegram.fail_at[1] = PermanentFailure("bot was blocked by the user")
    refused(world, "first")
    world.drain()
    refused(world, "second")
    world.drain()
    [waiting] = world.notices.list()
    assert waiting.status == "pending" and waiting.count == 2
    assert "blocked" in (waiting.last_error or "")
    world.clock.value = waiting.next_attempt_at_ms
    assert run(send_owner_notices(world.deps)) == 1
    assert len(owner_dms(world)) == 1


def test_notices_are_given_up_after_a_day(world: World) -> None:
    from nanoclaw_delivery.notify import send_owner_notices

    world.telegram.connected = False  # the DM cannot be opened
    refused(world)
    world.drain()
    for _ in range(400):
        pending = world.notices.list("pending")
        if not pending:
            break
        world.clock.value = pending[0].next_attempt_at_ms
        run(send_owner_notices(world.deps))
    [given_up] = world.notices.list("failed")
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
        central=AsyncCentral(world.layout.central_db),
        adapters=world.adapters,
        images=world.deps.images,
        offload=Offload(),
        clock=world.clock,
    )

    async def scenario() -> None:
        service = DeliveryService(deps)
        runner = asyncio.create_task(service.run())
        await wait_until_async(lambda: owner_dms(world), timeout_s=5, what="the queued notice sent")
        service.request_stop()
        await runner

    try:
        run(scenario())
    finally:
        deps.offload.close()
        deps.central.close()
    [notice] = owner_dms(world)
    assert "denied" in notice
    assert [(n.status, n.attempts) for n in world.notices.list()] == [("sent", 2)]


def test_five_thousand_refused_rows_add_a_handful_of_rows_to_central_db(world: World) -> None:
    """Issue 8: while the owner was unreachable, every refused row left a pending owner
    notice (5,000 rows refused: 4,940 rows added to central.db). Now the group's one pending
    notice of each kind counts them, and nothing else in central.db grows per row."""

    def central_rows() -> int:
        tables = [
            name
            for (name,) in world.central.db.all(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return sum(int(world.central.db.scalar(f"SELECT count(*) FROM {t}")) for t in tables)

    world.telegram.connected = False  # the owner's DM cannot be reached
    world.text("first")  # seq 1; what follows repeats it
    world.drain()
    before = central_rows()
    world.outbound.db.execute("BEGIN")
    for n in range(5_000):
        world.outbound.db.execute(
            "INSERT INTO messages_out (id, seq, timestamp_ms, kind, content)"
            " VALUES (?, ?, ?, 'chat', ?)",
            (f"again-{n}", -2 * n - 1, world.clock(), '{"type":"text","text":"x"}'),
        )
    world.outbound.db.execute("COMMIT")
    world.drain()
    store = world.inbound()
    refused = [d for d in store.list_deliveries() if d.status == "denied"]
    store.close()
    assert len(refused) == 5_000  # every one recorded, none silent
    assert central_rows() - before <= 3
    [notice] = world.notices.list("pending")
    assert notice.count == 5_000 and notice.kind == "denied"


def test_disk_notices_have_a_window_of_their_own(world: World) -> None:
    """The sweeper's disk-quota notice goes out even right after a notice about a refused
    row (before: one window per group for every kind, so it waited up to an hour while the
    group's containers stood stopped), and does not hold back delivery's next one; a second
    disk cause inside the disk window waits for its end, counted."""
    from nanoclaw_delivery.notify import send_owner_notices

    refused(world, "first")
    world.drain()
    assert len(owner_dms(world)) == 1  # the delivery notice: the group's window starts
    world.clock.advance(60_000)
    world.notices.queue(
        world.group.id,
        OWNER_NOTICE_KIND,
        "disk-group-1-cleanup",
        "NanoClaw: agent group Main: its folder is over its disk quota",
        now=world.clock(),
    )
    assert run(send_owner_notices(world.deps)) == 1
    assert "over its disk quota" in owner_dms(world)[-1]
    world.notices.queue(
        world.group.id,
        OWNER_NOTICE_KIND,
        "disk-group-1-blocked",
        "NanoClaw: agent group Main: its cleanup did not bring it under the quota",
        now=world.clock(),
    )
    assert run(send_owner_notices(world.deps)) == 0
    [waiting] = world.notices.list("pending")
    interval_ms = int(world.settings.owner_notice_interval_s * 1000)
    assert waiting.kind == OWNER_NOTICE_KIND
    assert waiting.next_attempt_at_ms == world.clock() + interval_ms
    world.clock.value = waiting.next_attempt_at_ms
    assert run(send_owner_notices(world.deps)) == 1
    assert "did not bring it under the quota" in owner_dms(world)[-1]
