"""The repository's docs name only what exists: every file or folder, module, class, function
and test they quote in backticks is there, and nothing links outside the repository.

Docs drift when code moves (a module split, a package renamed); this turns a stale name into a
failing test that points at the line to update. Names are checked without importing anything:
paths against the tree, dotted names against the modules' source (``ast``).
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Top-level folders whose names a doc may quote as paths or dotted names.
TOP_LEVEL = tuple(
    sorted(
        {p.name for p in ROOT.glob("nanoclaw_*") if p.is_dir()}
        | {"agent_runner", "tests", "schema", "docs", "scripts", "bench"}
    )
)
QUOTED = re.compile(r"`([^`\n]+)`")
TEST_NAME = re.compile(r"^(test_[a-z0-9_]+)(\[[^\]]*\])?$")
PLACEHOLDER = re.compile(r"[<>*…{}]|NNNN")


def quoted(doc: Path) -> list[tuple[int, str]]:
    """(line number, text) of every backticked span in ``doc``."""
    text = doc.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in QUOTED.finditer(text)]


def named_paths(doc: Path) -> list[tuple[int, str]]:
    """Quoted repository paths (``nanoclaw_delivery/engine.py``, ``tests/e2e/``, the script
    of ``scripts/test.sh tests/unit -x``), without a test id after ``::``; paths with
    placeholders such as ``<platform>`` are left out."""
    found = []
    for line, text in quoted(doc):
        path = text.split()[0].split("::")[0].rstrip("/")  # a command's first word
        if "/" in path and path.startswith(TOP_LEVEL) and not PLACEHOLDER.search(path):
            found.append((line, path))
    return found


def named_objects(doc: Path) -> list[tuple[int, str]]:
    """Quoted dotted names that start with a top-level package
    (``nanoclaw_common.store.owner_notices.OwnerNotices``), call parentheses removed."""
    found = []
    for line, text in quoted(doc):
        name = text.split("(")[0]
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+", name) and (
            name.split(".")[0] in TOP_LEVEL
        ):
            found.append((line, name))
    return found


@cache
def defined_names(source: Path) -> dict[str, set[str]]:
    """Top-level names defined in ``source``, each with the names defined in its body (a
    class's methods and attributes)."""
    tree = ast.parse(source.read_text())
    names: dict[str, set[str]] = {}
    for node in tree.body:
        for name in _bound(node):
            inner = {n for child in getattr(node, "body", []) for n in _bound(child)}
            names.setdefault(name, set()).update(inner)
    return names


def _bound(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Assign):
        targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        if targets == ["__all__"] and isinstance(node.value, ast.List | ast.Tuple):
            # A package's lazy exports (``__getattr__``) are named in its ``__all__``.
            targets += [str(e.value) for e in node.value.elts if isinstance(e, ast.Constant)]
        return targets
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    if isinstance(node, ast.ImportFrom):
        return [alias.asname or alias.name for alias in node.names]
    return []


def resolves(name: str) -> bool:
    """Whether a dotted name is a module or package of the tree, or a name defined in one
    (at most two levels: ``module.Class.method``)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if not source.is_file():
            continue
        rest = parts[cut:]
        if not rest:
            return True
        if len(rest) > 2:
            return False
        names = defined_names(source)
        return rest[0] in names and (len(rest) == 1 or rest[1] in names[rest[0]])
    return False


@cache
def known_tests() -> frozenset[str]:
    """Every test function and test module name under ``tests/``."""
    names: set[str] = set()
    for source in (ROOT / "tests").rglob("test_*.py"):
        names.add(source.stem)
        names.update(re.findall(r"^\s*(?:async )?def (test_\w+)", source.read_text(), re.M))
    return frozenset(names)


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_paths_named_in_the_docs_exist(doc: Path) -> None:
    missing = [
        f"{doc.name}:{line}: {path}"
        for line, path in named_paths(doc)
        if not (ROOT / path).exists()
    ]
    assert not missing, "paths the doc names that are not in the tree:\n" + "\n".join(missing)


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_modules_and_names_in_the_docs_exist(doc: Path) -> None:
    missing = [
        f"{doc.name}:{line}: {name}" for line, name in named_objects(doc) if not resolves(name)
    ]
    assert not missing, "dotted names the doc quotes that are not defined:\n" + "\n".join(missing)


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_tests_named_in_the_docs_exist(doc: Path) -> None:
    missing = []
    for line, text in quoted(doc):
        for word in re.split(r"[\s,]+", text):
            match = TEST_NAME.match(word.split("::")[-1].removesuffix(".py"))
            if match and match.group(1) not in known_tests():
                missing.append(f"{doc.name}:{line}: {match.group(1)}")
    assert not missing, "tests the doc names that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_docs_point_nowhere_outside_the_repository(doc: Path) -> None:
    outside = [
        f"{doc.name}:{number}: {line.strip()}"
        for number, line in enumerate(doc.read_text().splitlines(), start=1)
        if re.search(r"\.\./(shared|reference)\b|/work/|\bDESIGN\.md\b", line)
    ]
    assert not outside, "the docs must describe these in their own words:\n" + "\n".join(outside)


def test_the_checks_catch_what_they_look_for(tmp_path: Path) -> None:
    """The checkers themselves: a stale path, a stale name and an outside link are found."""
    doc = tmp_path / "stale.md"
    doc.write_text(
        "`nanoclaw_delivery/engine.py` `nanoclaw_delivery/no_such.py` `tests/e2e/`\n"
        "`nanoclaw_delivery.engine.SessionWorker.drain` `nanoclaw_delivery.engine.Nope`\n"
        "`nanoclaw_common.channels.builtin.build_builtin_adapters(settings)`\n"
    )
    assert [p for _, p in named_paths(doc) if not (ROOT / p).exists()] == [
        "nanoclaw_delivery/no_such.py"
    ]
    assert [n for _, n in named_objects(doc) if not resolves(n)] == [
        "nanoclaw_delivery.engine.Nope"
    ]
