"""Paths, ids, clock, sessions, lifecycle and log redaction."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nanoclaw_common.clock import iso_to_ms, ms_to_iso
from nanoclaw_common.errors import Refused
from nanoclaw_common.ids import is_safe_id, new_id
from nanoclaw_common.lifecycle import GracefulStop
from nanoclaw_common.paths import CONTAINER, Layout
from nanoclaw_common.sessions import ensure_session_files, refresh_projections, session_routing
from nanoclaw_common.store import CentralStore, InboundReader, rows


def test_ids() -> None:
    value = new_id("sess", 1234)
    prefix, stamp, tail = value.split("-")
    assert (prefix, stamp, len(tail)) == ("sess", "1234", 8)
    assert new_id("x") != new_id("x")
    for good in ("sess-1-abc", "m1:ag-1", "out_9.x"):
        assert is_safe_id(good)
    for bad in ("", "..", "a/b", "../x", ".hidden", "a\\b", "x" * 300, "a..b", "with space"):
        assert not is_safe_id(bad)


def test_clock_round_trip() -> None:
    assert ms_to_iso(0) == "1970-01-01T00:00:00.000Z"
    assert iso_to_ms("2026-01-15T09:00:00-05:00") == iso_to_ms("2026-01-15T14:00:00Z")
    with pytest.raises(ValueError, match="no timezone"):
        iso_to_ms("2026-01-15T09:00:00")


def test_layout_refuses_escapes(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    for bad in ("..", "../x", "a/b", ""):
        with pytest.raises(Refused):
            layout.group_dir(bad)
        with pytest.raises(Refused):
            layout.session(bad, "sess-1")
        with pytest.raises(Refused):
            layout.session("ag-1", bad)
    paths = layout.session("ag-1", "sess-1")
    assert paths.outbound_db == tmp_path / "sessions/ag-1/sess-1/agent/outbound.db"
    with pytest.raises(Refused):
        paths.inbox_for("../../etc")
    assert paths.outbox_for("out-1") == paths.agent_dir / "outbox" / "out-1"
    assert CONTAINER.session.inbound_db == Path("/session/inbound.db")
    layout.ensure()
    assert oct(layout.run_dir.stat().st_mode & 0o777) == "0o700"


def test_refresh_projections(central: CentralStore, layout: Layout) -> None:
    group = central.create_agent_group("Main", "main")
    chat = central.create_messaging_group("telegram", "t:1", name="Home")
    central.create_wiring(chat.id, group.id)
    session, _ = central.resolve_session(group.id, chat.id, "th-1", "per-thread")
    paths = ensure_session_files(layout, session)
    assert paths.inbound_db.exists() and paths.outbound_db.exists() and paths.outbox.is_dir()
    refresh_projections(central, layout, session)
    reader = InboundReader(paths.inbound_db)
    assert reader.routing() == rows.Routing("telegram", "t:1", "th-1")
    assert [d.name for d in reader.destinations()] == ["home"]
    reader.close()
    lonely = central.create_session(group.id, None)
    assert session_routing(central, lonely) == rows.Routing(None, None, None)


def test_graceful_stop_first_signal_sets_flag() -> None:
    stop = GracefulStop()
    assert not stop.stopping
    stop.request(signal.SIGTERM)
    assert stop.stopping and stop.signal_number == signal.SIGTERM
    assert stop.wait(0)


def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    """A real process: the first TERM is graceful (the loop keeps control), the second ends it."""
    script = textwrap.dedent(
        """
        import sys, time
        from nanoclaw_common.lifecycle import GracefulStop
        stop = GracefulStop().install()
        print("ready", flush=True)
        stop.wait(30)
        print("graceful", flush=True)
        time.sleep(30)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline().strip() == "graceful"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 130


def test_logs_mask_secrets_and_carry_ids(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        from loguru import logger
        from nanoclaw_common.logs import setup_logging
        setup_logging("router", "INFO", ["sk-ant-secret-value"])
        log = logger.bind(component="ingest")
        log.info("got key {}", "sk-ant-secret-value", session="sess-1", message="m1")
        log.debug("hidden")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "sk-ant-secret-value" not in lines[0]
    assert "router [ingest] got key ***" in lines[0]
    assert lines[0].endswith("(session=sess-1 message=m1)")
