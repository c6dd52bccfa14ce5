"""The two store verbs the runner added: ``InboundReader.next_due_after`` and
``OutboundStore.reset_turns``."""

from __future__ import annotations

from nanoclaw_common import messages
from nanoclaw_common.store import NewInbound

from .conftest import NOW, Session


def test_next_due_after(session: Session) -> None:
    assert session.inbound.next_due_after(NOW) is None
    for row_id, due in (("now", NOW), ("later", NOW + 5_000), ("latest", NOW + 9_000)):
        session.inbound.insert_message(
            NewInbound(
                id=row_id,
                content=messages.TaskContent(prompt="p"),
                timestamp_ms=NOW,
                process_after_ms=due,
            )
        )
    assert session.inbound.next_due_after(NOW) == NOW + 5_000  # due rows do not count
    session.inbound.set_status("later", "completed")
    assert session.inbound.next_due_after(NOW) == NOW + 9_000
    assert session.inbound.next_due_after(NOW + 9_000) is None


def test_reset_turns(session: Session) -> None:
    session.outbound.count_turn()
    assert session.outbound.count_turn() == 2
    session.outbound.reset_turns(now=NOW)
    state = session.outbound.container_state()
    assert state is not None and state.turns == 0 and state.updated_at_ms == NOW
    assert state.run_id == "run-1"
    assert session.outbound.count_turn() == 1
