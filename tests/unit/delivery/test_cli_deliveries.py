"""``nanoclaw deliveries``: list (with --failed), retry and purge, as people and scripts see it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from nanoclaw_cli import cli
from nanoclaw_common.clock import now_ms
from nanoclaw_common.errors import PermanentFailure
from tests.conftest import SettingsFactory
from tests.delivery_world import Clock, World, opened_world


def invoke(world: World, *args: str) -> Any:
    result = CliRunner(env={"COLUMNS": "250"}).invoke(
        cli, ["--home", str(world.layout.home), *args]
    )
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def world(make_settings: SettingsFactory) -> Iterator[World]:
    """Times near the real clock: ``purge --older-than`` measures from now."""
    with opened_world(make_settings(), Clock(now_ms() - 60_000)) as world:
        yield world


def seeded(world: World) -> dict[str, str]:
    ok = world.text("all good").id
    world.drain()
    world.telegram.failures.append(PermanentFailure("chat not found"))
    failed = world.text("this one fails").id
    denied = world.text("psst", channel_type="telegram", platform_id="200").id
    world.drain()
    return {"ok": ok, "failed": failed, "denied": denied}


def test_list_all_and_problems(world: World) -> None:
    ids = seeded(world)
    every = json.loads(invoke(world, "deliveries", "--json"))
    assert {line["message_out_id"]: line["status"] for line in every} == {
        ids["ok"]: "delivered",
        ids["failed"]: "failed",
        ids["denied"]: "denied",
    }
    problems = json.loads(invoke(world, "deliveries", "list", "--failed", "--json"))
    assert {line["message_out_id"] for line in problems} == {ids["failed"], ids["denied"]}
    denied = next(line for line in problems if line["status"] == "denied")
    assert denied["destination"] == "telegram:200"
    assert denied["preview"] == "psst"
    assert "no destination grants" in denied["last_error"]
    table = invoke(world, "deliveries", "list", "--failed")
    assert "chat not found" in table
    only = json.loads(invoke(world, "deliveries", "list", "--status", "delivered", "--json"))
    assert [line["message_out_id"] for line in only] == [ids["ok"]]


def test_retry_sends_again(world: World) -> None:
    ids = seeded(world)
    out = invoke(world, "deliveries", "retry", ids["failed"])
    assert "will be sent again" in out
    assert world.delivery(ids["failed"]).status == "retry"
    world.clock.value = now_ms() + 1_000  # the CLI made it due at the real clock's now
    world.drain()
    assert world.delivery(ids["failed"]).status == "delivered"
    assert world.telegram.texts("100") == ["all good", "this one fails"]
    result = CliRunner().invoke(
        cli, ["--home", str(world.layout.home), "deliveries", "retry", ids["ok"]]
    )
    assert result.exit_code != 0 and "not failed or denied" in result.output
    result = CliRunner().invoke(
        cli, ["--home", str(world.layout.home), "deliveries", "retry", "nope"]
    )
    assert result.exit_code != 0 and "no delivery nope" in result.output


def test_purge_forgets_old_problems_but_keeps_the_watermark(world: World) -> None:
    ids = seeded(world)
    assert json.loads(invoke(world, "deliveries", "purge", "--json")) == {"removed": 0}
    assert json.loads(invoke(world, "deliveries", "purge", "--older-than", "10s", "--json")) == {
        "removed": 1
    }
    left = {line["message_out_id"] for line in json.loads(invoke(world, "deliveries", "--json"))}
    assert left == {ids["ok"], ids["denied"]}  # denied is the newest: the watermark stays
    world.drain()  # nothing is sent again
    assert world.telegram.texts("100") == ["all good"]
