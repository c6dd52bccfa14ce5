"""Every Python package in the source tree is listed in pyproject.toml (the list is written by
hand because schema/ ships as the package `nanoclaw_schema`), and every console script exists."""

from __future__ import annotations

import ast
import importlib
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = [
    "nanoclaw_common",
    "nanoclaw_router",
    "nanoclaw_delivery",
    "nanoclaw_sweeper",
    "nanoclaw_proxy",
    "nanoclaw_watchdog",
    "nanoclaw_cli",
    "agent_runner",
]


def pyproject() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_is_listed() -> None:
    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for source in SOURCE_ROOTS
        for init in (ROOT / source).rglob("__init__.py")
    }
    missing = found - listed
    assert not missing, f"add these to [tool.setuptools] packages: {sorted(missing)}"
    assert {"nanoclaw_schema", "nanoclaw_schema.central"} <= listed


def test_console_scripts() -> None:
    scripts = pyproject()["project"]["scripts"]
    assert set(scripts) == {
        "nanoclaw",
        "nanoclaw-router",
        "nanoclaw-delivery",
        "nanoclaw-sweeper",
        "nanoclaw-proxy",
        "nanoclaw-watchdog",
        "nanoclaw-agent-runner",
    }
    for target in scripts.values():
        module, _, function = target.partition(":")
        if (ROOT / Path(*module.split("."))).with_suffix(".py").exists():
            assert callable(getattr(importlib.import_module(module), function))


def imported_modules(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.lineno, node.module


def python_files(*roots: str) -> Iterator[tuple[str, ast.AST]]:
    for source in roots:
        for path in sorted((ROOT / source).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text())


def test_only_the_sandbox_package_runs_podman() -> None:
    """The podman command line (an argv starting with "podman") and podman-py are used in
    ``nanoclaw_common/sandbox/`` alone; every program goes through it."""
    found = []
    for name, tree in python_files(*SOURCE_ROOTS):
        if name.startswith("nanoclaw_common/sandbox/"):
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.List | ast.Tuple)
                and node.elts
                and isinstance(node.elts[0], ast.Constant)
                and node.elts[0].value == "podman"
            ):
                found.append(f"{name}:{node.lineno} runs podman")
        found += [
            f"{name}:{line} imports {module}"
            for line, module in imported_modules(tree)
            if module.split(".")[0] == "podman"
        ]
    assert not found


def test_shared_code_imports_no_program() -> None:
    """``nanoclaw_common`` (and the runner) is shared code: it never imports a program's
    package, the admin CLI included."""
    programs = {
        source for source in SOURCE_ROOTS if source not in ("nanoclaw_common", "agent_runner")
    }
    found = [
        f"{name}:{line} imports {module}"
        for name, tree in python_files("nanoclaw_common", "agent_runner")
        for line, module in imported_modules(tree)
        if module.split(".")[0] in programs
    ]
    assert not found
