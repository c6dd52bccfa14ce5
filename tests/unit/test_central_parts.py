"""The central store as parts on one connection: nested ``write()`` blocks are savepoints,
cross-part changes stay atomic, the parts' verbs do not collide in ``CentralStore``, and each
states its contract. Real central.db files under tmp_path."""

from __future__ import annotations

import inspect
from pathlib import Path

import apsw
import pytest

from nanoclaw_common.store import disk as disk_store
from nanoclaw_common.store import (
    metering,
    owner_notices,
    proxy_policy,
    proxy_tokens,
    router_outbox,
    runs,
)
from nanoclaw_common.store import quarantine as quarantine_store
from nanoclaw_common.store.central import (
    Cards,
    CentralPart,
    CentralStore,
    Destinations,
    Drops,
    Entities,
    Notices,
    People,
    Sessions,
    open_central,
)
from nanoclaw_common.store.sqlite import Database, Mode
from nanoclaw_proxy.central import ProxyCentral

NOW = 1_700_000_000_000
PARTS: list[type[CentralPart]] = [Entities, People, Sessions, Destinations, Cards, Notices, Drops]
SATELLITES: list[type[CentralPart]] = [
    metering.TokenLedger,
    proxy_tokens.ProxyTokens,
    proxy_policy.ProxyPolicies,
    owner_notices.OwnerNotices,
    router_outbox.RouterOutbox,
    runs.RunLedger,
    quarantine_store.Quarantine,
    disk_store.DiskLedger,
]


def names(central: CentralStore) -> list[str]:
    return sorted(g.name for g in central.list_agent_groups())


# -- nested write() ------------------------------------------------------------------------


def test_an_inner_failure_undoes_only_the_inner_block(central: CentralStore) -> None:
    """The outer block catches the inner one's error and goes on: what the inner block wrote
    before failing is gone, what the outer block wrote before and after it commits."""
    with central.db.write():
        central.create_agent_group("Before", "before", now=NOW)
        with pytest.raises(RuntimeError), central.db.write():
            central.create_agent_group("Inner", "inner", now=NOW)
            raise RuntimeError("inner block fails")
        central.create_agent_group("After", "after", now=NOW)
    assert names(central) == ["After", "Before"]
    # The inner group's default container config (same transaction) went with it.
    assert central.db.scalar("SELECT count(*) FROM container_configs") == 2
    assert central.db.conn.getautocommit()


def test_an_outer_failure_after_an_inner_success_undoes_both(central: CentralStore) -> None:
    with pytest.raises(RuntimeError), central.db.write():
        with central.db.write():
            central.create_agent_group("Inner", "inner", now=NOW)
        central.create_agent_group("Outer", "outer", now=NOW)
        raise RuntimeError("outer block fails")
    assert names(central) == []
    assert central.db.conn.getautocommit()


def test_an_uncaught_inner_failure_rolls_back_the_whole_transaction(
    central: CentralStore,
) -> None:
    with pytest.raises(RuntimeError), central.db.write():
        central.create_agent_group("Outer", "outer", now=NOW)
        with central.db.write():
            central.create_agent_group("Inner", "inner", now=NOW)
            raise RuntimeError("inner block fails")
    assert names(central) == []
    assert central.db.conn.getautocommit()


def test_savepoints_nest_three_deep(central: CentralStore) -> None:
    """A failure in the middle block undoes the middle and innermost blocks (the innermost
    one had ended well), not the outermost."""
    with central.db.write():
        central.create_agent_group("One", "one", now=NOW)
        with pytest.raises(RuntimeError), central.db.write():
            central.create_agent_group("Two", "two", now=NOW)
            with central.db.write():
                central.create_agent_group("Three", "three", now=NOW)
            raise RuntimeError("middle block fails")
        with central.db.write():  # the depth is back where it was: a new savepoint works
            central.create_agent_group("Four", "four", now=NOW)
    assert names(central) == ["Four", "One"]


def test_a_full_database_inside_a_nested_block_surfaces_as_a_full_error(
    tmp_path: Path,
) -> None:
    """SQLite may roll back the whole transaction after SQLITE_FULL: the savepoint must not
    hide the error behind a failing ROLLBACK TO, and the connection stays usable."""
    db = Database(tmp_path / "s.db", Mode.SESSION)
    db.execute("CREATE TABLE t (x BLOB)")
    db.execute("PRAGMA max_page_count = 8")
    with pytest.raises(apsw.FullError), db.write():
        db.execute("INSERT INTO t VALUES (x'01')")
        with db.write():
            db.execute("INSERT INTO t VALUES (zeroblob(100000))")
    assert db.conn.getautocommit()
    assert db.scalar("SELECT count(*) FROM t") == 0
    with db.write():
        db.execute("INSERT INTO t VALUES (x'00')")
    assert db.scalar("SELECT count(*) FROM t") == 1
    db.close()


# -- cross-part transactions ---------------------------------------------------------------


