"""The runner's declared dependencies admit only the SDK it is written for: anthropic 2.x,
built on httpx2 (which the provider also imports itself), not the httpx-based 0.x."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SPEC = re.compile(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)$")


def lower_bounds(lines: list[str]) -> dict[str, tuple[int, ...]]:
    """name -> the ``>=`` bound of each plain ``name>=x.y`` requirement line."""
    found: dict[str, tuple[int, ...]] = {}
    for line in lines:
        match = SPEC.match(line.split("#", 1)[0].strip())
        if match:
            found[match[1].lower()] = tuple(int(p) for p in match[2].split("."))
    return found


def release(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version(name))[:3])


def test_the_container_gets_the_sdk_the_runner_is_written_for() -> None:
    bounds = lower_bounds((ROOT / "agent_runner" / "requirements.txt").read_text().splitlines())
    assert bounds["anthropic"] >= (2, 12)
    assert bounds["httpx2"] >= (2, 0)
    # The versions the tests run against satisfy the bounds.
    assert release("anthropic") >= bounds["anthropic"]
    assert release("httpx2") >= bounds["httpx2"]


def test_the_package_asks_for_the_same_sdk() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bounds = lower_bounds(project["dependencies"])
    runner = lower_bounds((ROOT / "agent_runner" / "requirements.txt").read_text().splitlines())
    assert bounds["anthropic"] == runner["anthropic"]
