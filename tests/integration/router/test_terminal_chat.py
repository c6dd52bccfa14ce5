"""The terminal chat end to end: ``nanoclaw chat`` → router (real process) → a stand-in
agent → delivery (real process) → back to the terminal over ``run/cli-chat.sock``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanoclaw_common.channels import cli_protocol as wire
from nanoclaw_common.channels.cli import CliAdapter
from nanoclaw_common.errors import RetryLater
from nanoclaw_common.paths import Layout
from nanoclaw_common.store import CentralStore, InboundReader
from tests.integration.router.conftest import REPO, Delivery, RouterProcess, World
from tests.integration.router.standin_agent import StandinAgent
from tests.waiting import wait_until, wait_until_async

BIN = Path(sys.executable).parent


def nanoclaw(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "nanoclaw"), *args],
        check=False,
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_chat_message_gets_the_reply_and_exits(
    world: World, router: RouterProcess, short_home: Path
) -> None:
    env = {**router.env, "NANOCLAW_DELIVERY_BACKOFF_BASE_S": "0.2"}
    assert nanoclaw(env, "init").returncode == 0
    router.start()
    delivery = Delivery(short_home, env)
    agent = StandinAgent(short_home).start()
    try:
        # No terminal attached yet: the reply cannot be delivered, and is not marked so.
        asyncio.run(send_without_terminal(Layout(short_home)))
        wait_until(lambda: agent.answered, timeout_s=15.0, what="the agent's first answer")
        wait_until(
            lambda: delivery_states(short_home) == {"retry"}, timeout_s=15.0, what="a pending retry"
        )

        done = nanoclaw(env, "chat", "--message", "hello there", "--timeout", "30")
        assert done.returncode == 0, done.stderr + router.log()
        lines = done.stdout.splitlines()
        # The earlier reply arrives once a terminal is attached, then this turn's reply.
        assert "assistant> echo: sent while away" in lines
        assert "assistant> echo: hello there" in lines
        assert delivery_states(short_home) == {"delivered"}
    finally:
        agent.stop()
        assert delivery.stop() == 0
        assert router.stop() == 0


async def send_without_terminal(layout: Layout) -> None:
    reader, writer = await asyncio.open_unix_connection(str(wire.router_socket(layout)))
    writer.write(wire.encode_line(wire.SendMessage(id="cli-away-1", text="sent while away")))
    await writer.drain()
    answer = wire.decode_answer(await reader.readline())
    writer.close()
    assert answer == wire.Ack(id="cli-away-1")


def delivery_states(home: Path) -> set[str]:
    central = CentralStore(home / "central.db")
    try:
        states: set[str] = set()
        for session in central.list_sessions():
            reader = InboundReader(
                home / "sessions" / session.agent_group_id / session.id / "inbound.db"
            )
            try:
                states |= {d.status for d in reader.list_deliveries()}
            finally:
                reader.close()
        return states
    finally:
        central.close()


def test_a_terminal_that_is_not_there_is_a_retryable_failure(short_home: Path) -> None:
    adapter = CliAdapter(Layout(short_home), frame_timeout_s=0.5)

    async def main() -> None:
        with pytest.raises(RetryLater):
            await adapter.send_text("local", None, "anyone?")
        # A listener that never confirms is no better.
        path = wire.chat_socket(Layout(short_home))
        path.parent.mkdir(parents=True, exist_ok=True)

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.close()

        server = await asyncio.start_unix_server(silent, path=str(path))
        try:
            with pytest.raises(RetryLater):
                await adapter.send_text("local", None, "hello?")
        finally:
            server.close()

    asyncio.run(main())


def test_a_newer_terminal_supersedes_the_older(world: World, router: RouterProcess) -> None:
    env = router.env
    first = subprocess.Popen(
        [str(BIN / "nanoclaw"), "chat"],
        env=env,
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    layout = Layout(Path(env["NANOCLAW_HOME"]))
    wait_until(
        lambda: wire.chat_socket(layout).exists(), timeout_s=15.0, what="the first client's socket"
    )
    second = subprocess.Popen(
        [str(BIN / "nanoclaw"), "chat"],
        env=env,
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.wait(timeout=20) == 1
        assert first.stdout is not None
        assert "[superseded by a newer client]" in first.stdout.read()
        first.stdout.close()
        assert first.stdin is not None
        first.stdin.close()
        wait_until(
            lambda: wire.chat_socket(layout).exists(),
            timeout_s=15.0,
            what="the second client's socket",
        )
        adapter = CliAdapter(layout)
        frame_id = asyncio.run(adapter.send_text("local", None, "to the new one"))
        assert frame_id is not None
    finally:
        out2, _ = second.communicate(input="", timeout=20)
    assert "assistant> to the new one" in out2


def test_registration_answered_in_the_terminal(world: World, router: RouterProcess) -> None:
    """The terminal is not wired yet: the owner gets the registration card in the terminal
    itself, answers with a number, and the first message is replayed to the agent."""
    group = world.group("Helper")
    world.central.upsert_user("cli:local", "cli", "me")
    world.central.grant_role("cli:local", "owner")
    router.start()
    client = subprocess.Popen(
        [str(BIN / "nanoclaw"), "chat"],
        env=router.env,
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdin is not None and client.stdout is not None
    try:
        wait_until(
            lambda: wire.chat_socket(Layout(world.home)).exists(),
            timeout_s=15.0,
            what="the client's socket",
        )
        client.stdin.write("hello, anyone?\n")
        client.stdin.flush()
        lines: list[str] = []
        while not any(line.startswith("  1. Connect to Helper") for line in lines):
            line = client.stdout.readline()
            assert line, "the client ended before the card arrived"
            lines.append(line.rstrip("\n"))
        client.stdin.write("1\n")
        client.stdin.flush()
        wait_until(lambda: len(world.all_rows()) == 1, timeout_s=15.0, what="the replayed message")
    finally:
        client.stdin.close()
        lines += client.stdout.read().splitlines()
        client.stdout.close()
        client.wait(20)
    assert router.stop() == 0
    [row] = world.all_rows()
    assert row.id.endswith(f":{group.id}") and row.platform_id == "local"
    assert any("New direct message" in line for line in lines)


class FakeClock:
    """``time.monotonic`` and ``asyncio.sleep`` for the chat client: sleeping moves the
    clock instead of waiting (the loop still turns, so the router keeps working)."""

    def __init__(self) -> None:
        self.now_s = 1_000.0
        self.slept_s = 0.0

    def __call__(self) -> float:
        return self.now_s

    async def sleep(self, delay_s: float) -> None:
        self.now_s += delay_s
        self.slept_s += delay_s
        await asyncio.sleep(0)


def test_chat_message_gives_up_after_its_timeout(
    short_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The router takes the message (a committed row) but no agent ever answers: after
    ``--timeout`` the client says so and exits 1. No real time passes waiting for it."""
    from nanoclaw_cli.chat import run_chat
    from nanoclaw_common.settings import Settings
    from nanoclaw_common.store.async_central import AsyncCentral
    from nanoclaw_router.app import Router
    from tests.fakes.recording import MemoryWaker

    settings = Settings(home=str(short_home), install_id="test").validate()
    layout = Layout(short_home)
    layout.ensure()
    central = CentralStore.open(layout.central_db)
    group = central.create_agent_group("Main", central.unique_folder("Main"))
    chat = central.create_messaging_group("cli", "local", unknown_sender_policy="public")
    central.create_wiring(chat.id, group.id, engage_mode="pattern", engage_pattern=".")
    clock = FakeClock()

    doors = AsyncCentral(layout.central_db)

    async def main() -> int:
        router = Router(
            settings, doors, {"cli": CliAdapter(layout)}, MemoryWaker(layout.central_db)
        )
        await router.start()
        try:
            await wait_until_async(
                wire.router_socket(layout).exists, timeout_s=10, what="the router's socket"
            )
            return await run_chat(
                layout,
                doors,
                "anyone?",
                7.5,
                short_home / "downloads",
                clock=clock,
                sleep=clock.sleep,
            )
        finally:
            await router.stop()

    try:
        started = time.monotonic()
        code = asyncio.run(main())
        elapsed = time.monotonic() - started
        [session] = central.list_sessions()  # the router took it: a session and a row
    finally:
        doors.close()
        central.close()
    assert code == 1
    assert capsys.readouterr().err.strip().endswith("no complete reply within 7.5s")
    assert clock.slept_s > 7.4  # polled until the (fake) deadline
    assert elapsed < 7.5  # the client never really waited its timeout out
    assert session.agent_group_id == group.id
