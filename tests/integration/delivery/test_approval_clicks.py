"""An approval, end to end through real parts: delivery sends the card with the real Telegram
adapter to the fake Bot API; clicks come back as Telegram callback queries through the real
router; a member's click does nothing, the approver's click makes delivery rebuild the
group's image (the podman command line, a stand-in executable here), tell the agent with a
note for a fresh run, and leave the restart to the sweeper."""

from __future__ import annotations

import asyncio
import json
import time

from nanoclaw_common import messages as m
from nanoclaw_common.channels.telegram import TelegramAdapter
from nanoclaw_common.sandbox.images import group_image_tag
from nanoclaw_common.states import Role
from nanoclaw_common.store.async_central import AsyncCentral
from nanoclaw_delivery.service import DeliveryService
from nanoclaw_router.app import Router
from tests.delivery_world import World, run
from tests.fakes.recording import MemoryWaker
from tests.fakes.telegram_api import FakeTelegram
from tests.waiting import wait_until_async

APPROVER, MEMBER = 501, 502


def test_only_the_approvers_click_counts(world: World, fake_telegram: FakeTelegram) -> None:
    central = world.central
    central.upsert_user(f"telegram:{APPROVER}", "telegram", "Ada")
    central.grant_role(f"telegram:{APPROVER}", Role.ADMIN)  # a global admin: first in line
    central.upsert_user(f"telegram:{MEMBER}", "telegram", "Mo")
    central.add_member(f"telegram:{MEMBER}", world.group.id)
    world.clock.value = int(time.time() * 1000)  # the router stamps clicks with the real clock

    doors = AsyncCentral(world.layout.central_db)

    async def scenario() -> None:
        outbound = TelegramAdapter(fake_telegram.token, fake_telegram.base_url)
        await outbound.start()
        world.adapters.clear()
        world.adapters["telegram"] = outbound  # type: ignore[assignment]
        inbound = TelegramAdapter(fake_telegram.token, fake_telegram.base_url, poll_timeout_s=1)
        router = Router(
            world.settings,
            doors,
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
            card = await wait_until_async(
                lambda: [
                    s for s in fake_telegram.sent("sendMessage") if s.chat_id == str(APPROVER)
                ],
                timeout_s=10.0,
                what="the approval card in the approver's DM",
            )
            approval = central.list_pending_approvals()[0]
            assert approval.approver_user_id == f"telegram:{APPROVER}"
            assert card[0].message_id is not None
            button = f"{approval.approval_id}|0"  # option 0 is "Approve"

            # A member (not an approver) clicks Approve on a forwarded card: nothing happens.
            fake_telegram.push_callback(APPROVER, card[0].message_id, button, user_id=MEMBER)
            await wait_until_async(
                lambda: fake_telegram.pending_updates() == 0,
                timeout_s=10.0,
                what="the router to fetch every update",
            )
            await asyncio.sleep(0.3)  # the router's click handling and a delivery pass
            found = central.get_pending_approval(approval.approval_id)
            assert found is not None and found.status == "pending"
            assert world.built() == []

            # The approver clicks: delivery rebuilds and tells the agent.
            fake_telegram.push_callback(APPROVER, card[0].message_id, button, user_id=APPROVER)
            await wait_until_async(
                lambda: central.list_pending_approvals() == [],
                timeout_s=10.0,
                what="no pending approval",
            )
        finally:
            await router.stop()
            delivery.request_stop()
            await running
            await outbound.close()

    try:
        run(scenario())
    finally:
        doors.close()
    assert world.built() == [(group_image_tag(world.settings.image, world.group.id), ["jq"], [])]
    notes = world.notes()
    assert len(notes) == 1 and "Packages installed (apt: jq)" in notes[0][0]
    assert notes[0][1:] == (1, 1)  # due, for a fresh run: the sweeper wakes the session
    edits = fake_telegram.sent("editMessageText")
    assert any(f"Approved by telegram:{APPROVER}" in e.text for e in edits)


def test_a_look_alike_question_card_cannot_approve(
    world: World, fake_telegram: FakeTelegram
) -> None:
    """The audit's attack, through the real router click path: an agent posts "Fun fact?
    [Yes]" in the approver's chat carrying the pending approval's id, hoping the admin's
    click approves its install. Delivery refuses a question with a host card's id; an agent
    card's buttons carry the host's key, never the agent's id; and a click whose data names
    the approval but was made on any other message is refused by the router."""
    central = world.central
    central.upsert_user(f"telegram:{APPROVER}", "telegram", "Ada")
    central.grant_role(f"telegram:{APPROVER}", Role.ADMIN)
    world.clock.value = int(time.time() * 1000)

    def ask(question_id: str) -> str:
        return world.write(
            m.AskQuestion(
                question_id=question_id,
                title="Fun fact?",
                question="Octopuses have three hearts. Cool?",
                options=[m.QuestionOption(label="Yes", value="yes")],
            )
        ).id

    doors = AsyncCentral(world.layout.central_db)

    async def scenario() -> None:
        outbound = TelegramAdapter(fake_telegram.token, fake_telegram.base_url)
        await outbound.start()
        world.adapters.clear()
        world.adapters["telegram"] = outbound  # type: ignore[assignment]
        inbound = TelegramAdapter(fake_telegram.token, fake_telegram.base_url, poll_timeout_s=1)
        router = Router(
            world.settings,
            doors,
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
            [card] = await wait_until_async(
                lambda: [
                    s for s in fake_telegram.sent("sendMessage") if s.chat_id == str(APPROVER)
                ],
                timeout_s=10.0,
                what="the approval card in the approver's DM",
            )
            approval_id = central.list_pending_approvals()[0].approval_id
            # 1. A question with the approval's id is refused: no look-alike goes out.
            copied = ask(approval_id)
            await wait_until_async(
                lambda: status_of(world, copied) in ("delivered", "denied"),
                timeout_s=10.0,
                what="the copied row settled",
            )
            assert status_of(world, copied) == "denied"
            # 2. A question of its own goes out, with the host's key on its button.
            own = ask("q-fun")
            [fun] = await wait_until_async(
                lambda: [s for s in fake_telegram.sent("sendMessage") if "three hearts" in s.text],
                timeout_s=10.0,
                what="the message 'three hearts'",
            )
            assert fun.chat_id == "100"
            from nanoclaw_delivery.operations import host_question_id

            key = host_question_id(world.session.id, "q-fun")
            markup = fun.params["reply_markup"]
            markup = json.loads(markup) if isinstance(markup, str) else markup
            assert markup["inline_keyboard"][0][0]["callback_data"] == f"{key}|0"
            await wait_until_async(
                lambda: status_of(world, own) == "delivered",
                timeout_s=10.0,
                what="the own row delivered",
            )
            # 3. Clicks that name the approval but were made on other messages: refused.
            assert fun.message_id is not None and card.message_id is not None
            fake_telegram.push_callback(100, fun.message_id, f"{approval_id}|0", user_id=APPROVER)
            fake_telegram.push_callback(
                APPROVER, card.message_id + 7, f"{approval_id}|0", user_id=APPROVER
            )
            await wait_until_async(
                lambda: click_drops(world) == 2,
                timeout_s=10.0,
                what="two recorded click drops",
            )
            assert central.get_pending_approval(approval_id).status == "pending"  # type: ignore[union-attr]
            # 4. The admin answers the agent's question: it answers that question only.
            fake_telegram.push_callback(100, fun.message_id, f"{key}|0", user_id=APPROVER)
            await wait_until_async(
                lambda: answers(world) != [], timeout_s=10.0, what="an answer row"
            )
            assert central.get_pending_approval(approval_id).status == "pending"  # type: ignore[union-attr]
            # 5. The click on the approval's own card still approves it.
            fake_telegram.push_callback(
                APPROVER, card.message_id, f"{approval_id}|0", user_id=APPROVER
            )
            await wait_until_async(
                lambda: central.list_pending_approvals() == [],
                timeout_s=10.0,
                what="no pending approval",
            )
        finally:
            await router.stop()
            delivery.request_stop()
            await running
            await outbound.close()

    try:
        run(scenario())
    finally:
        doors.close()
    assert answers(world) == [("q-fun", "yes", f"telegram:{APPROVER}")]
    assert world.built() == [(group_image_tag(world.settings.image, world.group.id), ["jq"], [])]


def status_of(world: World, out_id: str) -> str | None:
    row = world.delivery(out_id)
    return None if row is None else str(row.status)


def click_drops(world: World) -> int:
    return sum(
        d.message_count for d in world.central.list_drops(100) if d.reason == "click_not_on_card"
    )


def answers(world: World) -> list[tuple[str, str, str]]:
    store = world.inbound()
    try:
        found = []
        for row in store.list_messages():
            content = m.decode_inbound_content(row.content)
            if isinstance(content, m.QuestionResponse):
                found.append((content.question_id, content.selected_option, content.user_id))
        return found
    finally:
        store.close()
