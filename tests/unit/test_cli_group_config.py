"""``nanoclaw groups config`` and the budgets in ``nanoclaw status``, through click's runner
with a real data folder."""

from __future__ import annotations

import json
import time
from pathlib import Path

from click.testing import CliRunner

from nanoclaw_cli import cli
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.metering import utc_day
from tests.central_verbs import add_token_usage


def run(home: Path, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def test_the_default_budget_is_finite_and_reported(tmp_path: Path) -> None:
    home = tmp_path / "data"
    run(home, "init")
    store = CentralStore.open(home / "central.db")
    (group,) = store.list_agent_groups()
    add_token_usage(store, group.id, utc_day(int(time.time() * 1000)), 1200, 34)
    store.close()
    status = json.loads(run(home, "status", "--json"))
    (budget,) = status["token_budgets"]
    assert budget["budget_daily"] == 5_000_000 and budget["used_today"] == 1234
    assert budget["budget_source"].startswith("default")
    assert "main: 1,234 of 5,000,000 tokens today" in run(home, "status")
    shown = json.loads(run(home, "groups", "config", "main", "--budget", "0", "--json"))
    assert shown["budget_daily"] == 0 and shown["left_today"] is None
    assert "unlimited" in run(home, "status")
    back = json.loads(run(home, "groups", "config", "main", "--default-budget", "--json"))
    assert back["budget_daily"] == 5_000_000


def test_capabilities_are_shown_and_changed(tmp_path: Path) -> None:
    home = tmp_path / "data"
    run(home, "init")
    shown = json.loads(run(home, "groups", "config", "main", "--json"))
    assert (shown["web_search"], shown["web_fetch"], shown["mcp_connector"]) == (True, True, False)
    assert "Web access is on" in run(home, "groups", "config", "main")
    changed = json.loads(
        run(
            home,
            "groups",
            "config",
            "main",
            "--no-web-search",
            "--web-domains",
            "docs.python.org, example.com",
            "--server-tool",
            "code_execution",
            "--allow-beta",
            "files-api-2025-04-14",
            "--json",
        )
    )
    assert changed["web_search"] is False and changed["web_fetch"] is True
    assert changed["web_domains"] == ["docs.python.org", "example.com"]
    assert changed["server_tools"] == ["code_execution"]
    assert changed["allowed_betas"] == ["files-api-2025-04-14"]
    cleared = json.loads(
        run(home, "groups", "config", "main", "--any-domain", "--no-server-tools", "--json")
    )
    assert cleared["web_domains"] == [] and cleared["server_tools"] == []
    assert "unknown server tool" in run(
        home, "groups", "config", "main", "--server-tool", "teleport", code=1
    )
