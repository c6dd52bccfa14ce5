"""Proxy restarts under real supervisord (issue 9 §1): a restart never fails a message, a
graceful restart refuses no connection, a crash refuses them for less than a second.

The stack is the real one (``nanoclaw up``: supervisord, the five programs, real
containers with the real runner and SDK, the fake Messages API behind the real proxy).
Two sessions of the agent group ``main``: the terminal chat, and a thread of it in a
session of its own, whose messages the test writes into its ``inbound.db`` and wakes
through the real ``Sandbox``, as the router would.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest

from nanoclaw_common import messages
from nanoclaw_common.sandbox import Sandbox
from nanoclaw_common.sessions import refresh_projections
from nanoclaw_common.store import CentralStore, InboundStore, NewInbound, OutboundReader
from nanoclaw_common.store.rows import Session
from tests.e2e.proxy_probe import Probe
from tests.fakes.anthropic_api import FakeAnthropic
from tests.stack import Stack, TerminalClient, echo_reply
from tests.waiting import wait_until

pytestmark = pytest.mark.podman

CANARY_KEY = "sk-ant-api03-NANOCLAW-RESTART-CANARY-" + "r3S" * 10
RESTARTS = 20
THREAD = "t2"


UNEXPECTED: list[str] = []


def slow_or_echo(body: dict[str, Any]) -> dict[str, Any]:
    """Echo the newest message; one that says "slow" takes the model 3 s."""
    try:
        reply = echo_reply(body)
    except IndexError:
        UNEXPECTED.append(json.dumps(body["messages"][-1])[:3000])
        raise
    if "slow" in json.dumps(body["messages"][-1]["content"]):
        reply["delay_s"] = 3.0
    return reply


@pytest.fixture(scope="module")
def fake_api() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic(api_key=CANARY_KEY).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def stack(fake_api: FakeAnthropic) -> Iterator[tuple[Stack, TerminalClient]]:
    stack = Stack.create(api_url=fake_api.url, api_key=CANARY_KEY, prefix="nc-prx-")
    terminal: TerminalClient | None = None
    try:
        stack.start()
        terminal = TerminalClient(stack.layout).start()
        yield stack, terminal
    finally:
        if terminal is not None:
            terminal.close()
        stack.destroy()


def second_session(stack: Stack) -> Session:
    """A second session of ``main``: the terminal chat's thread ``t2`` (per-thread), woken."""
    with closing(CentralStore.open(stack.layout.central_db)) as central:
        group = central.find_agent_group("main")
        chat = central.find_messaging_group("cli", "local")
        assert group is not None and chat is not None
        session, _ = central.resolve_session(group.id, chat.id, THREAD, "per-thread")
        refresh_projections(central, stack.layout, session)
    sandbox = Sandbox(stack.settings())
    try:
        assert sandbox.wake(session), stack.logs()
    finally:
        sandbox.close()
    return session


def post(stack: Stack, session: Session, text: str) -> str:
    paths = stack.layout.session(session.agent_group_id, session.id)
    store = InboundStore(paths.inbound_db)
    try:
        row_id = f"cli-{time.time_ns()}:{session.agent_group_id}"
        store.insert_message(
            NewInbound(
                id=row_id,
                content=messages.ChatContent(text=text, sender_id="cli:local", sender_name="Me"),
                timestamp_ms=int(time.time() * 1000),
                channel_type="cli",
                platform_id="local",
                thread_id=THREAD,
            )
        )
    finally:
        store.close()
    return row_id


def texts_and_ack(stack: Stack, session: Session, message_id: str) -> tuple[list[str], str | None]:
    paths = stack.layout.session(session.agent_group_id, session.id)
    reader = OutboundReader(paths.outbound_db)
    try:
        texts = [
            str(json.loads(row.content).get("text", ""))
            for row in reader.messages_after(0, limit=1000)
        ]
        ack = next((a.status for a in reader.acks() if a.message_id == message_id), None)
    finally:
        reader.close()
    return texts, ack


