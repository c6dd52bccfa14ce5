"""Session files that block (issue 8 §1), attacked from inside the real container: a FIFO
planted as ``outbound.db-journal`` (the old sweeper hung for good in SQLite's hot-journal
``open``, and a delivery thread with it), and FIFOs where the host reads the heartbeat and
an outbox file. The attacked session costs itself alone: it is quarantined (recorded and
logged once, its container stopped) or its row refused, every program keeps its pid, and
another session is still served. A module of its own: the quarantine outlives a test unless
released, which the test does as an operator would."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import pytest

from nanoclaw_common import messages as m
from nanoclaw_common.clock import now_ms
from nanoclaw_common.sandbox import Sandbox
from nanoclaw_common.sandbox.ownership import AGENT_GID, AGENT_UID
from nanoclaw_common.sessions import refresh_projections
from nanoclaw_common.store import InboundReader, InboundStore, NewInbound, OutboundReader
from nanoclaw_common.store.rows import Session
from tests.fakes.anthropic_api import text
from tests.security.conftest import STACK_POLL_S, Agent, HostileStack
from tests.stack import echo_reply
from tests.waiting import wait_until

pytestmark = pytest.mark.podman


BOUND_S = 30.0  # generous for a loaded machine; the sweeper passes every second


def echo_or_nothing(body: dict[str, Any]) -> dict[str, Any]:
    """``echo_reply`` for a person's message; a turn prompted only by a system note (the
    refusal told to the agent) sends nothing."""
    if 'from=\\"' not in json.dumps(body["messages"][-1]["content"]):
        return text("<internal>noted</internal>")
    return echo_reply(body)


def cli(stack: HostileStack, *args: str) -> str:
    done = stack.base.nanoclaw(*args)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def plant_fifo(agent: Agent, container_path: str, host_path: Path) -> str:
    """``mkfifo`` from inside the container. Where the seccomp profile denies it, the FIFO is
    made on the host as the agent's, standing for one created before the profile existed
    (or on a host without seccomp): the host code must not stall on it either way."""
    done = agent.sh(f"mkfifo {container_path}", check=False)
    if done.returncode == 0:
        return "inside"
    os.mkfifo(host_path)
    if os.geteuid() == 0:
        os.chown(host_path, AGENT_UID, AGENT_GID)
    return "host"


def quarantined(stack: HostileStack) -> list[dict[str, object]]:
    found: list[dict[str, object]] = json.loads(cli(stack, "quarantine", "list", "--json"))
    return found


def bystander(stack: HostileStack) -> Session:
    """Another session of the group, with its folder and DBs (as the router makes one)."""
    with stack.central() as central:
        session = central.create_session(stack.group.id, None)
        refresh_projections(central, stack.layout, session)
        return session


def give_work(stack: HostileStack, session: Session) -> str:
    """A due message in ``session``'s inbound.db, as the router commits one."""
    paths = stack.layout.session(session.agent_group_id, session.id)
    store = InboundStore(paths.inbound_db)
    message_id = "by-" + secrets.token_hex(4)
    try:
        store.insert_message(
            NewInbound(
                id=message_id,
                content=m.ChatContent(text="hello", sender_id="cli:local"),
                timestamp_ms=now_ms(),
            ),
            now=now_ms(),
        )
    finally:
        store.close()
    return message_id


def claimed(stack: HostileStack, session: Session, message_id: str) -> bool:
    paths = stack.layout.session(session.agent_group_id, session.id)
    if not paths.outbound_db.exists():
        return False
    reader = OutboundReader(paths.outbound_db)
    try:
        return any(a.message_id == message_id for a in reader.acks())
    finally:
        reader.close()


def container_running(stack: HostileStack, session_id: str) -> bool:
    name = f"nanoclaw-{stack.settings.install}-{session_id}"
    done = stack.podman("ps", "--filter", f"name=^{name}$", "--format", "{{.Names}}")
    return name in done.stdout.split()


