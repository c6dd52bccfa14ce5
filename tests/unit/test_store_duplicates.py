"""A duplicate row is a typed error from the store (``errors.AlreadyExists``), never an
apsw error whose text a caller has to match."""

from __future__ import annotations

import apsw
import pytest

from nanoclaw_common.errors import AlreadyExists
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.sqlite import refusing_duplicates


def test_wiring_a_chat_twice_to_one_group_is_already_exists(central: CentralStore) -> None:
    group = central.create_agent_group("Main", "main")
    chat = central.create_messaging_group("slack", "C0123", name="general")
    central.create_wiring(chat.id, group.id)
    destinations = central.list_destinations(group.id)
    with pytest.raises(AlreadyExists, match=f"{chat.id} is already wired to {group.id}"):
        central.create_wiring(chat.id, group.id, priority=5)
    # The refused call changed nothing (one transaction, rolled back).
    assert len(central.list_wirings(chat.id)) == 1
    assert central.list_destinations(group.id) == destinations
    other = central.create_agent_group("Other", "other")
    central.create_wiring(chat.id, other.id)  # the same chat to another group is fine


def test_only_uniqueness_becomes_already_exists() -> None:
    db = apsw.Connection(":memory:")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)")
    db.execute("INSERT INTO t VALUES (1, 'a')")
    with pytest.raises(AlreadyExists, match="name a"), refusing_duplicates("name a"):
        db.execute("INSERT INTO t VALUES (2, 'a')")
    with pytest.raises(AlreadyExists, match="row 1"), refusing_duplicates("row 1"):
        db.execute("INSERT INTO t VALUES (1, 'b')")
    with pytest.raises(apsw.ConstraintError, match="NOT NULL"), refusing_duplicates("x"):
        db.execute("INSERT INTO t VALUES (3, NULL)")
