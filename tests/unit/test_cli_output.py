"""What the CLI prints is safe on the operator's terminal: stored values others chose (a
platform's chat id, a stranger's name, a drop's detail, an agent's reply) reach it with
control characters escaped and never as rich markup, in tables and in ``--json``; files the
terminal chat saves are new 0600 files with safe names in a 0700 folder."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from nanoclaw_cli import cli
from nanoclaw_cli.chat import Terminal
from nanoclaw_cli.downloads import safe_download_name
from nanoclaw_common.channels import cli_protocol as wire
from nanoclaw_common.clock import now_ms
from nanoclaw_common.store import CentralStore
from tests.conftest import SettingsFactory
from tests.delivery_world import Clock, World, opened_world

ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x9b31m\u202e"
MARKUP = "[/][red]x[/red][link=file:///etc]"
RAW = ("\x1b", "\x07", "\x9b", "\u202e")


def invoke(home: Path, *args: str) -> str:
    result = CliRunner(env={"COLUMNS": "250"}).invoke(
        cli, ["--home", str(home), *args], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result.output


def assert_safe(output: str) -> None:
    for char in RAW:
        assert char not in output, repr(output)


@pytest.fixture
def store(home: Path) -> Iterator[CentralStore]:
    invoke(home, "init")
    opened = CentralStore.open(home / "central.db")
    yield opened
    opened.close()


def test_dropped_list_escapes_what_platforms_and_strangers_chose(
    home: Path, store: CentralStore
) -> None:
    store.record_drop(
        "telegram",
        f"-100{ESCAPES}",
        "invalid_input",
        user_id=f"telegram:{MARKUP}",
        sender_name=f"Eve{ESCAPES}",
        detail=f"invalid update {MARKUP}\n2026-01-01 forged {ESCAPES}" + "x" * 10_000,
    )
    table = invoke(home, "dropped", "list")
    assert_safe(table)
    assert "\\x1b]0;pwned\\x07" in table and "[/][red]x[/red]" in table
    assert "forged" in table and len(table) < 5_000  # the detail is capped in the table
    raw = invoke(home, "dropped", "list", "--json")
    assert_safe(raw)
    [record] = json.loads(raw)  # still valid JSON, with the values as stored
    assert record["platform_id"] == f"-100{ESCAPES}"
    assert record["sender_name"] == f"Eve{ESCAPES}"


def test_chat_tables_do_not_read_stored_values_as_markup(home: Path, store: CentralStore) -> None:
    store.create_messaging_group("slack", f"C{MARKUP}", name=f"ops{ESCAPES}", is_group=True)
    table = invoke(home, "chats", "list")
    assert_safe(table)
    assert f"C{MARKUP}" in table


@pytest.fixture
def world(make_settings: SettingsFactory) -> Iterator[World]:
    with opened_world(make_settings(), Clock(now_ms() - 60_000)) as world:
        yield world


def test_deliveries_list_escapes_what_the_agent_wrote(world: World) -> None:
    """The agent writes every byte of an outbound row: its text and its address."""
    world.text(f"hello {ESCAPES} {MARKUP}", channel_type="telegram", platform_id=f"9{ESCAPES}")
    world.drain()
    table = invoke(world.layout.home, "deliveries", "list")
    assert_safe(table)
    assert "\\x1b[2J" in table
    raw = invoke(world.layout.home, "deliveries", "--json")
    assert_safe(raw)
    [line] = json.loads(raw)
    assert line["destination"] == f"telegram:9{ESCAPES}"


def test_the_terminal_chat_shows_replies_escaped_and_saves_files_privately(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "downloads"
    terminal = Terminal(save_dir=folder, interactive=False)
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    folder.mkdir(mode=0o755)
    os.symlink(outside, folder / "passwd")  # planted where the first name would go
    terminal.handle(
        wire.TextFrame(
            id="o1",
            text=f"line one\nline two {ESCAPES}",
            files=[wire.FilePart(name="../../etc/passwd", data=b"secret")],
        )
    )
    out = capsys.readouterr().out
    assert_safe(out)
    assert "assistant> line one\nline two \\x1b]0;pwned" in out  # line breaks kept
    assert outside.read_text() == "keep me"  # the symlink was not followed
    [saved] = [p for p in folder.iterdir() if not p.is_symlink()]
    assert saved.parent == folder and saved.read_bytes() == b"secret"
    assert saved.name == "2-passwd"  # the planted name was taken: the next one
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    # A folder the operator names keeps its mode; files are still 0600.
    chosen = tmp_path / "mine"
    chosen.mkdir(mode=0o755)
    Terminal(save_dir=chosen, interactive=False, private_dir=False).handle(
        wire.TextFrame(id="o2", text="", files=[wire.FilePart(name="a.txt", data=b"1")])
    )
    assert stat.S_IMODE(chosen.stat().st_mode) == 0o755
    assert stat.S_IMODE((chosen / "a.txt").stat().st_mode) == 0o600


def test_safe_download_names() -> None:
    assert safe_download_name("../../etc/passwd") == "passwd"
    assert safe_download_name("..\\..\\boot.ini") == "boot.ini"
    assert safe_download_name("...") == "file" and safe_download_name("") == "file"
    assert safe_download_name(".bashrc") == "bashrc"
    assert len(safe_download_name("a" * 500 + ".txt")) <= 100
    assert safe_download_name("résumé 2026.pdf") == "résumé 2026.pdf"
    assert safe_download_name(f"a{ESCAPES}.txt") == "a_0_pwned_2J_31m_.txt"
