"""An approval, end to end through real parts: delivery sends the card with the real Telegram
adapter to the fake Bot API; clicks come back as Telegram callback queries through the real
router; a member's click does nothing, the approver's click makes delivery rebuild the
group's image (the podman command line, a stand-in executable here), tell the agent with a
note for a fresh run, and leave the restart to the sweeper."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from nanoclaw_common import messages as m
from nanoclaw_common.channels.telegram import TelegramAdapter
from nanoclaw_common.sandbox.images import group_image_tag
from nanoclaw_common.states import Role
from nanoclaw_delivery.service import DeliveryService
from nanoclaw_router.app import Router
from tests.fakes.recording import MemoryWaker
from tests.fakes.telegram_api import FakeTelegram
from tests.unit.delivery.helpers import World, run

APPROVER, MEMBER = 501, 502


async def until(check: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)
    return value


def test_only_the_approvers_click_counts(world: World, fake_telegram: FakeTelegram) -> None:
    central = world.central
    central.upsert_user(f"telegram:{APPROVER}", "telegram", "Ada")
    central.grant_role(f"telegram:{APPROVER}", Role.ADMIN)  # a global admin: first in line
    central.upsert_user(f"telegram:{MEMBER}", "telegram", "Mo")
    central.add_member(f"telegram:{MEMBER}", world.group.id)
    world.clock.value = int(time.time() * 1000)  # the router stamps clicks with the real clock

    async def scenario() -> None:
        outbound = TelegramAdapter(fake_telegram.token, fake_telegram.base_url)
        await outbound.start()
        world.adapters.clear()
        world.adapters["telegram"] = outbound  # type: ignore[assignment]
        inbound = TelegramAdapter(fake_telegram.token, fake_telegram.base_url, poll_timeout_s=1)
        router = Router(
            world.settings,
            central,
            {"telegram": inbound},
            MemoryWaker(world.layout.central_db),
            commit_threads=2,
            wake_threads=1,
        )
        delivery = DeliveryService(world.deps)
        running = asyncio.create_task(delivery.run())
        await router.start()
        try:
            world.write(m.InstallPackages(apt=["jq"], reason="parse JSON"))
            card = await until(
                lambda: [s for s in fake_telegram.sent("sendMessage") if s.chat_id == str(APPROVER)]
            )
            approval = central.list_pending_approvals()[0]
            assert approval.approver_user_id == f"telegram:{APPROVER}"
            assert card[0].message_id is not None
            button = f"{approval.approval_id}|0"  # option 0 is "Approve"

            # A member (not an approver) clicks Approve on a forwarded card: nothing happens.
            fake_telegram.push_callback(APPROVER, card[0].message_id, button, user_id=MEMBER)
            await until(lambda: fake_telegram.pending_updates() == 0)
            await asyncio.sleep(0.3)  # the router's click handling and a delivery pass
            assert central.get_pending_approval(approval.approval_id).status == "pending"  # type: ignore[union-attr]
            assert world.built() == []

            # The approver clicks: delivery rebuilds and tells the agent.
            fake_telegram.push_callback(APPROVER, card[0].message_id, button, user_id=APPROVER)
            await until(lambda: central.list_pending_approvals() == [])
        finally:
            await router.stop()
            delivery.request_stop()
            await running
            await outbound.close()

    run(scenario())
    assert world.built() == [(group_image_tag(world.settings.image, world.group.id), ["jq"], [])]
    notes = world.notes()
    assert len(notes) == 1 and "Packages installed (apt: jq)" in notes[0][0]
    assert notes[0][1:] == (1, 1)  # due, for a fresh run: the sweeper wakes the session
    edits = fake_telegram.sent("editMessageText")
    assert any(f"Approved by telegram:{APPROVER}" in e.text for e in edits)
