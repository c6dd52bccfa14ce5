"""The real proxy process while another process holds ``central.db``'s write lock: a call
whose reservation waits for the lock (a group with a daily budget) holds up no other
session's token lookup, and lands, with its usage settled, once the lock is released.

The old proxy ran every central.db call on one worker thread: a lookup queued behind the
waiting reservation, until the reservation gave up at the busy timeout (5 s)."""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest
from anthropic.types import MessageParam

from nanoclaw_common.peer_identity import identity_of_pid
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.metering import TokenLedger, utc_day
from nanoclaw_common.store.proxy_tokens import ProxyTokens
from tests.fakes.anthropic_api import FakeAnthropic, text
from tests.fakes.central_lock import CentralLock
from tests.integration.agents.harness import AgentSession, Proxy, uds_client
from tests.waiting import wait_until

MESSAGES: list[MessageParam] = [{"role": "user", "content": "hello"}]
PROBES = 6  # sessions whose first call comes while the lock is held, one after another
PACE_S = 0.25  # between two probes: the later ones surely come after the reservation
MAX_LOOKUP_S = 2.0  # passing runs take milliseconds; the old proxy took the busy timeout
USAGE = {"input_tokens": 300, "output_tokens": 200}


@pytest.fixture
def clients() -> Iterator[list[anthropic.Anthropic]]:
    made: list[anthropic.Anthropic] = []
    yield made
    for client in made:
        client.close()


@pytest.fixture
def lock(home: Path) -> Iterator[CentralLock]:
    holder = CentralLock(home / "central.db", hold_s=60)
    yield holder
    holder.stop()


def issue_token(central: CentralStore, agent_group_id: str) -> str:
    """A new session of the group and its first run's token (never used yet)."""
    session = central.create_session(agent_group_id, None)
    token = secrets.token_urlsafe(32)
    ProxyTokens(central).issue(
        hashlib.sha256(token.encode()).hexdigest(),
        session.id,
        agent_group_id,
        f"run-{time.time_ns()}",
        bound_to=identity_of_pid(os.getpid()),
    )
    return token


def test_a_reservation_waiting_for_the_lock_holds_up_no_lookup(  # noqa: PLR0917 - fixtures
    proxy: Proxy,
    fake_api: FakeAnthropic,
    agent: AgentSession,
    central: CentralStore,
    lock: CentralLock,
    clients: list[anthropic.Anthropic],
) -> None:
    def sdk(token: str) -> anthropic.Anthropic:
        client = anthropic.Anthropic(
            api_key=token,
            base_url="http://proxy",
            http_client=uds_client(proxy.socket),
            max_retries=0,
        )
        clients.append(client)
        return client

    central.update_container_config(agent.group_id, token_budget_daily=1_000_000)
    other = central.create_agent_group("Other", central.unique_folder("Other"))
    probes = [sdk(issue_token(central, other.id)) for _ in range(PROBES)]
    budgeted = sdk(agent.token)
    budgeted.messages.count_tokens(model="m", messages=MESSAGES)  # its token is cached now
    fake_api.reply({**text("ok"), "usage": USAGE})
    replies: list[str] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            reply = budgeted.messages.create(model="m", max_tokens=100, messages=MESSAGES)
            replies.extend(b.text for b in reply.content if b.type == "text")
        except BaseException as exc:
            errors.append(exc)

    lock.hold()
    caller = threading.Thread(target=call)
    caller.start()
    lookups_s = []
    for probe in probes:
        started = time.monotonic()
        probe.messages.count_tokens(model="m", messages=MESSAGES)
        lookups_s.append(time.monotonic() - started)
        time.sleep(PACE_S)
    assert max(lookups_s) < MAX_LOOKUP_S, (lookups_s, proxy.log())
    assert lock.holding, "the lock ended before the probes did"
    assert caller.is_alive(), "the budgeted call did not wait for its reservation"
    assert not fake_api.message_requests()
    held_s = lock.release()
    caller.join(30)
    assert held_s < 5.0, "held past the busy timeout: the reservation would have failed"
    assert errors == [] and replies == ["ok"], (errors, proxy.log())
    # Nothing lost: the call's usage is in the day's ledger, its reservation settled.
    ledger = TokenLedger(central)
    day = utc_day(int(time.time() * 1000))

    def settled() -> bool:
        use = ledger.day_use(agent.group_id, day, now=int(time.time() * 1000))
        return use.used == USAGE["input_tokens"] + USAGE["output_tokens"] and not use.reserved

    wait_until(settled, timeout_s=20.0, what="the call's usage settled")
