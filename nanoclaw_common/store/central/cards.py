"""The host's cards: the agents' pending questions, pending approvals, sender and channel
approvals with the attachments held for them, and the card ids a click may carry."""

from __future__ import annotations

from typing import Literal

import msgspec

from nanoclaw_common.clock import now_ms
from nanoclaw_common.store import rows
from nanoclaw_common.store.central.base import CentralPart, unguessable_id
from nanoclaw_common.store.central.people import People
from nanoclaw_common.store.sqlite import columns

ApprovalClick = Literal["approved", "rejected", "unauthorized", "expired", "gone"]


class HeldFile(msgspec.Struct, frozen=True):
    """An attachment kept with a pending sender or channel approval (migration 0021)."""

    name: str
    kind: str
    mime_type: str | None
    data: bytes


class Cards(CentralPart):
    """Verb-named methods over ``pending_questions``, ``pending_approvals``,
    ``pending_sender_approvals``, ``pending_channel_approvals`` and ``held_attachments``."""

    def create_pending_question(
        self, question: rows.PendingQuestion, *, agent_question_id: str | None = None
    ) -> bool:
        """Insert unless it exists (a delivery retry re-inserts); True when inserted.
        ``agent_question_id``: the id the agent asked with, when the row is keyed on the host
        (the answer goes back under the agent's id; migration 0031)."""
        with self.db.write():
            self.db.execute(
                f"INSERT OR IGNORE INTO pending_questions ({columns(rows.PendingQuestion)})"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                msgspec.structs.astuple(question),
            )
            if self.db.changes() != 1:
                return False
            if agent_question_id is not None:
                self.db.execute(
                    "UPDATE pending_questions SET agent_question_id = ? WHERE question_id = ?",
                    (agent_question_id, question.question_id),
                )
            return True

    def agent_question_id(self, question_id: str) -> str | None:
        """The id the agent asked ``question_id`` with (None: keyed by the agent's own id)."""
        value = self.db.scalar(
            "SELECT agent_question_id FROM pending_questions WHERE question_id = ?",
            (question_id,),
        )
        return None if value is None else str(value)

    def get_pending_question(self, question_id: str) -> rows.PendingQuestion | None:
        """The pending question ``question_id`` (None: unknown)."""
        return self._row(rows.PendingQuestion, "WHERE question_id = ?", (question_id,))

    def set_question_platform_message(self, question_id: str, platform_message_id: str) -> None:
        """Record the platform message that shows the question's card."""
        with self.db.write():
            self.db.execute(
                "UPDATE pending_questions SET platform_message_id = ? WHERE question_id = ?",
                (platform_message_id, question_id),
            )

    def delete_pending_question(self, question_id: str) -> bool:
        """Forget a question (answered or given up); True when it was there."""
        with self.db.write():
            self.db.execute("DELETE FROM pending_questions WHERE question_id = ?", (question_id,))
            return self.db.changes() == 1

    def list_pending_questions(self) -> list[rows.PendingQuestion]:
        """Every pending question, oldest first."""
        return self._rows(rows.PendingQuestion, "ORDER BY created_at_ms")

    def is_card_id(self, value: str) -> bool:
        """True when ``value`` names a pending host card: an approval, a sender approval or
        a chat registration (by its card id or its chat's id). Delivery refuses an agent's
        question that uses one."""
        return bool(
            self.db.scalar(
                "SELECT EXISTS (SELECT 1 FROM pending_approvals WHERE approval_id = ?1)"
                " OR EXISTS (SELECT 1 FROM pending_sender_approvals WHERE id = ?1)"
                " OR EXISTS (SELECT 1 FROM pending_channel_approvals"
                " WHERE card_id = ?1 OR messaging_group_id = ?1)",
                (value,),
            )
        )

    def find_pending_approval_for(
        self, session_id: str, request_id: str
    ) -> rows.PendingApproval | None:
        """The approval a session's request (an outbound row) created, if any: a re-run of
        the request after a crash finds it (its id is random, not derived)."""
        return self._row(
            rows.PendingApproval,
            "WHERE session_id = ? AND request_id = ? ORDER BY created_at_ms",
            (session_id, request_id),
        )

    def channel_approval_card(self, messaging_group_id: str) -> str | None:
        """The card id of a chat's pending registration, made (random) on first use; None
        when no registration is pending for the chat."""
        known = self.db.scalar(
            "SELECT card_id FROM pending_channel_approvals WHERE messaging_group_id = ?",
            (messaging_group_id,),
        )
        if known is not None:
            return str(known)  # the common case needs no write lock
        with self.db.write():
            found = self.db.one(
                "SELECT card_id FROM pending_channel_approvals WHERE messaging_group_id = ?",
                (messaging_group_id,),
            )
            if found is None:
                return None
            if found[0] is not None:
                return str(found[0])
            card_id = unguessable_id("regc")
            self.db.execute(
                "UPDATE pending_channel_approvals SET card_id = ? WHERE messaging_group_id = ?",
                (card_id, messaging_group_id),
            )
            return card_id

    def find_channel_approval_by_card(self, card_id: str) -> rows.PendingChannelApproval | None:
        """The pending registration whose card is ``card_id`` (None: unknown)."""
        return self._row(rows.PendingChannelApproval, "WHERE card_id = ?", (card_id,))

    def list_channel_approval_cards(self) -> list[str]:
        """The card ids of every pending registration that has one."""
        return [
            str(card_id)
            for (card_id,) in self.db.all(
                "SELECT card_id FROM pending_channel_approvals WHERE card_id IS NOT NULL"
            )
        ]

    def router_card_messages(self, question_id: str) -> list[tuple[str, str, str | None]]:
        """(channel type, platform id, platform message id) of every card the router sent
        or is sending with this question id (``router_outbox``, not ``failed``): where a
        click on it may come from. A card still in flight has no message id yet, but the
        terminal can show it and take its click before the send returns."""
        return [
            (str(channel), str(platform), None if message is None else str(message))
            for channel, platform, message in self.db.all(
                "SELECT channel_type, platform_id, platform_message_id FROM router_outbox"
                " WHERE kind = 'question' AND json_extract(body, '$.question_id') = ?"
                " AND status != 'failed'",
                (question_id,),
            )
        ]

    def create_pending_approval(self, approval: rows.PendingApproval) -> bool:
        """Insert unless it exists (a delivery retry re-inserts); True when inserted."""
        with self.db.write():
            self.db.execute(
                f"INSERT OR IGNORE INTO pending_approvals ({columns(rows.PendingApproval)})"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                msgspec.structs.astuple(approval),
            )
            return self.db.changes() == 1

    def get_pending_approval(self, approval_id: str) -> rows.PendingApproval | None:
        """The approval ``approval_id`` in whatever status (None: unknown)."""
        return self._row(rows.PendingApproval, "WHERE approval_id = ?", (approval_id,))

    def list_pending_approvals(self, status: str | None = None) -> list[rows.PendingApproval]:
        """Every approval, or those in ``status``, oldest first."""
        if status is None:
            return self._rows(rows.PendingApproval, "ORDER BY created_at_ms")
        return self._rows(
            rows.PendingApproval, "WHERE status = ? ORDER BY created_at_ms", (status,)
        )

    def set_approval_status(
        self, approval_id: str, status: str, *, expect: str = "pending"
    ) -> bool:
        """Move an approval from ``expect`` to ``status``. False when it was not in ``expect``
        any more: two clicks (or a click and the timeout) cannot both win."""
        with self.db.write():
            self.db.execute(
                "UPDATE pending_approvals SET status = ? WHERE approval_id = ? AND status = ?",
                (status, approval_id, expect),
            )
            return self.db.changes() == 1

    def decide_approval(
        self, approval_id: str, user_id: str, value: str, *, now: int | None = None
    ) -> ApprovalClick:
        """A click on an approval card. It counts only when the clicker has admin privilege
        over the approval's agent group (the designated approver, any other approver, or the
        owner); ``value == 'approve'`` approves, anything else rejects. The check and the
        status change share one transaction, so two clicks (or a click and the expiry) cannot
        both win. Returns what happened: ``approved``, ``rejected``, ``unauthorized`` (nothing
        changed), ``expired`` (past its deadline; delivery records the expiry) or ``gone``
        (unknown or already decided)."""
        stamp = now or now_ms()
        with self.db.write():
            approval = self.get_pending_approval(approval_id)
            if approval is None or approval.status != "pending":
                return "gone"
            if approval.expires_at_ms is not None and stamp >= approval.expires_at_ms:
                return "expired"
            if not People(self.db).has_admin_privilege(user_id, approval.agent_group_id):
                return "unauthorized"
            status: ApprovalClick = "approved" if value == "approve" else "rejected"
            self.db.execute(
                "UPDATE pending_approvals SET status = ?, decided_by = ?, decided_at_ms = ?"
                " WHERE approval_id = ? AND status = 'pending'",
                (status, user_id, stamp, approval_id),
            )
            return status

    def approval_decided_by(self, approval_id: str) -> str | None:
        """Who clicked the approval into its decision (None: no click decided it, or unknown)."""
        value = self.db.scalar(
            "SELECT decided_by FROM pending_approvals WHERE approval_id = ?", (approval_id,)
        )
        return None if value is None else str(value)

    def set_approval_platform_message(self, approval_id: str, platform_message_id: str) -> None:
        """Record the platform message that shows the approval's card."""
        with self.db.write():
            self.db.execute(
                "UPDATE pending_approvals SET platform_message_id = ? WHERE approval_id = ?",
                (platform_message_id, approval_id),
            )

    def delete_pending_approval(self, approval_id: str) -> bool:
        """Forget an approval; True when it was there."""
        with self.db.write():
            self.db.execute("DELETE FROM pending_approvals WHERE approval_id = ?", (approval_id,))
            return self.db.changes() == 1

    def create_sender_approval(
        self, approval: rows.PendingSenderApproval, held: list[HeldFile] | None = None
    ) -> bool:
        """False when one is already pending for this chat and sender (the dedup). ``held``
        (the message's attachments) is stored with it, in the same transaction."""
        with self.db.write():
            self.db.execute(
                f"INSERT OR IGNORE INTO pending_sender_approvals"
                f" ({columns(rows.PendingSenderApproval)}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                msgspec.structs.astuple(approval),
            )
            if self.db.changes() != 1:
                return False
            self._hold("sender_approval_id", approval.id, held or [])
            return True

    def get_sender_approval(self, approval_id: str) -> rows.PendingSenderApproval | None:
        """The pending sender approval ``approval_id`` (None: unknown)."""
        return self._row(rows.PendingSenderApproval, "WHERE id = ?", (approval_id,))

    def find_sender_approval(
        self, messaging_group_id: str, sender_identity: str
    ) -> rows.PendingSenderApproval | None:
        """The sender approval pending for this chat and sender, if any."""
        return self._row(
            rows.PendingSenderApproval,
            "WHERE messaging_group_id = ? AND sender_identity = ?",
            (messaging_group_id, sender_identity),
        )

    def list_sender_approvals(self) -> list[rows.PendingSenderApproval]:
        """Every pending sender approval, oldest first."""
        return self._rows(rows.PendingSenderApproval, "ORDER BY created_at_ms")

    def delete_sender_approval(self, approval_id: str) -> bool:
        """Forget a sender approval and its held attachments; True when it was there."""
        with self.db.write():
            self.db.execute("DELETE FROM pending_sender_approvals WHERE id = ?", (approval_id,))
            return self.db.changes() == 1

    def create_channel_approval(
        self, approval: rows.PendingChannelApproval, held: list[HeldFile] | None = None
    ) -> bool:
        """False when one is pending for this chat already. ``held`` as for senders."""
        with self.db.write():
            self.db.execute(
                f"INSERT OR IGNORE INTO pending_channel_approvals"
                f" ({columns(rows.PendingChannelApproval)}) VALUES (?,?,?,?,?,?,?,?)",
                msgspec.structs.astuple(approval),
            )
            if self.db.changes() != 1:
                return False
            self._hold("channel_approval_id", approval.messaging_group_id, held or [])
            return True

    def _hold(
        self,
        column: Literal["sender_approval_id", "channel_approval_id"],
        key: str,
        held: list[HeldFile],
    ) -> None:
        for position, item in enumerate(held):
            self.db.execute(
                f"INSERT INTO held_attachments ({column}, position, name, kind, mime_type, data)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (key, position, item.name, item.kind, item.mime_type, item.data),
            )

    def held_files(
        self, *, sender_approval_id: str | None = None, channel_approval_id: str | None = None
    ) -> list[HeldFile]:
        """The attachments kept with a pending approval, in message order (deleted with the
        approval: ON DELETE CASCADE)."""
        column, key = (
            ("sender_approval_id", sender_approval_id)
            if sender_approval_id is not None
            else ("channel_approval_id", channel_approval_id)
        )
        return [
            HeldFile(str(name), str(kind), None if mime is None else str(mime), bytes(data))
            for name, kind, mime, data in self.db.all(
                f"SELECT name, kind, mime_type, data FROM held_attachments WHERE {column} = ?"
                " ORDER BY position",
                (key,),
            )
        ]

    def get_channel_approval(self, messaging_group_id: str) -> rows.PendingChannelApproval | None:
        """The registration pending for this chat, if any."""
        return self._row(
            rows.PendingChannelApproval, "WHERE messaging_group_id = ?", (messaging_group_id,)
        )

    def list_channel_approvals(self) -> list[rows.PendingChannelApproval]:
        """Every pending registration, oldest first."""
        return self._rows(rows.PendingChannelApproval, "ORDER BY created_at_ms")

    def update_channel_approval(
        self,
        messaging_group_id: str,
        *,
        awaiting_name: bool | None = None,
        title: str | None = None,
        options_json: str | None = None,
    ) -> None:
        """Change the given fields of a chat's pending registration (None: unchanged); nothing
        when none is pending."""
        with self.db.write():
            self.db.execute(
                "UPDATE pending_channel_approvals SET awaiting_name = coalesce(?, awaiting_name),"
                " title = coalesce(?, title), options_json = coalesce(?, options_json)"
                " WHERE messaging_group_id = ?",
                (
                    None if awaiting_name is None else int(awaiting_name),
                    title,
                    options_json,
                    messaging_group_id,
                ),
            )

    def delete_channel_approval(self, messaging_group_id: str) -> bool:
        """Forget a chat's pending registration and its held attachments; True when it was
        there."""
        with self.db.write():
            self.db.execute(
                "DELETE FROM pending_channel_approvals WHERE messaging_group_id = ?",
                (messaging_group_id,),
            )
            return self.db.changes() == 1