def test_a_wiring_and_its_destination_are_one_transaction(tmp_path: Path) -> None:
    """``create_wiring`` (entities) grants the group its destination (destinations) in the
    same transaction: when the destination cannot be written, no wiring is left either."""
    db = open_central(tmp_path / "central.db")
    entities = Entities(db)
    group = entities.create_agent_group("Main", "main", now=NOW)
    chat = entities.create_messaging_group("telegram", "telegram:1", now=NOW)
    db.execute(
        "CREATE TEMP TRIGGER refuse_destinations BEFORE INSERT ON agent_destinations"
        " BEGIN SELECT RAISE(ABORT, 'no destinations today'); END"
    )
    with pytest.raises(apsw.ConstraintError, match="no destinations today"):
        entities.create_wiring(chat.id, group.id, now=NOW)
    assert entities.list_wirings() == []
    assert Destinations(db).list_destinations() == []
    db.execute("DROP TRIGGER refuse_destinations")
    wiring = entities.create_wiring(chat.id, group.id, now=NOW)
    assert [w.id for w in entities.list_wirings()] == [wiring.id]
    assert [d.target_id for d in Destinations(db).list_destinations(group.id)] == [chat.id]
    db.close()


def test_a_remembered_dm_is_its_chat_and_its_row_in_one_transaction(tmp_path: Path) -> None:
    """``remember_dm`` (people) creates the DM's chat (entities) and the ``user_dms`` row
    together: when the row cannot be written, no chat is left; ``dm_chat`` finds it after."""
    db = open_central(tmp_path / "central.db")
    people = People(db)
    people.upsert_user("telegram:42", "telegram", "Ann", now=NOW)
    db.execute(
        "CREATE TEMP TRIGGER refuse_dms BEFORE INSERT ON user_dms"
        " BEGIN SELECT RAISE(ABORT, 'no dms today'); END"
    )
    with pytest.raises(apsw.ConstraintError, match="no dms today"):
        people.remember_dm("telegram:42", "telegram", "telegram:42", now=NOW)
    assert Entities(db).list_messaging_groups() == []
    assert people.dm_chat("telegram:42", "telegram") is None
    db.execute("DROP TRIGGER refuse_dms")
    chat = people.remember_dm("telegram:42", "telegram", "telegram:42", now=NOW)
    assert (chat.name, chat.is_group, chat.unknown_sender_policy) == ("Ann", False, "strict")
    found = people.dm_chat("telegram:42", "telegram")
    assert found is not None and found.id == chat.id
    db.close()


def test_parts_made_from_a_store_share_its_transactions(central: CentralStore) -> None:
    group = central.create_agent_group("Main", "main", now=NOW)
    sessions, drops = Sessions(central), Drops(Sessions(central))
    assert sessions.db is central.db and drops.db is central.db
    with pytest.raises(RuntimeError), central.db.write():
        sessions.create_session(group.id, None, now=NOW)
        drops.record_drop("telegram", "telegram:1", "unknown_sender", now=NOW)
        raise RuntimeError("after both parts wrote")
    assert central.list_sessions() == [] and central.list_drops() == []


# -- the shape of the package --------------------------------------------------------------


def verbs(part: type[object]) -> set[str]:
    return {
        name
        for name, member in vars(part).items()
        if not name.startswith("_") and inspect.isfunction(member)
    }


def test_no_two_parts_define_the_same_verb() -> None:
    """``CentralStore`` inherits every part: a verb defined in two would silently be the
    first one's."""
    seen: dict[str, str] = {}
    for part in PARTS:
        for verb in verbs(part):
            assert verb not in seen, f"{verb} is in both {seen[verb]} and {part.__name__}"
            seen[verb] = part.__name__
    assert set(seen) <= {name for name in dir(CentralStore) if not name.startswith("_")}


@pytest.mark.parametrize("part", [CentralStore, *PARTS, *SATELLITES], ids=lambda p: p.__name__)
def test_every_public_verb_states_its_contract(part: type[object]) -> None:
    undocumented = sorted(v for v in verbs(part) if not inspect.getdoc(vars(part)[v]))
    assert undocumented == []


def test_the_proxy_holds_only_its_parts(tmp_path: Path) -> None:
    """The proxy's view of central.db has tokens, metering, policies and read access to the
    groups; no sessions, people or cards (those verbs are not there to call)."""
    central = ProxyCentral.open(tmp_path / "central.db")
    try:
        held = {type(part) for part in vars(central).values() if isinstance(part, CentralPart)}
        assert held == {
            proxy_tokens.ProxyTokens,
            metering.TokenLedger,
            proxy_policy.ProxyPolicies,
            Entities,
        }
        assert all(not isinstance(part, CentralStore) for part in vars(central).values())
        group = Entities(central.db).create_agent_group("Main", "main", now=NOW)
        assert central.groups.get_container_config(group.id) is not None
        assert central.ledger.day_use(group.id, "2026-12-03", now=NOW) == metering.DayUse()
    finally:
        central.close()
