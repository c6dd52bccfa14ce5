"""The rule "async code reaches central.db only through ``AsyncCentral``", checked two ways:

- statically, over the source of every program with an event loop (the router, delivery,
  the proxy, the terminal chat): no coroutine names ``CentralStore`` (or a store built on
  it) or calls anything on a ``central`` but the doors, and no object there keeps a store (so
  the only stores async code ever sees are the ones a door hands to a plain function);
- at run time: every central.db call checks its thread (``store.sqlite.off_the_loop``); on a
  thread that runs an event loop it raises in tests (``conftest``: every test, and every
  program a test starts) and is logged in production.
"""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from nanoclaw_common.sessions import projections
from nanoclaw_common.store import CentralStore, sqlite
from nanoclaw_common.store.sqlite import OnEventLoop, inline_door

REPO = Path(__file__).resolve().parents[2]
#: Every program with an event loop that reaches central.db: the router, delivery, the
#: proxy and the terminal chat. (The sweeper, the watchdog and the rest of the CLI have no
#: loop.)
SOURCES = (
    *(f"nanoclaw_{package}" for package in ("router", "delivery", "proxy")),
    "nanoclaw_cli/chat.py",
)
DOORS = frozenset({"read", "write", "version", "close"})
#: Plain code on threads of its own may hold a store: the wake lane, the test waker.
THREAD_MODULES = frozenset({"nanoclaw_router/wakes.py", "nanoclaw_router/faults.py"})
MAIN_MODULES = frozenset(f"nanoclaw_{p}/__main__.py" for p in ("router", "delivery", "proxy"))


def store_classes() -> frozenset[str]:
    """``CentralStore`` and every store class of central.db (``RouterOutbox``,
    ``OwnerNotices``, ``Quarantine``, the parts of ``store/central/``, the proxy's
    ``ProxyCentral``…): a class that opens a connection to central.db (``open_central`` or a
    ``Mode.CENTRAL`` database), derives from such a class or from ``CentralPart``, or whose
    ``__init__`` takes a ``CentralStore``. The doors themselves are not stores. Found, not
    listed, so a new one is covered."""
    found = {"CentralStore", "CentralPart"}
    classes: list[ast.ClassDef] = []
    paths = [
        *(REPO / "nanoclaw_common" / "store").rglob("*.py"),
        REPO / "nanoclaw_proxy" / "central.py",
    ]
    for path in paths:
        classes += [c for c in ast.walk(ast.parse(path.read_text())) if isinstance(c, ast.ClassDef)]
    for cls in classes:
        source = ast.unparse(cls)
        if "open_central(" in source or "Mode.CENTRAL" in source:
            found.add(cls.name)  # it opens a connection to central.db
        for node in cls.body:
            if isinstance(node, ast.FunctionDef) and node.name == "__init__":
                annotations = [a.annotation for a in node.args.args if a.annotation]
                if any("CentralStore" in ast.unparse(a) for a in annotations):
                    found.add(cls.name)
    grew = True
    while grew:  # subclasses of what was found, to a fixed point
        before = len(found)
        found |= {c.name for c in classes if any(ast.unparse(b) in found for b in c.bases)}
        grew = len(found) > before
    found.discard("Database")  # the connection itself: session DBs use it too
    found -= {"AsyncDoors", "AsyncCentral"}  # the doors: what async code holds instead
    return frozenset(found)


STORES = store_classes()


def sources() -> Iterator[tuple[str, ast.Module]]:
    for source in SOURCES:
        root = REPO / source
        for path in sorted(root.glob("*.py")) if root.is_dir() else [root]:
            name = str(path.relative_to(REPO))
            yield name, ast.parse(path.read_text(), name)


def test_the_checks_see_the_programs_and_their_stores() -> None:
    """The lists above still name real code (a rename must not empty the checks)."""
    names = {name for name, _ in sources()}
    assert {"nanoclaw_router/ingest.py", "nanoclaw_proxy/app.py"} <= names
    assert "nanoclaw_cli/chat.py" in names
    assert {
        "CentralStore",
        "RouterOutbox",
        "OwnerNotices",
        "Quarantine",
        "TokenLedger",
        "Sessions",
        "ProxyCentral",
    } <= STORES


STORE_MODULES = ("nanoclaw_common.store", "nanoclaw_proxy.central")


def stores_named_in(tree: ast.Module) -> frozenset[str]:
    """The store class names that mean a store in this module: a class of the module's own,
    or a name imported from elsewhere (the router's ``cards.Cards``), is not one."""
    own = {c.name for c in tree.body if isinstance(c, ast.ClassDef)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not (node.module or "").startswith(STORE_MODULES):
            own |= {alias.asname or alias.name for alias in node.names}
    return STORES - own


def names_in(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
    }


def is_central(node: ast.expr) -> bool:
    """``central``, ``self.central``, ``deps.central``, ``job.deps.central``…"""
    if isinstance(node, ast.Name):
        return node.id == "central"
    return isinstance(node, ast.Attribute) and node.attr == "central"


def coroutine_violations(name: str, tree: ast.Module) -> list[str]:
    stores = stores_named_in(tree)
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, ast.AsyncFunctionDef):
            continue
        for node in ast.walk(func):
            where = f"{name}:{getattr(node, 'lineno', func.lineno)} in {func.name}"
            if isinstance(node, ast.Name) and node.id in stores:
                found.append(f"{where}: names {node.id}")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and is_central(node.func.value)
                and node.func.attr not in DOORS
            ):
                found.append(f"{where}: calls central.{node.func.attr}() directly")
            if isinstance(node, ast.Attribute) and node.attr == "db" and is_central(node.value):
                found.append(f"{where}: reaches central.db")
    return found


