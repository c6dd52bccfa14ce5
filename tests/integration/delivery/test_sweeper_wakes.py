"""Who wakes what, across real programs: the real ``nanoclaw-delivery`` process writes rows
into sessions and never touches a container; a real ``Sweeper`` pass (with a recording fake
sandbox standing in for Podman) then wakes the stopped session it wrote to, and carries out
the restart an approval asked for."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nanoclaw_common import messages as m
from nanoclaw_common.clock import now_ms
from nanoclaw_common.sandbox.images import group_image_tag
from nanoclaw_common.states import DestinationType, Role
from nanoclaw_common.store.rows import AgentGroup, Session
from nanoclaw_sweeper.sweeper import Sweeper
from tests.delivery_world import World
from tests.fakes.telegram_api import FakeTelegram
from tests.integration.delivery.process import DeliveryProcess
from tests.sweeper_world import FakeSandbox
from tests.waiting import wait_until

APPROVER = 501


@pytest.fixture
def delivery(world: World, tmp_path: Path) -> Iterator[DeliveryProcess]:
    # The stand-in podman first on PATH: an approved build runs it as a child of delivery.
    process = DeliveryProcess(
        world.settings, tmp_path / "delivery.log", {"PATH": world.podman.env()["PATH"]}
    )
    yield process
    process.stop()


@pytest.fixture
def sandbox(world: World) -> FakeSandbox:
    return FakeSandbox(world.central)


def peer(world: World) -> tuple[AgentGroup, Session]:
    """A second agent group that ``main`` may message, with one stopped session."""
    helper = world.central.create_agent_group("Helper", "helper")
    world.layout.group_dir("helper").mkdir(parents=True, exist_ok=True)
    world.central.add_destination(world.group.id, "helper", DestinationType.AGENT, helper.id)
    return helper, world.new_session(helper, None)


def test_a_row_delivery_writes_into_a_stopped_session_is_woken_by_the_sweeper(
    world: World, delivery: DeliveryProcess, sandbox: FakeSandbox
) -> None:
    helper, target = peer(world)
    sweeper = Sweeper(world.settings, world.central, sandbox)
    # Baseline: nothing is due anywhere, so a pass wakes nobody (and has seen every file).
    assert sweeper.sweep(now_ms()).woken == []

    out = world.write(
        m.SendText(text="can you check?"), channel_type="agent", platform_id=helper.id
    )
    delivery.start()
    wait_until(
        lambda: getattr(world.delivery(out.id), "status", None) == "delivered",
        timeout_s=15.0,
        what="out delivered",
    )
    landed = world.delivery(out.id).platform_message_id
    assert world.due(target) == [landed]
    stopped = world.central.get_session(target.id)
    assert stopped is not None and stopped.container_status == "stopped"

    report = sweeper.sweep(now_ms())
    assert report.woken == [target.id]
    assert sandbox.calls == [("wake", target.id)]


def test_an_approval_restarts_the_groups_run_through_the_sweeper(
    world: World,
    fake_telegram: FakeTelegram,
    delivery: DeliveryProcess,
    sandbox: FakeSandbox,
) -> None:
    central = world.central
    central.upsert_user(f"telegram:{APPROVER}", "telegram", "Ada")
    central.grant_role(f"telegram:{APPROVER}", Role.ADMIN)
    session = world.session
    started = now_ms() - 10_000
    sandbox.now = started
    sandbox.start(session)  # the session's run predates the approval
    paths = world.layout.session(session.agent_group_id, session.id)
    paths.heartbeat.touch()  # beating now
    sweeper = Sweeper(world.settings, central, sandbox)

    world.write(m.InstallPackages(apt=["jq"], reason="parse JSON"))
    delivery.start()
    wait_until(
        lambda: fake_telegram.sent("sendMessage"), timeout_s=15.0, what="a sendMessage"
    )  # the card, in the approver's DM
    approval = central.list_pending_approvals()[0]
    assert central.decide_approval(approval.approval_id, f"telegram:{APPROVER}", "approve") == (
        "approved"
    )  # what the router does with the click
    wait_until(
        lambda: central.list_pending_approvals() == [], timeout_s=15.0, what="no pending approval"
    )

    tag = group_image_tag(world.settings.image, world.group.id)
    assert [built[0] for built in world.podman.builds()] == [tag]
    config = central.get_container_config(world.group.id)
    assert config is not None and config.image_tag == tag
    assert [r.session_id for r in central.list_restart_requests()] == [session.id]
    note_id = f"approval-{approval.approval_id}"
    assert world.due() == [note_id]
    assert sandbox.calls == []

    sandbox.now = now_ms()
    report = sweeper.sweep(sandbox.now)
    assert report.restarted == [session.id]
    assert report.woken == [session.id]  # the old run held no claims: a fresh run at once
    assert sandbox.calls == [("stop", session.id), ("wake", session.id)]
    assert central.list_restart_requests() == []
    refreshed = central.get_session(session.id)
    assert refreshed is not None and (refreshed.run_started_at_ms or 0) > started
    notes = world.notes()
    assert len(notes) == 1 and notes[0][1:] == (1, 1)  # for the fresh run only
