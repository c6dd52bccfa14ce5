"""Token metering in ``central.db``: each agent group's daily use (``token_usage``) and the
reservations of model calls in flight (``token_reservations``, migration 0070).

The budget holds under concurrency because a call is admitted by a reservation, not by a
look at past usage: ``reserve`` reads the day's usage and the live reservations and adds its
own in one ``BEGIN IMMEDIATE`` transaction, so twenty calls racing for room for two get two
reservations and eighteen refusals. ``settle`` replaces the reservation by the call's real
usage, in one transaction as well; ``release`` drops it when the call produced none.

A proxy that dies mid-call cannot settle: its reservations stop counting at their
``expires_at_ms`` and the next proxy deletes those of dead proxies at start
(``forget_owners_except``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

import msgspec

from nanoclaw_common.ids import new_id
from nanoclaw_common.store.central.base import CentralPart

RESERVATION_TTL_MS: Final = 20 * 60 * 1000  # longer than any model call the proxy forwards


def utc_day(now_ms: int) -> str:
    """The ``token_usage.day`` of a moment: its UTC date."""
    return datetime.fromtimestamp(now_ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def effective_budget(group_budget: int | None, default_budget: int) -> int:
    """The group's own budget when set, else the default; 0 (set on purpose) is unlimited."""
    return default_budget if group_budget is None else group_budget


class Reservation(msgspec.Struct, frozen=True):
    id: str
    agent_group_id: str
    day: str
    tokens: int


class DayUse(msgspec.Struct, frozen=True):
    """A group's day: tokens used (input + output) and held by calls in flight."""

    used: int = 0
    reserved: int = 0

    @property
    def total(self) -> int:
        return self.used + self.reserved


class TokenLedger(CentralPart):
    """Verb-named methods over ``token_usage`` and ``token_reservations``."""

    def day_use(self, agent_group_id: str, day: str, *, now: int) -> DayUse:
        """The group's ``day``: tokens used, and tokens held by reservations live at ``now``."""
        used = self.db.scalar(
            "SELECT input_tokens + output_tokens FROM token_usage"
            " WHERE agent_group_id = ? AND day = ?",
            (agent_group_id, day),
        )
        reserved = self.db.scalar(
            "SELECT ifnull(sum(tokens), 0) FROM token_reservations"
            " WHERE agent_group_id = ? AND day = ? AND expires_at_ms > ?",
            (agent_group_id, day, now),
        )
        return DayUse(int(used or 0), int(reserved or 0))

    def reserve(
        self,
        agent_group_id: str,
        day: str,
        tokens: int,
        *,
        budget: int,
        owner_pid: int,
        now: int,
        ttl_ms: int = RESERVATION_TTL_MS,
    ) -> Reservation | DayUse:
        """Hold ``tokens`` of the group's ``budget`` for ``day``: the reservation, or (when
        the day's use plus the live reservations plus ``tokens`` would pass the budget) the
        day's use, and nothing is held. ``budget`` <= 0 means unlimited."""
        with self.db.write():
            use = self.day_use(agent_group_id, day, now=now)
            if budget > 0 and use.total + tokens > budget:
                return use
            reservation = Reservation(new_id("rsv", now), agent_group_id, day, tokens)
            self.db.execute(
                "INSERT INTO token_reservations (id, agent_group_id, day, tokens, owner_pid,"
                " created_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (reservation.id, agent_group_id, day, tokens, owner_pid, now, now + ttl_ms),
            )
            return reservation

    def settle(self, reservation: Reservation, input_tokens: int, output_tokens: int) -> None:
        """Replace the reservation by the call's real usage (counted on its day)."""
        with self.db.write():
            self.db.execute("DELETE FROM token_reservations WHERE id = ?", (reservation.id,))
            self.add_usage(reservation.agent_group_id, reservation.day, input_tokens, output_tokens)

    def add_usage(
        self, agent_group_id: str, day: str, input_tokens: int, output_tokens: int
    ) -> None:
        """Count one call's usage (no reservation: an unlimited group's call)."""
        with self.db.write():
            self.db.execute(
                "INSERT INTO token_usage (agent_group_id, day, input_tokens, output_tokens,"
                " requests) VALUES (?, ?, ?, ?, 1) ON CONFLICT (agent_group_id, day) DO UPDATE SET"
                " input_tokens = input_tokens + excluded.input_tokens,"
                " output_tokens = output_tokens + excluded.output_tokens,"
                " requests = requests + 1",
                (agent_group_id, day, input_tokens, output_tokens),
            )

    def release(self, reservation: Reservation) -> None:
        """Drop a reservation whose call used nothing (refused upstream, failed to connect)."""
        with self.db.write():
            self.db.execute("DELETE FROM token_reservations WHERE id = ?", (reservation.id,))

    def forget_owners_except(self, alive_pids: set[int], *, now: int) -> int:
        """Delete the reservations of proxies not in ``alive_pids`` and every expired one;
        how many went. Run by a proxy at start (it holds the proxy lock, so no other
        proxy is serving; one still draining calls is in ``alive_pids``)."""
        marks = ", ".join("?" for _ in alive_pids)
        # ``NOT IN (NULL)`` is never true: with no live owner, every row goes.
        dead = f"owner_pid NOT IN ({marks})" if alive_pids else "1"
        with self.db.write():
            self.db.execute(
                f"DELETE FROM token_reservations WHERE {dead} OR expires_at_ms <= ?",
                (*sorted(alive_pids), now),
            )
            return self.db.changes()

    def live_reservations(self, *, now: int) -> int:
        """How many reservations are live (not expired) at ``now``."""
        return int(
            self.db.scalar(
                "SELECT count(*) FROM token_reservations WHERE expires_at_ms > ?", (now,)
            )
        )