def test_a_fifo_journal_quarantines_that_session_alone(hostile: HostileStack) -> None:
    stack = hostile
    other = bystander(stack)
    agent = stack.agent()
    pids = stack.pids()
    paths = stack.layout.session(stack.session.agent_group_id, stack.session.id)
    journal = Path(f"{paths.outbound_db}-journal")
    where = plant_fifo(agent, "/session/agent/outbound.db-journal", journal)
    try:
        wait_until(
            lambda: bool(quarantined(stack)),
            timeout_s=BOUND_S,
            what="the session to be quarantined",
            poll_s=STACK_POLL_S,
        )
        [entry] = quarantined(stack)
        assert entry["session_id"] == stack.session.id
        assert "outbound.db-journal is a FIFO" in str(entry["reason"]), entry
        # Its container is stopped; nothing reads its files any more.
        wait_until(
            lambda: not container_running(stack, stack.session.id),
            timeout_s=BOUND_S,
            what="the container to stop",
            poll_s=STACK_POLL_S,
        )
        # Everyone else is served: a new message to another session wakes its container.
        message_id = give_work(stack, other)
        wait_until(
            lambda: claimed(stack, other, message_id),
            timeout_s=90,
            what="the bystander's run",
            poll_s=STACK_POLL_S,
        )
        logs = "".join(stack.log(p) for p in ("sweeper", "delivery", "router"))
        assert logs.count("SESSION QUARANTINED") == 1, where  # reported once
        assert json.loads(cli(stack, "status", "--json"))["quarantined_sessions"] == 1
        stack.assert_up(pids)
    finally:
        journal.unlink(missing_ok=True)  # the operator cleans up
        cli(stack, "quarantine", "release", stack.session.id)
        sandbox = Sandbox(stack.settings)
        try:
            sandbox.stop(other.id)
        finally:
            sandbox.close()
    # Released and cleaned: served again.
    for _ in range(3):
        stack.fake_api.reply(echo_or_nothing)
    assert "echo: are you back?" in stack.chat("are you back?")
    stack.assert_up(pids)


def test_fifos_as_heartbeat_and_outbox_file_cost_only_their_own(hostile: HostileStack) -> None:
    stack = hostile
    agent = stack.agent()
    pids = stack.pids()
    paths = stack.layout.session(stack.session.agent_group_id, stack.session.id)
    out_id = "fifo-" + secrets.token_hex(4)
    agent.sh(f"mkdir -p /session/agent/outbox/{out_id}")
    plant_fifo(agent, f"/session/agent/outbox/{out_id}/f", paths.outbox / out_id / "f")
    written = agent.write_outbound(
        {"type": "text", "text": "a FIFO attached", "files": ["f"]}, id=out_id
    )
    reader = InboundReader(paths.inbound_db)
    try:

        def refused() -> bool:
            delivery = reader.get_delivery(written.id)
            return delivery is not None and delivery.status == "denied"

        wait_until(
            refused,
            timeout_s=BOUND_S,
            what="the row with a FIFO attached to be refused",
            poll_s=STACK_POLL_S,
        )
        reason = reader.get_delivery(written.id)
        assert reason is not None and "not a regular file" in (reason.last_error or "")
    finally:
        reader.close()
    # The heartbeat: the runner's own touch fails on a FIFO at once (ENXIO); the host reads
    # only a regular file's mtime, so a FIFO there is no heartbeat, never a blocked read.
    agent.sh("rm -f /session/agent/heartbeat && mkfifo /session/agent/heartbeat", check=False)
    if not paths.heartbeat.exists():
        os.mkfifo(paths.heartbeat)
    for _ in range(3):  # the refusal's note to the agent may take a turn first
        stack.fake_api.reply(echo_or_nothing)
    assert "echo: still answering?" in stack.chat("still answering?")  # every loop serves
    assert "MESSAGE DROPPED (denied)" in stack.log("delivery")
    assert quarantined(stack) == []  # a refused file costs its row, not the session
    stack.assert_up(pids)
    paths.heartbeat.unlink(missing_ok=True)
