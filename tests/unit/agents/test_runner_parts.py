"""The watcher, the heartbeat, the scripted provider and the proxy's pure parts."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from agent_runner.heartbeat import Heartbeat
from agent_runner.model import ModelError, ModelRequest, Usage, decode_response
from agent_runner.providers.scripted import Script, ScriptedProvider, ScriptTurn
from agent_runner.turn import with_cache_breakpoint
from agent_runner.watch import ChangeWatcher
from nanoclaw_common.store import metering as store_metering
from nanoclaw_proxy import metering
from nanoclaw_proxy.wire import request_token, upstream_headers

from .conftest import Session


def request(text: str = "hi") -> ModelRequest:
    return ModelRequest(
        system=[], tools=[], messages=[{"role": "user", "content": text}], max_tokens=10
    )


def test_watcher_wakes_on_a_commit_from_another_process(session: Session) -> None:
    watcher = ChangeWatcher(session.paths.session.inbound_db)
    try:
        assert watcher.uses_inotify
        assert watcher.wait(0) is False  # nothing happened
        session.chat("hello")
        # The commit's events are queued already: no waiting needed.
        assert watcher.wait(0) is True
        assert watcher.wait(0) is False  # drained
        watcher.poke()
        assert watcher.wait(5) is True
        (session.paths.session.root / "runner.json").write_text("{}")
        assert watcher.wait(0) is False  # other files in the folder do not count
    finally:
        watcher.close()


def test_watcher_waits_out_a_commit_in_progress(session: Session) -> None:
    journal = session.paths.session.root / "inbound.db-journal"
    watcher = ChangeWatcher(session.paths.session.inbound_db)
    try:
        journal.write_bytes(b"x" * 512)  # a writer is mid-commit: reading now would block
        timer = threading.Timer(0.05, journal.unlink)  # ... until its commit point
        started = time.monotonic()
        timer.start()
        assert watcher.wait(5) is True
        assert time.monotonic() - started >= 0.04
        timer.join()
    finally:
        watcher.close()


def test_watcher_falls_back_to_stat_polling(session: Session, tmp_path: Path) -> None:
    watcher = ChangeWatcher(
        session.paths.session.inbound_db, fallback_poll_s=0.001, use_inotify=False
    )
    try:
        assert not watcher.uses_inotify
        assert watcher.wait(0) is False
        session.chat("hello")
        assert watcher.wait(5) is True
        done = threading.Event()

        def poke() -> None:
            watcher.poke()
            done.set()

        threading.Thread(target=poke).start()
        assert watcher.wait(5) is True and done.wait(5)
    finally:
        watcher.close()


def test_heartbeat_touches_its_file(tmp_path: Path) -> None:
    path = tmp_path / "heartbeat"
    beat = Heartbeat(path, interval_s=0.01).start()
    try:
        assert path.exists()
        os.utime(path, ns=(0, 0))
        pause = threading.Event()
        for _ in range(500):  # the thread touches it again within milliseconds
            if path.stat().st_mtime_ns > 0:
                break
            pause.wait(0.01)
        assert path.stat().st_mtime_ns > 0
    finally:
        beat.stop()
    assert not any(t.name == "heartbeat" for t in threading.enumerate())


def test_heartbeat_refuses_to_follow_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    os.utime(target, ns=(0, 0))
    (tmp_path / "heartbeat").symlink_to(target)
    Heartbeat(tmp_path / "heartbeat", 1).touch()
    assert target.stat().st_mtime_ns == 0


def test_scripted_provider_plays_back_the_script() -> None:
    provider = ScriptedProvider(
        Script(
            turns=[
                ScriptTurn(content=[{"type": "tool_use", "name": "bash", "input": {}}]),
                ScriptTurn(content=[{"type": "text", "text": "x"}], expect="needle"),
                ScriptTurn(error="boom"),
            ],
            fallback=ScriptTurn(content=[{"type": "text", "text": "again"}]),
        )
    )
    first = provider.create(request())
    assert first.stop_reason == "tool_use" and first.content[0]["id"] == "toolu_scripted_0_0"
    with pytest.raises(ModelError, match="expected 'needle'"):
        provider.create(request("no match"))
    with pytest.raises(ModelError, match="boom"):
        provider.create(request())
    assert provider.create(request()).text() == "again"
    assert provider.create(request()).stop_reason == "end_turn"
    with pytest.raises(ModelError, match="no response for call 1"):
        ScriptedProvider(Script()).create(request())


def test_decode_response_and_usage() -> None:
    response = decode_response(
        b'{"id":"m","type":"message","role":"assistant","model":"x","content":'
        b'[{"type":"text","text":"a","citations":null},{"type":"server_tool_use","id":"s"}],'
        b'"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":3,'
        b'"output_tokens":4,"cache_read_input_tokens":10,"cache_creation_input_tokens":null}}'
    )
    assert response.text() == "a" and response.content[1]["type"] == "server_tool_use"
    assert response.usage == Usage(3, 4, None, 10) and response.usage.context_tokens == 17
    with pytest.raises(ModelError, match="could not read"):
        decode_response(b"<html>")


def test_cache_breakpoint_goes_on_a_copy_of_the_last_block() -> None:
    history = [{"role": "user", "content": "plain"}]
    marked = with_cache_breakpoint(history)
    assert marked[-1]["content"] == [
        {"type": "text", "text": "plain", "cache_control": {"type": "ephemeral"}}
    ]
    assert history == [{"role": "user", "content": "plain"}]


def test_proxy_token_extraction_and_header_scrubbing() -> None:
    assert request_token({"x-api-key": " tok "}) == "tok"
    assert request_token({"authorization": "Bearer abc"}) == "abc"
    assert request_token({"authorization": "Basic abc"}) is None
    assert request_token({}) is None
    headers = upstream_headers(
        {
            "Authorization": "Bearer tok",
            "X-Api-Key": "tok",
            "Cookie": "c",
            "Host": "proxy",
            "Connection": "keep-alive",
            "Accept-Encoding": "gzip",
            "anthropic-version": "2023-06-01",
            "anthropic-beta": "x",
        },
        "sk-real",
    )
    assert headers == {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "x",
        "x-api-key": "sk-real",
        "accept-encoding": "identity",
    }


def test_meter_reads_sse_split_anywhere() -> None:
    stream = (
        b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
        b'{"input_tokens":25,"cache_read_input_tokens":100,"output_tokens":1}}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":15}}\r\n\r\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    for size in (1, 7, len(stream)):
        meter = metering.UsageMeter("text/event-stream; charset=utf-8")
        for start in range(0, len(stream), size):
            meter.feed(stream[start : start + size])
        usage = meter.finish()
        assert usage is not None
        assert (usage.total_input, usage.output_tokens) == (125, 15)


def test_meter_reads_json_and_ignores_errors() -> None:
    meter = metering.UsageMeter("application/json")
    meter.feed(b'{"usage":{"input_tokens":5,')
    meter.feed(b'"output_tokens":2,"cache_creation_input_tokens":3}}')
    usage = meter.finish()
    assert usage is not None and (usage.total_input, usage.output_tokens) == (8, 2)
    error = metering.UsageMeter("application/json")
    error.feed(b'{"type":"error","error":{"type":"overloaded_error"}}')
    assert error.finish() is None


def test_budget_rules() -> None:
    assert store_metering.effective_budget(None, 500) == 500
    assert store_metering.effective_budget(0, 500) == 0  # the group's own "unlimited" wins
    assert store_metering.effective_budget(100, 0) == 100
    assert not metering.over_budget(10**9, 0)
    assert metering.over_budget(100, 100) and not metering.over_budget(99, 100)
    assert store_metering.utc_day(1_768_485_660_000) == "2026-01-15"
    assert metering.seconds_to_next_utc_day(1_768_485_660_000) == 35_940
    message = metering.budget_message(
        "Family",
        "family",
        used_tokens=1234,
        reserved_tokens=300,
        needed=500,
        budget=1000,
        now_ms=1_768_485_660_000,
    )
    assert "1,234 of 1,000 tokens used today, 300 more held by calls in progress" in message
    assert "could use up to 500 more" in message and "(in 9 h 59 min)" in message
    assert "nanoclaw groups config family --budget TOKENS" in message
    assert metering.estimate_input_tokens(4001) == 1001
