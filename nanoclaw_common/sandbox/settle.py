"""Settling a dead run's leftover claims (docs/internals.md "Runs, claims and liveness").

A claim still ``processing`` when its run is gone means the run died on that message. Before
a new run starts (``Sandbox.wake``), and when the sweeper finds a run dead, each such message
gets ``tries += 1`` and waits ``process_after_ms = now + backoff``; at ``max_tries`` it is
marked ``failed``, recorded in ``failed_messages`` and the agent gets a system note asking it
to tell the user. This happens before the new run's ``start_run`` drops the claims, so a
message that kills its container every time cannot loop forever.

Each run is settled once (``settled_runs``): its claims stay in ``outbound.db`` until the
next run drops them, and counting them twice would burn retries. The inbound update commits
before the run is recorded as settled, so a crash in between can count one death twice (the
safe direction), never lose one.

Decision logic takes ``now``; nothing here reads the clock or talks to Podman.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import msgspec
from loguru import logger

from nanoclaw_common.messages import system_note
from nanoclaw_common.states import MessageInStatus
from nanoclaw_common.store import InboundStore, NewInbound, rows
from nanoclaw_common.store.runs import RunLedger

RETRY_BASE_MS: Final = 5_000  # 5 s, 10 s, 20 s, 40 s... as upstream
RETRY_MAX_MS: Final = 600_000

log = logger.bind(component="settle")


class Settled(msgspec.Struct, frozen=True):
    runs: list[str]  # run ids settled now
    rescheduled: list[str]  # message ids given another try
    failed: list[str]  # message ids given up on


def retry_backoff_ms(tries: int) -> int:
    """The wait before the next attempt, from the try count *before* this death."""
    exponent: int = min(max(tries, 0), 30)
    return min(RETRY_BASE_MS << exponent, RETRY_MAX_MS)


def failure_note_id(message_id: str) -> str:
    return f"failed:{message_id}"


def settle_leftover_claims(
    *,
    session_id: str,
    claims: Iterable[rows.Ack],
    inbound: InboundStore,
    ledger: RunLedger,
    max_tries: int,
    now: int,
    live_run_id: str | None = None,
) -> Settled:
    """Settle the ``processing`` claims of every run except ``live_run_id`` (the run that is
    alive right now, if any: its claims are not leftovers)."""
    by_run: dict[str, list[rows.Ack]] = {}
    for claim in claims:
        if claim.status == "processing" and claim.run_id != live_run_id:
            by_run.setdefault(claim.run_id, []).append(claim)
    runs: list[str] = []
    rescheduled: list[str] = []
    failed: list[str] = []
    for run_id, run_claims in sorted(by_run.items()):
        if ledger.is_settled(session_id, run_id):
            continue
        for claim in run_claims:
            row = inbound.get_message(claim.message_id)
            if row is None or row.status != MessageInStatus.PENDING:
                continue  # acked meanwhile, cancelled, or a row we never had
            if row.tries + 1 >= max_tries:
                _give_up(session_id, row, inbound, ledger, now)
                failed.append(row.id)
            else:
                inbound.reschedule(
                    row.id,
                    tries=row.tries + 1,
                    process_after_ms=now + retry_backoff_ms(row.tries),
                )
                rescheduled.append(row.id)
                log.info(
                    "claim left by dead run: try {} of {} after backoff",
                    row.tries + 1,
                    max_tries,
                    session=session_id,
                    message=row.id,
                    run=run_id,
                )
        ledger.mark_settled(session_id, run_id, len(run_claims), now=now)
        runs.append(run_id)
    return Settled(runs, rescheduled, failed)


def _give_up(
    session_id: str, row: rows.InboundRow, inbound: InboundStore, ledger: RunLedger, now: int
) -> None:
    tries = row.tries + 1
    reason = f"the agent's container stopped {tries} times while working on it"
    inbound.reschedule(row.id, tries=tries, process_after_ms=now)
    inbound.set_status(row.id, MessageInStatus.FAILED)
    ledger.record_failure(session_id, row.id, tries, reason, now=now)
    # The user hears about it through the agent's next run, in the same chat (and thread)
    # as the message. The note's id is derived from the message, so it is written once.
    inbound.insert_message(
        NewInbound(
            id=failure_note_id(row.id),
            content=system_note(
                f"Message #{row.seq} could not be processed: {reason}, so it was dropped. "
                "Tell the user it failed and that they can send it again, perhaps shorter "
                "or in smaller steps."
            ),
            timestamp_ms=now,
            channel_type=row.channel_type,
            platform_id=row.platform_id,
            thread_id=row.thread_id,
        ),
        now=now,
    )
    log.warning(
        "message failed after {} tries: {}", tries, reason, session=session_id, message=row.id
    )