def keeping_violations(name: str, tree: ast.Module) -> list[str]:
    """A store kept by a module or by an object that async code uses (a class with a
    coroutine), or handed to one of its methods, or made outside a function a door runs (a
    store made in a plain helper that a coroutine calls would be on the loop)."""
    stores = stores_named_in(tree)
    found = []
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and stores & names_in(node.annotation):
            found.append(f"{name}:{node.lineno}: {ast.unparse(node.target)} is a kept store")
    for cls in ast.walk(tree):
        if not isinstance(cls, ast.ClassDef) or name in THREAD_MODULES:
            continue
        if not any(isinstance(n, ast.AsyncFunctionDef) for n in cls.body):
            continue  # a plain helper, made and used inside one door call
        for member in ast.walk(cls):
            if isinstance(member, ast.AnnAssign) and stores & names_in(member.annotation):
                target = ast.unparse(member.target)
                found.append(f"{name}:{member.lineno}: {cls.name}.{target} is a kept store")
            if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef):
                for arg in member.args.args + member.args.kwonlyargs:
                    if arg.annotation is not None and stores & names_in(arg.annotation):
                        found.append(
                            f"{name}:{member.lineno}: {cls.name}.{member.name} takes a store"
                            f" ({arg.arg})"
                        )
    for call in ast.walk(tree):
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name | ast.Attribute)
            and (call.func.id if isinstance(call.func, ast.Name) else ast.unparse(call.func))
            in {"CentralStore", "CentralStore.open"}
            and name not in THREAD_MODULES | MAIN_MODULES
        ):
            found.append(f"{name}:{call.lineno}: opens a CentralStore")
    return found


def test_no_coroutine_touches_a_central_store() -> None:
    found = [v for name, tree in sources() for v in coroutine_violations(name, tree)]
    assert found == []


def test_no_object_keeps_a_central_store() -> None:
    found = [v for name, tree in sources() for v in keeping_violations(name, tree)]
    assert found == []


def test_the_static_check_finds_each_kind_of_violation() -> None:
    """The checks above can fail: each kind of violation, in code written the old way."""
    bad = ast.parse(
        """
class Kept:
    central: CentralStore

    def __init__(self, central: CentralStore) -> None:
        self.central = central

    async def route(self, event):
        self.central.record_drop(event)
        self.deps.central.db.data_version()
        return CentralStore.open(path)
"""
    )
    found = coroutine_violations("bad.py", bad) + keeping_violations("bad.py", bad)
    assert any("calls central.record_drop() directly" in v for v in found)
    assert any("reaches central.db" in v for v in found)
    assert any("names CentralStore" in v for v in found)
    assert any("Kept.central is a kept store" in v for v in found)
    assert any("Kept.__init__ takes a store" in v for v in found)
    assert any("opens a CentralStore" in v for v in found)
    good = ast.parse(
        """
async def route(self, event):
    return await self.central.read(find, event.id), self.central.version()
"""
    )
    assert coroutine_violations("good.py", good) == []


def test_a_central_call_on_the_loop_raises_in_tests(central: CentralStore) -> None:
    session = central.create_session(central.create_agent_group("G", "g").id, None)

    async def on_the_loop() -> None:
        projections(central, session)  # program code, reading central.db on the loop

    with pytest.raises(OnEventLoop, match=r"nanoclaw_common/sessions.py:\d+"):
        asyncio.run(on_the_loop())

    async def through_a_door() -> None:
        with inline_door():  # what AsyncCentral.inline and inline lanes do
            projections(central, session)
        await asyncio.to_thread(projections, central, session)  # a thread has no loop

    asyncio.run(through_a_door())
    projections(central, session)  # and no loop at all


def test_a_central_call_on_the_loop_is_logged_once_per_place_in_production(
    central: CentralStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "strict_off_loop", False)
    monkeypatch.setattr(sqlite, "_reported", set())
    session = central.create_session(central.create_agent_group("G", "g").id, None)
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), format="{message}", level="WARNING")

    async def on_the_loop() -> None:
        for _ in range(3):
            projections(central, session)

    try:
        asyncio.run(on_the_loop())
    finally:
        logger.remove(sink)
    assert len(lines) == 1
    assert "central.db used on the event loop at" in lines[0]
    assert "nanoclaw_common/sessions.py" in lines[0]