@pytest.mark.timeout(600)
def test_a_message_during_a_graceful_restart_is_answered(
    stack: tuple[Stack, TerminalClient], fake_api: FakeAnthropic
) -> None:
    """The issue's reproduction: one 3 s call in flight in chat 1, ``nanoclaw ctl restart
    proxy``, a message in chat 2 0.5 s later. It used to get "Error: Could not reach the
    model API" and never an answer."""
    base, terminal = stack
    fake_api.reply(echo_reply)
    assert any("echo: warm up" in t for t in terminal.send("warm up", 120))
    other = second_session(base)
    fake_api.reply(echo_reply)
    warm = post(base, other, "warm up too")
    wait_until(
        lambda: texts_and_ack(base, other, warm)[1] == "completed",
        timeout_s=120,
        what="chat 2 warm",
    )
    before = len(fake_api.message_requests())

    fake_api.reply(slow_or_echo, slow_or_echo)
    first_replies: list[str] = []
    first = threading.Thread(target=lambda: first_replies.extend(terminal.send("slow one", 120)))
    first.start()
    wait_until(
        lambda: len(fake_api.message_requests()) > before,
        timeout_s=60,
        what="chat 1's call in flight",
    )
    restarting = threading.Thread(target=lambda: base.nanoclaw("ctl", "restart", "proxy"))
    restarting.start()
    time.sleep(0.5)  # the scenario: chat 2's message comes 0.5 s into the restart
    second = post(base, other, "are you there?")
    try:
        texts, _ack = wait_until(
            functools.partial(completed_texts_and_ack, base, other, second),
            timeout_s=120,
            what="chat 2's answer",
        )
    except AssertionError:
        raise AssertionError(f"{UNEXPECTED}\n{base.logs()}") from None
    restarting.join(180)
    first.join(180)
    assert "echo: are you there?" in texts
    assert not [t for t in texts if t.startswith("Error")]
    assert any("echo: slow one" in t for t in first_replies)
    assert not [t for t in terminal.texts() if t.startswith("Error")]
    assert "stopping: 1 call(s) in flight, still accepting meanwhile" in base.log("proxy")


def completed_texts_and_ack(
    stack: Stack, session: Session, message_id: str
) -> tuple[list[str], str | None] | None:
    found = texts_and_ack(stack, session, message_id)
    return found if found[1] == "completed" else None


def probed_more_than(probe: Probe, attempts: int) -> bool:
    return probe.report.attempts > attempts


def restarted(stack: Stack, old_pid: int) -> bool:
    info = stack.processes()["proxy"]
    return int(info["pid"]) not in (0, old_pid) and info["statename"] == "RUNNING"


@pytest.mark.timeout(900)
def test_restarts_refuse_no_connection(stack: tuple[Stack, TerminalClient]) -> None:
    """A client connecting in a loop through 20 graceful restarts and 20 crashes
    (SIGKILL; supervisord restarts it): the figures go to docs/performance.md
    (bench/proxy_restart.py measures the same on a quiet machine)."""
    base, _terminal = stack
    path = base.layout.proxy_socket
    figures: dict[str, Any] = {}
    for kind in ("graceful", "crash"):
        with Probe(path) as probe:
            for _ in range(RESTARTS):
                before = base.pid("proxy")
                if kind == "graceful":
                    done = base.nanoclaw("ctl", "restart", "proxy")
                    assert done.returncode == 0, done.stderr + done.stdout
                else:
                    os.kill(before, signal.SIGKILL)
                wait_until(
                    functools.partial(restarted, base, before), timeout_s=60, what="the proxy back"
                )
                made = probe.report.attempts
                wait_until(
                    functools.partial(probed_more_than, probe, made + 2),
                    timeout_s=60,
                    what="more probes",
                )
        report = probe.report
        figures[kind] = {
            "attempts": report.attempts,
            "refused": report.refused,
            "failed": report.failed,
            "longest_refused_s": round(report.longest_refused_s, 3),
            "longest_wait_s": round(report.longest_wait_s, 3),
            "first_refusals": [
                (time.strftime("%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}", err)
                for at, err in report.refusals[:3]
            ],
        }
    print(f"proxy restarts ({RESTARTS} of each): {json.dumps(figures)}")
    listening = [line for line in base.log("proxy").splitlines() if "listening on" in line]
    print("\n".join(listening))
    assert figures["graceful"]["refused"] == 0, figures
    assert figures["graceful"]["failed"] == 0, figures
    assert figures["crash"]["longest_refused_s"] < 1.0, figures
