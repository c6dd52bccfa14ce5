"""`nanoclaw up` / `down` / `ctl` without a running supervisord (the real one runs in
tests/e2e/test_supervised.py)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from nanoclaw_cli import cli
from nanoclaw_cli.service import find_config, program_states


def invoke(home: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--home", str(home), *args])
    return result.exit_code, result.output


def test_supervisorctl_status_lines_are_parsed() -> None:
    output = (
        "delivery                         RUNNING   pid 4242, uptime 0:00:05\n"
        "podman-api                       RUNNING   pid 4240, uptime 0:00:06\n"
        "proxy                            FATAL     Exited too quickly (process log may have"
        " details)\n"
        "router                           BACKOFF   Exited too quickly\n"
        "unix:///tmp/x/run/supervisor.sock no such file\n"
    )
    assert program_states(output) == {
        "delivery": "RUNNING",
        "podman-api": "RUNNING",
        "proxy": "FATAL",
        "router": "BACKOFF",
    }


def test_the_checkout_config_is_found_from_anywhere(tmp_path: Path) -> None:
    # The test virtualenv lives in the checkout, like a user's.
    assert find_config(None) == (Path(__file__).parents[2] / "supervisord.conf").resolve()
    explicit = tmp_path / "mine.conf"
    explicit.write_text("[supervisord]\n")
    assert find_config(str(explicit)) == explicit.resolve()


def test_up_needs_init_and_a_config(tmp_path: Path) -> None:
    code, output = invoke(tmp_path / "data", "up")
    assert code == 1 and "run `nanoclaw init` first" in output
    code, output = invoke(tmp_path / "data", "up", "--config", str(tmp_path / "none.conf"))
    assert code == 1 and "no supervisord.conf at" in output


def test_down_when_nothing_runs(tmp_path: Path) -> None:
    assert invoke(tmp_path / "data", "down") == (0, "not running\n")
