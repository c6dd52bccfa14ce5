"""Every Python package in the source tree is listed in pyproject.toml (the list is written by
hand because schema/ ships as the package `nanoclaw_schema`), and every console script exists."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = [
    "nanoclaw_common",
    "nanoclaw_router",
    "nanoclaw_delivery",
    "nanoclaw_sweeper",
    "nanoclaw_proxy",
    "nanoclaw_watchdog",
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
