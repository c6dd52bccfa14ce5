"""The real ``nanoclaw-delivery`` process: it delivers through the real adapters, stops
gracefully on SIGTERM (finishing the item in flight), exits at once on a second signal, and
after a SIGKILL mid-send re-sends the interrupted row exactly as docs/delivery.md says; an
owner notice and an approval decided while it was dead survive a SIGKILL."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nanoclaw_common import messages as m
from nanoclaw_common.channels import cli_protocol as wire
from nanoclaw_common.lifecycle import EXIT_ON_SECOND_SIGNAL
from nanoclaw_common.states import EngageMode, Role
from nanoclaw_common.store import OutboundStore
from nanoclaw_common.store.outbound import NewOutbound
from nanoclaw_common.store.rows import Delivery, Session
from tests.delivery_world import World
from tests.fakes.telegram_api import FakeTelegram
from tests.integration.delivery.process import DeliveryProcess
from tests.integration.delivery.terminal import FakeTerminal
from tests.waiting import wait_until


@pytest.fixture
def delivery(world: World, tmp_path: Path) -> Iterator[DeliveryProcess]:
    process = DeliveryProcess(world.settings, tmp_path / "delivery.log")
    yield process
    process.stop()


@pytest.fixture
def cli_session(world: World) -> Session:
    chat = world.central.create_messaging_group("cli", "local", name="terminal")
    world.central.create_wiring(chat.id, world.group.id, engage_mode=EngageMode.PATTERN)
    session = world.new_session(world.group, chat)
    return session


@pytest.fixture
def held_terminal(world: World) -> Iterator[FakeTerminal]:
    fake = FakeTerminal(wire.chat_socket(world.layout)).start()
    yield fake
    fake.stop()


def write(world: World, session: Session, text: str) -> str:
    store = OutboundStore(world.layout.session(session.agent_group_id, session.id).outbound_db)
    try:
        return store.insert_message(NewOutbound(content=m.SendText(text=text))).id
    finally:
        store.close()


def status(world: World, session: Session, out_id: str) -> tuple[str, int]:
    store = world.inbound(session)
    try:
        row = store.get_delivery(out_id)
        assert row is not None
        return row.status, row.attempts
    finally:
        store.close()


def wait_status(
    world: World, session: Session, out_id: str, wanted: str, timeout_s: float = 10.0
) -> tuple[str, int]:
    def current() -> Delivery | None:
        store = world.inbound(session)
        try:
            return store.get_delivery(out_id)
        finally:
            store.close()

    def reached() -> Delivery | None:
        row = current()
        return row if row is not None and row.status == wanted else None

    def shown() -> str:
        row = current()
        return f"{out_id} is {row.status if row else 'untracked'}"

    row = wait_until(
        reached, timeout_s=timeout_s, what=f"{out_id} {wanted}", poll_s=0.01, detail=shown
    )
    return row.status, row.attempts


def test_delivers_and_stops_gracefully(
    world: World, fake_telegram: FakeTelegram, delivery: DeliveryProcess
) -> None:
    delivery.start()
    out = world.text("hello from a real process")
    wait_until(lambda: fake_telegram.sent("sendMessage"), timeout_s=10, what="a sendMessage")
    assert fake_telegram.sent("sendMessage")[0].text == "hello from a real process"
    wait_status(world, world.session, out.id, "delivered")
    delivery.signal(signal.SIGTERM)
    assert delivery.wait() == 0
    log = delivery.log()
    assert "delivery stopped: delivered=1" in log
    assert f"message={out.id}" in log or out.id in log


def test_sigterm_finishes_the_item_in_flight(
    world: World, cli_session: Session, held_terminal: FakeTerminal, delivery: DeliveryProcess
) -> None:
    delivery.start()
    held_terminal.hold()
    out = write(world, cli_session, "in flight")
    held_terminal.wait_for(1)
    delivery.signal(signal.SIGTERM)
    delivery.wait_for_log("finishing in-flight")
    held_terminal.release()
    assert delivery.wait() == 0
    assert status(world, cli_session, out) == ("delivered", 1)
    assert held_terminal.texts() == ["in flight"]


def test_second_signal_exits_at_once(
    world: World, cli_session: Session, held_terminal: FakeTerminal, delivery: DeliveryProcess
) -> None:
    delivery.start()
    held_terminal.hold()
    out = write(world, cli_session, "stuck")
    held_terminal.wait_for(1)
    delivery.signal(signal.SIGTERM)
    delivery.wait_for_log("finishing in-flight")
    delivery.signal(signal.SIGTERM)
    assert delivery.wait(5) == EXIT_ON_SECOND_SIGNAL
    # Left in ``sending``: the next start re-sends it (crash-point table, "send in flight").
    assert status(world, cli_session, out) == ("sending", 1)


def test_sigkill_mid_send_then_restart(
    world: World, cli_session: Session, held_terminal: FakeTerminal, delivery: DeliveryProcess
) -> None:
    """docs/delivery.md, crash point "after the platform received it, before its answer was
    recorded": the row is found in ``sending`` and sent again: the terminal sees it twice
    (the duplicate window), the record says delivered after attempt 2, nothing is lost."""
    delivery.start()
    held_terminal.hold()  # the platform has the message, but its answer does not come back
    out = write(world, cli_session, "exactly the window")
    held_terminal.wait_for(1)
    delivery.kill()
    assert status(world, cli_session, out) == ("sending", 1)
    held_terminal.release()
    delivery.start()
    assert wait_status(world, cli_session, out, "delivered") == ("delivered", 2)
    assert held_terminal.texts() == ["exactly the window", "exactly the window"]
    assert "found in sending after a restart" in delivery.log()


def test_sigkill_before_the_send_loses_nothing(
    world: World, cli_session: Session, held_terminal: FakeTerminal, delivery: DeliveryProcess
) -> None:
    """Crash point "outbound row committed, delivery down": rows written while delivery is
    dead are found on start and sent once."""
    delivery.start()
    delivery.kill()
    outs = [write(world, cli_session, f"queued {n}") for n in range(3)]
    delivery.start()
    for out in outs:
        wait_status(world, cli_session, out, "delivered")
    assert held_terminal.texts() == ["queued 0", "queued 1", "queued 2"]


def test_a_second_delivery_on_the_same_data_folder_refuses_to_run(
    world: World, delivery: DeliveryProcess, tmp_path: Path
) -> None:
    delivery.start()
    second = DeliveryProcess(world.settings, tmp_path / "second.log")
    try:
        with pytest.raises(AssertionError, match=r"exited \(3\)"):
            second.start(timeout_s=10)
        assert "another delivery (pid" in second.log()
    finally:
        second.stop()
    delivery.kill()  # SIGKILL releases the lock: a restart is never blocked
    delivery.start()


@pytest.fixture
def terminal_owner(world: World) -> str:
    """The owner talks to the assistant in the terminal: approval cards and owner notices
    go there (``cli:local``'s DM is the terminal chat)."""
    world.central.upsert_user("cli:local", "cli", "Local")
    world.central.grant_role("cli:local", Role.OWNER)
    world.central.revoke_role("telegram:owner", Role.OWNER)
    return "cli:local"


def write_content(world: World, session: Session, content: m.OutboundContent, **fields: str) -> str:
    store = OutboundStore(world.layout.session(session.agent_group_id, session.id).outbound_db)
    try:
        return store.insert_message(NewOutbound(content=content, **fields)).id  # type: ignore[arg-type]
    finally:
        store.close()


def test_an_owner_notice_survives_a_sigkill(
    world: World,
    cli_session: Session,
    terminal_owner: str,
    delivery: DeliveryProcess,
) -> None:
    """A refused row's owner notice cannot go out (no terminal attached), and delivery is
    SIGKILLed. The notice was queued in central.db before the row was settled, so the next
    delivery sends it once a terminal attaches (before: a background task, lost with the
    process, and its hour claimed before the send)."""
    delivery.start()
    out = write_content(
        world, cli_session, m.SendText(text="psst"), channel_type="telegram", platform_id="200"
    )
    wait_status(world, cli_session, out, "denied")
    delivery.wait_for_log("not sent")  # its first attempt failed: no terminal attached
    delivery.kill()
    terminal = FakeTerminal(wire.chat_socket(world.layout)).start()
    try:
        delivery.start()
        wait_until(terminal.texts, timeout_s=20.0, what="the notice reached the terminal")
        wait_until(
            lambda: [n.status for n in world.notices.list()] == ["sent"],
            timeout_s=20.0,
            what="the notice is recorded as sent",
        )
        [notice] = terminal.texts()
        assert "was denied" in notice and "nanoclaw deliveries list --failed" in notice
    finally:
        terminal.stop()


def test_an_approval_decided_while_delivery_was_dead_is_applied(
    world: World,
    cli_session: Session,
    held_terminal: FakeTerminal,
    terminal_owner: str,
    delivery: DeliveryProcess,
) -> None:
    """docs/delivery.md crash row 15, with a real kill: the card went out, delivery is
    SIGKILLed, the approver's click is recorded (the router's ``decide_approval``) while
    delivery is dead; the restarted delivery applies it, tells the agent and edits the
    card."""
    delivery.start()
    write_content(
        world, cli_session, m.AddMcpServer(name="files", command="npx", args=["files-mcp"])
    )
    wait_until(
        lambda: any(a.platform_message_id for a in world.central.list_pending_approvals()),
        timeout_s=20.0,
        what="the approval card was sent and recorded",
    )
    [approval] = world.central.list_pending_approvals()
    assert any(isinstance(f, wire.QuestionFrame) for f in held_terminal.frames)
    delivery.kill()
    decided = world.central.decide_approval(
        approval.approval_id, terminal_owner, "approve", now=int(time.time() * 1000)
    )
    assert decided == "approved"
    delivery.start()
    wait_until(
        lambda: world.central.list_pending_approvals() == [],
        timeout_s=20.0,
        what="the approval was applied",
    )
    config = world.central.get_container_config(cli_session.agent_group_id)
    assert config is not None and "files" in json.loads(config.mcp_servers)
    notes = world.notes(cli_session)
    assert len(notes) == 1 and 'MCP server "files" added' in notes[0][0]
    assert any(
        isinstance(f, wire.EditFrame) and "Approved by cli:local" in f.text
        for f in held_terminal.frames
    )
