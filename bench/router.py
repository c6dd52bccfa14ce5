"""Router figures: ingest throughput across 100 sessions, and the router process's RSS.

``throughput``: the router's real ingest path (chat lookup, routing plan, session resolve,
idempotent insert with group commit per session, projection refresh before each wake) in
one process, with the wake stubbed (a waker that returns True). 100 chats are wired to one
agent group, so 100 sessions; one producer per chat sends its messages one after another,
each waiting for its commit, as an adapter does before acknowledging. We count rows
committed per second after a warm-up, and each message's time from ``on_event`` to the
commit (what a platform waits for its acknowledgement).

``rss``: ``nanoclaw-router`` as a real process with the terminal chat, Telegram (fake Bot
API, long polling) and Slack (fake, Socket Mode) channels running; RSS after start-up and
after 300 messages through each platform.

    .venv/bin/python bench/router.py throughput [--chats 100] [--messages 20000] [--rounds 3]
    .venv/bin/python bench/router.py rss
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nanoclaw_common.channels.common import make_event  # noqa: E402
from nanoclaw_common.clock import now_ms  # noqa: E402
from nanoclaw_common.logs import setup_logging  # noqa: E402
from nanoclaw_common.paths import Layout  # noqa: E402
from nanoclaw_common.settings import Settings  # noqa: E402
from nanoclaw_common.store import CentralStore  # noqa: E402
from nanoclaw_common.store.async_central import AsyncCentral  # noqa: E402
from nanoclaw_common.store.rows import Session  # noqa: E402
from nanoclaw_router.app import Router  # noqa: E402
from tests.environ import clean_environ  # noqa: E402


class StubWaker:
    def wake(self, session: Session) -> bool:
        return True


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def wire_chats(layout: Layout, chats: int) -> None:
    """One agent group, ``chats`` chats wired to it (every message engages)."""
    central = CentralStore.open(layout.central_db)
    try:
        group = central.create_agent_group("Bench", "bench")
        for n in range(chats):
            chat = central.create_messaging_group(
                "bench", f"chat{n}", is_group=True, unknown_sender_policy="public"
            )
            central.create_wiring(chat.id, group.id, engage_mode="pattern", engage_pattern=".")
    finally:
        central.close()


async def one_round(
    home: Path, chats: int, messages: int, warmup: int, window: int
) -> tuple[float, list[float]]:
    layout = Layout(home)
    layout.ensure()
    # Off the loop, as in the router: async code reaches central.db through AsyncCentral.
    await asyncio.to_thread(wire_chats, layout, chats)
    central = AsyncCentral(layout.central_db)
    settings = Settings(home=str(home), install_id="bench", log_level="WARNING")
    router = Router(settings, central, {}, StubWaker())
    latencies: list[float] = []
    per_chat = messages // chats

    async def send(n: int, i: int, offset: int, record: bool) -> None:
        event = make_event(
            channel_type="bench",
            platform_id=f"chat{n}",
            message_id=f"m{offset + i}-{n}",
            sender_id=f"bench:user{n}",
            sender_name=f"user {n}",
            text=f"message {i} from chat {n}: " + "lorem ipsum " * 8,
            timestamp_ms=now_ms(),
            is_group=True,
        )
        started = time.perf_counter()
        await router.on_event(event)
        if record:
            latencies.append(time.perf_counter() - started)

    async def producer(n: int, count: int, offset: int, record: bool) -> None:
        # Like a platform handing over a batch (a getUpdates page, concurrent Slack
        # envelopes): up to `window` messages of this chat in flight, in order.
        for first in range(0, count, window):
            await asyncio.gather(
                *(send(n, i, offset, record) for i in range(first, min(count, first + window)))
            )

    # Warm-up: creates the 100 sessions and their files, fills caches.
    await asyncio.gather(*(producer(n, warmup // chats, 0, False) for n in range(chats)))
    await router.wakes.idle()
    before = router.writer.committed_rows
    started = time.perf_counter()
    await asyncio.gather(*(producer(n, per_chat, 10_000_000, True) for n in range(chats)))
    elapsed = time.perf_counter() - started
    committed = router.writer.committed_rows - before
    transactions = router.writer.transactions
    await router.stop()
    await asyncio.to_thread(central.close)
    rate = committed / elapsed
    print(
        f"  {committed} rows in {elapsed:.2f}s = {rate:,.0f}/s "
        f"({transactions} transactions in all, {len(central_sessions(home))} sessions)"
    )
    return rate, latencies


def central_sessions(home: Path) -> list[str]:
    return [p.name for p in (home / "sessions").glob("*/*") if p.is_dir()]


def throughput(args: argparse.Namespace) -> None:
    rates: list[float] = []
    latencies: list[float] = []
    for n in range(args.rounds):
        root = Path(tempfile.mkdtemp(prefix="ncbench-", dir=REPO / "bench"))
        try:
            print(f"round {n + 1}:")
            rate, round_latencies = asyncio.run(
                one_round(root / "data", args.chats, args.messages, args.warmup, args.window)
            )
            rates.append(rate)
            latencies += round_latencies
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print(
        f"ingest: median {statistics.median(rates):,.0f} rows/s over {args.rounds} rounds "
        f"(min {min(rates):,.0f}, max {max(rates):,.0f}); commit latency per message "
        f"p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms"
    )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def rss(args: argparse.Namespace) -> None:
    from tests.fakes.slack_api import APP_TOKEN, BOT_TOKEN, FakeSlack
    from tests.fakes.telegram_api import FakeTelegram

    root = Path(tempfile.mkdtemp(prefix="nc-", dir="/tmp"))
    home = root / "d"
    telegram, slack = FakeTelegram().start(), FakeSlack().start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        central = CentralStore.open(home / "central.db") if home.mkdir() is None else None
        assert central is not None
        group = central.create_agent_group("Bench", "bench")
        for channel, platform in (("telegram", "-100"), ("slack", "C1"), ("cli", "local")):
            chat = central.create_messaging_group(channel, platform, unknown_sender_policy="public")
            central.create_wiring(chat.id, group.id, engage_mode="pattern", engage_pattern=".")
        env = {
            **clean_environ("SLACK_"),
            "NANOCLAW_HOME": str(home),
            "NANOCLAW_ENV_FILE": str(home / "none"),
            "NANOCLAW_LOG_LEVEL": "WARNING",
            "NANOCLAW_TEST_WAKE_LOG": str(home / "wakes.log"),
            "TELEGRAM_BOT_TOKEN": telegram.token,
            "TELEGRAM_API_BASE_URL": telegram.base_url,
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_APP_TOKEN": APP_TOKEN,
            "SLACK_API_BASE_URL": slack.api_url,
        }
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "nanoclaw-router")], env=env, cwd=REPO
        )
        deadline = time.monotonic() + 30
        while slack.connections() < 1 or not (home / "run" / "cli.sock").exists():
            if time.monotonic() > deadline:
                raise RuntimeError("router did not connect")
            time.sleep(0.05)
        time.sleep(2)
        idle = rss_kib(proc.pid)
        for n in range(300):
            telegram.push_message(-100, f"message {n}")
            slack.push_socket_event(slack.message_event("C1", f"message {n}"))
        deadline = time.monotonic() + 60
        while telegram.pending_updates() or slack.unacked():
            if time.monotonic() > deadline:
                raise RuntimeError("messages not acknowledged")
            time.sleep(0.05)
        time.sleep(2)
        busy = rss_kib(proc.pid)
        print(
            f"router RSS with cli + telegram + slack: {idle / 1024:.1f} MiB after start-up, "
            f"{busy / 1024:.1f} MiB after 600 messages"
        )
        central.close()
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        telegram.stop()
        slack.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    setup_logging("bench", "WARNING")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    tp = sub.add_parser("throughput")
    tp.add_argument("--chats", type=int, default=100)
    tp.add_argument("--messages", type=int, default=20_000)
    tp.add_argument("--warmup", type=int, default=1_000)
    tp.add_argument("--rounds", type=int, default=3)
    tp.add_argument("--window", type=int, default=10, help="messages in flight per chat")
    sub.add_parser("rss")
    args = parser.parse_args()
    if args.what == "throughput":
        throughput(args)
    else:
        rss(args)


if __name__ == "__main__":
    main()
