"""The watchdog's I/O helpers: supervisord's event listener protocol over byte streams, RSS
from ``/proc``, and its settings. The whole program under a real supervisord is tested in
tests/integration/watchdog/."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from nanoclaw_common.errors import ConfigError
from nanoclaw_common.settings import Settings
from nanoclaw_watchdog.supervisor import EventListener, ProtocolError, parse_headers
from nanoclaw_watchdog.watchdog import rss_mb

TICK = (
    b"ver:3.0 server:supervisor serial:21 pool:watchdog poolserial:10 eventname:TICK_5 len:15\n"
    b"when:1201063880"
)


def test_ready_an_event_then_ok() -> None:
    stdout = io.BytesIO()
    listener = EventListener(io.BytesIO(TICK + TICK), stdout)
    event = listener.next_event()
    assert event is not None
    assert event.name == "TICK_5"
    assert event.payload == b"when:1201063880"
    assert parse_headers(event.payload.decode()) == {"when": "1201063880"}
    listener.done()
    assert listener.next_event() is not None
    assert stdout.getvalue() == b"READY\nRESULT 2\nOKREADY\n"


def test_a_closed_pipe_ends_the_listener() -> None:
    assert EventListener(io.BytesIO(b""), io.BytesIO()).next_event() is None
    truncated = io.BytesIO(TICK[:-4])  # supervisord went away mid-payload
    assert EventListener(truncated, io.BytesIO()).next_event() is None


@pytest.mark.parametrize(
    "line", [b"garbage\n", b"eventname:TICK_5 len:x\n", b"eventname:TICK_5 len:99999999\n"]
)
def test_a_header_without_a_sane_length_is_a_protocol_error(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        EventListener(io.BytesIO(line), io.BytesIO()).next_event()


def test_rss_of_a_live_process_and_of_none() -> None:
    status = Path("/proc/self/status").read_text()
    [line] = [ln for ln in status.splitlines() if ln.startswith("VmRSS:")]
    own = rss_mb(os.getpid())
    assert own is not None
    assert abs(own - int(line.split()[1]) / 1024) < 50  # same process, a moment later
    assert rss_mb(2**22 + 12345) is None  # above pid_max: no such process


def test_program_maps_from_the_environment(tmp_path: Path) -> None:
    settings = Settings.load(
        {
            "NANOCLAW_HOME": str(tmp_path),
            "NANOCLAW_WATCHDOG_PROGRAM_STALE_S": "sweeper=120, proxy=0",
            "NANOCLAW_WATCHDOG_PROGRAM_RSS_MAX_MB": "podman-api=1024",
            "NANOCLAW_WATCHDOG_STALE_S": "30",
        },
        cwd=tmp_path,
    )
    assert settings.watchdog_program_stale_s == {"sweeper": 120.0, "proxy": 0.0}
    assert settings.watchdog_program_rss_max_mb == {"podman-api": 1024}
    assert settings.watchdog_stale_s == 30.0


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"NANOCLAW_WATCHDOG_PROGRAM_STALE_S": "sweeper"}, "NANOCLAW_WATCHDOG_PROGRAM_STALE_S"),
        ({"NANOCLAW_WATCHDOG_PROGRAM_STALE_S": "sweeper=-1"}, "sweeper must not be negative"),
        ({"NANOCLAW_WATCHDOG_PROGRAM_RSS_MAX_MB": "router=big"}, "watchdog_program_rss_max_mb"),
        ({"NANOCLAW_WATCHDOG_STALE_S": "0"}, "NANOCLAW_WATCHDOG_STALE_S must be positive"),
        ({"NANOCLAW_WATCHDOG_BACKOFF_MAX_S": "10"}, "watchdog_backoff_max_s must be at least"),
    ],
)
def test_bad_watchdog_settings_are_refused_by_name(
    environ: dict[str, str], named: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.load({"NANOCLAW_HOME": str(tmp_path), **environ}, cwd=tmp_path)
