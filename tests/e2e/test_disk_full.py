"""A full disk loses nothing (issue 9 §4): the whole assistant under real supervisord, its
data folder on a small tmpfs of its own that a filler file fills to the last block.

While the disk is full, messages keep arriving from the terminal, a webhook and Telegram, and
a reply the terminal has shown is waiting for its receipt. None of them is acknowledged unless
it is committed (a webhook gets a non-2xx answer, Telegram's offset does not pass the update,
the terminal's message is re-sent); delivery keeps the reply it could not record and does not
send it again; no program crashes or is restarted. Once the filler is gone, every message is
answered exactly once, and the owner has had exactly one notice about the full disk. Run
twice: with the free-space floor (every container is stopped when the disk fills, a turn cut
short is retried by a new run) and without it (the runners wait on the full disk, and the
sweeper does not take a waiting runner for a hung one).

The programs' logs are on a second small tmpfs (``data/logs``), so what they wrote during the
episode can be read: on one disk, supervisord simply drops the lines it cannot write.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest

from nanoclaw_common.store import CentralStore, InboundReader
from nanoclaw_common.store.rows import AgentGroup, InboundRow, Session
from tests.entities import wire_platform_chat
from tests.environ import AGENT_IMAGE
from tests.fakes import webhook_client
from tests.fakes.anthropic_api import FakeAnthropic, text
from tests.fakes.telegram_api import FakeTelegram
from tests.stack import AFTER_SHOW, Stack, TerminalClient
from tests.waiting import wait_until

pytestmark = [pytest.mark.podman]

API_KEY: Final = "sk-ant-api03-NANOCLAW-DISKFULL-" + "f7D" * 12
WEBHOOK_SECRET: Final = "diskfull-webhook-secret-" + "w" * 16
WEBHOOK_SOURCE: Final = "ci"
TELEGRAM_CHAT: Final = -1009
DATA_MB: Final = 96
LOGS_MB: Final = 32
FLOOR_MB: Final = 8
FULL_FOR_S: Final = 25.0  # how long the disk stays full while messages arrive
PER_CHANNEL: Final = 3  # messages per channel sent while full
FLOOR_NOTICE: Final = "NanoClaw: the disk of the data folder has only"
_POLL_S: Final = 0.1
MAX_LINES_WHILE_FULL: Final = 40  # per program; the old delivery wrote ~1,000 a second
RESEND_S: Final = 3.0  # a webhook sender's retry interval (within the source's rate limit)


def responder(body: dict[str, Any]) -> dict[str, Any]:
    """Every model call: each message of the batch echoed to its chat (``echo: <text>``),
    except a webhook's (a webhook cannot be written to): that is noted in the scratchpad."""
    prompt = json.dumps(body["messages"][-1]["content"])
    replies = []
    for origin, said in re.findall(r'from=\\"([^"\\]+)\\"[^>]*>([^<>]*)</message>', prompt):
        if origin.startswith("webhook"):
            continue
        replies.append(f'<message to="{origin}">echo: {said.strip()}</message>')
    return text("\n".join(replies) or "noted")


def mount_tmpfs(path: Path, size_mb: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
        check=True,
    )


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(path: Path) -> None:
    """Take every free block of ``path``'s filesystem into one file (``fallocate``, then
    ``dd`` for what rounding left)."""
    stats = os.statvfs(path.parent)
    free = stats.f_bavail * stats.f_frsize
    subprocess.run(["fallocate", "-l", str(max(free - 4096, 4096)), str(path)], check=False)
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={path}", "bs=4096", "oflag=append", "conv=notrunc"],
        check=False,
        capture_output=True,
    )
    left = os.statvfs(path.parent)
    assert left.f_bavail == 0, f"{left.f_bavail} blocks still free"


@dataclass
class Webhooks:
    """A sender that retries each delivery until it gets a 2xx, as CI systems do; every
    answer it got is kept, with whether the row was in ``inbound.db`` at that moment."""

    url: str
    committed: Callable[[str], bool]
    answers: dict[str, list[tuple[int, bool]]] = field(default_factory=dict)
    _threads: list[threading.Thread] = field(default_factory=list)

    def send(self, delivery: str, timeout_s: float) -> None:
        self.answers[delivery] = []
        thread = threading.Thread(target=self._run, args=(delivery, timeout_s), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _run(self, delivery: str, timeout_s: float) -> None:
        body = json.dumps({"build": delivery}).encode()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            headers = webhook_client.nanoclaw_headers(
                WEBHOOK_SECRET, body, event="build", delivery=delivery
            )
            try:
                status, _ = webhook_client.post(self.url, body, headers)
            except OSError:
                time.sleep(1.0)
                continue
            self.answers[delivery].append((status, self.committed(delivery)))
            if 200 <= status < 300:
                return
            time.sleep(RESEND_S)

    def done(self) -> bool:
        return all(any(200 <= s < 300 for s, _ in got) for got in self.answers.values())


@dataclass
class FullDiskStack:
    stack: Stack
    fake_api: FakeAnthropic
    telegram: FakeTelegram
    terminal: TerminalClient
    main: AgentGroup
    webhook_url: str
    floor_mb: int

    def inbound_rows(self) -> list[InboundRow]:
        """Every ``messages_in`` row of every session of the stack."""
        found: list[InboundRow] = []
        for db in self.stack.layout.sessions_dir.glob("*/*/inbound.db"):
            reader = InboundReader(db)
            try:
                found += reader.list_messages(limit=100_000)
            finally:
                reader.close()
        return found

    def sessions(self) -> list[Session]:
        with contextlib.closing(CentralStore.open(self.stack.layout.central_db)) as central:
            return central.list_sessions()

    def cli_chat_id(self) -> str:
        with contextlib.closing(CentralStore.open(self.stack.layout.central_db)) as central:
            chat = central.find_messaging_group("cli", "local")
        assert chat is not None
        return chat.id

    def open_deliveries(self) -> int:
        """Delivery records of every session not settled yet (pending, sending, retry)."""
        count = 0
        for db in self.stack.layout.sessions_dir.glob("*/*/inbound.db"):
            reader = InboundReader(db)
            try:
                count += sum(
                    d.status not in ("delivered", "failed", "denied")
                    for d in reader.list_deliveries()
                )
            finally:
                reader.close()
        return count

    def inbound_ids(self) -> list[str]:
        return [row.id for row in self.inbound_rows()]

    def status(self, row_id: str) -> str | None:
        return next((row.status for row in self.inbound_rows() if row.id == row_id), None)


@pytest.fixture(params=[FLOOR_MB, 0], ids=["floor", "no-floor"])
def full_disk_stack(request: pytest.FixtureRequest) -> Iterator[FullDiskStack]:
    """With the free-space floor (``disk_min_free_mb``, here 8 MB: every container is
    stopped when the disk fills) and without it (0: the runners wait on the full disk)."""
    floor_mb = int(request.param)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    if subprocess.run(["podman", "image", "exists", AGENT_IMAGE], check=False).returncode:
        pytest.fail(f"the agent image {AGENT_IMAGE} is missing: `nanoclaw image build`")
    fake_api = FakeAnthropic(api_key=API_KEY, responder=responder).start()
    telegram = FakeTelegram().start()
    stack = Stack.create(api_url=fake_api.url, api_key=API_KEY, prefix="nc-full-")
    mount_tmpfs(stack.home, DATA_MB)
    mount_tmpfs(stack.layout.logs_dir, LOGS_MB)
    port = _free_port()
    stack.env.update(
        {
            "TELEGRAM_BOT_TOKEN": telegram.token,
            "TELEGRAM_API_BASE_URL": telegram.base_url,
            "NANOCLAW_WEBHOOK_PORT": str(port),
            "NANOCLAW_WEBHOOK_SECRETS": f"{WEBHOOK_SOURCE}={WEBHOOK_SECRET}",
            "NANOCLAW_DISK_MIN_FREE_MB": str(floor_mb),
            "NANOCLAW_DELIVERY_BACKOFF_BASE_S": "0.5",
            "NANOCLAW_DELIVERY_BACKOFF_MAX_S": "4",
        }
    )
    terminal: TerminalClient | None = None
    try:
        stack.start()
        with contextlib.closing(CentralStore.open(stack.layout.central_db)) as central:
            main = central.find_agent_group("main")
            assert main is not None
            wire_platform_chat(central, "telegram", str(TELEGRAM_CHAT), main)
            wire_platform_chat(central, "webhook", WEBHOOK_SOURCE, main)
        terminal = TerminalClient(stack.layout).start()
        url = f"http://127.0.0.1:{port}/webhook/ci"
        yield FullDiskStack(stack, fake_api, telegram, terminal, main, url, floor_mb)
    finally:
        if terminal is not None:
            terminal.close()
        with contextlib.suppress(OSError):
            (stack.home / "filler").unlink()
        with contextlib.suppress(subprocess.TimeoutExpired):
            stack.nanoclaw("down")
        for container in stack.containers():
            subprocess.run(["podman", "rm", "-f", container], capture_output=True, check=False)
        keep = os.environ.get("NANOCLAW_TEST_KEEP_LOGS")
        if keep:  # a post-mortem: the logs live on a tmpfs that goes with the test
            shutil.copytree(stack.layout.logs_dir, keep, dirs_exist_ok=True)
        unmount(stack.layout.logs_dir)
        unmount(stack.home)
        stack.destroy()
        telegram.stop()
        fake_api.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_sizes(stack: Stack) -> dict[str, int]:
    return {name: len(stack.log(name).splitlines()) for name in sorted(_LOGGED)}


_LOGGED: Final = ("router", "delivery", "sweeper", "proxy", "watchdog")


@pytest.mark.timeout(900)
def test_a_full_disk_loses_nothing_and_answers_once(full_disk_stack: FullDiskStack) -> None:
    env = full_disk_stack
    stack, terminal, telegram = env.stack, env.terminal, env.telegram
    # Warm up: the terminal's session runs, Telegram and the webhook are wired.
    assert "echo: warm" in terminal.send("warm", timeout_s=180)
    telegram.push_message(TELEGRAM_CHAT, "tg-warm", title="ops")
    wait_until(
        lambda: any(x.text == "echo: tg-warm" for x in telegram.sent()),
        timeout_s=180,
        what="the Telegram warm-up reply",
    )
    pids = stack.pids()
    [tg_session] = [s for s in env.sessions() if s.messaging_group_id != env.cli_chat_id()]
    run_before = tg_session.run_id

    # A Telegram turn whose model call is held until the disk is full: the runner has its
    # answer to write then (or, with the floor, its container is stopped meanwhile).
    mid_call = env.fake_api.hold_request(lambda body: "tg-mid" in json.dumps(body))
    telegram.push_message(TELEGRAM_CHAT, "tg-mid", title="ops")
    assert mid_call.arrived.wait(120), "the tg-mid turn never called the model"

    # A reply shown by the terminal, its receipt held while the disk fills: delivery cannot
    # record it as delivered.
    hold = terminal.hold_frame(lambda t: t == "echo: held", AFTER_SHOW)
    terminal.post("held", timeout_s=600)
    assert hold.arrived.wait(120), "the held reply never came"
    filler = stack.home / "filler"
    fill(filler)
    full_at = time.time()
    hold.release()
    mid_call.release()
    lines_before = _log_sizes(stack)

    # Messages arrive while the disk is full.
    webhooks = Webhooks(
        env.webhook_url, lambda d: f"wh-{WEBHOOK_SOURCE}-{d}:{env.main.id}" in env.inbound_ids()
    )
    tg_updates: dict[int, str] = {}
    posted: list[str] = []
    for n in range(PER_CHANNEL):
        posted.append(terminal.post(f"cli-{n}", timeout_s=600))
        webhooks.send(f"d{n}", timeout_s=600)
        update, number = telegram.push_message(TELEGRAM_CHAT, f"tg-{n}", title="ops")
        tg_updates[update] = f"{number}"
    # Nothing is acknowledged that is not committed, for as long as the disk is full.
    deadline = time.monotonic() + FULL_FOR_S
    while time.monotonic() < deadline:
        ids = env.inbound_ids()
        for delivery, got in list(webhooks.answers.items()):
            for status, committed in got:
                assert not (200 <= status < 300) or committed, (delivery, got)
        confirmed = max((o for o in telegram.offsets_seen() if o is not None), default=0)
        for update, number_text in tg_updates.items():
            if confirmed > update:
                row = f"t{TELEGRAM_CHAT}_{number_text}:{env.main.id}"
                assert row in ids, f"update {update} confirmed, {row} not committed"
        for message_id, answer in terminal.posted().items():
            if answer is not None and message_id in posted:
                assert any(i.startswith(f"{message_id}:") for i in ids), message_id
        time.sleep(0.5)
    stack.assert_up(pids)
    during = {k: v - lines_before[k] for k, v in _log_sizes(stack).items()}

    filler.unlink()
    freed_at = time.time()

    # Everything is answered, each exactly once.
    wanted = ["echo: held", *(f"echo: cli-{n}" for n in range(PER_CHANNEL))]
    tg_wanted = ["echo: tg-mid", *(f"echo: tg-{n}" for n in range(PER_CHANNEL))]
    wait_until(
        lambda: all(w in terminal.texts() for w in wanted),
        timeout_s=300,
        what="the terminal replies",
        poll_s=_POLL_S,
    )
    wait_until(
        lambda: all(any(s.text == w for s in telegram.sent()) for w in tg_wanted),
        timeout_s=300,
        what="the Telegram replies",
        poll_s=_POLL_S,
    )
    wait_until(webhooks.done, timeout_s=120, what="the webhooks accepted", poll_s=_POLL_S)
    if env.floor_mb:
        wait_until(
            lambda: FLOOR_NOTICE in "\n".join(terminal.texts()),
            timeout_s=120,
            what="the notice",
            poll_s=_POLL_S,
        )
    # Nothing is left to send (again) before counting: every record settled.
    wait_until(
        lambda: env.open_deliveries() == 0,
        timeout_s=120,
        what="every delivery settled",
        poll_s=_POLL_S,
    )
    texts = terminal.texts()
    for w in wanted:
        assert texts.count(w) == 1, (w, texts)
    sent = [s.text for s in telegram.sent("sendMessage")]
    for w in tg_wanted:
        assert sent.count(w) == 1, sent
    ids = env.inbound_ids()
    webhook_rows = [f"wh-{WEBHOOK_SOURCE}-d{n}:{env.main.id}" for n in range(PER_CHANNEL)]
    for row in webhook_rows:
        assert ids.count(row) == 1, ids
    # A webhook is answered by its turn (its reply goes nowhere): processed, acked once.
    wait_until(
        lambda: all(env.status(w) == "completed" for w in webhook_rows),
        timeout_s=120,
        what="webhooks",
        poll_s=_POLL_S,
    )
    model_inputs = [json.dumps(r.body) for r in env.fake_api.message_requests()]
    for n in range(PER_CHANNEL):
        turns = [i for i in model_inputs if f"d{n}" in i and "webhook" in i]
        assert turns, f"webhook d{n} never reached the agent"
    notices = [t for t in texts if t.startswith("NanoClaw:")]
    if env.floor_mb:  # one notice for the episode
        assert len(notices) == 1 and FLOOR_NOTICE in notices[0], notices
    else:  # no floor, no notice; and the waiting runner was not taken for a hung one
        assert notices == []
        [after] = [s for s in env.sessions() if s.id == tg_session.id]
        assert after.run_id == run_before, "the waiting run was stopped"
        assert "stopping run: kill" not in stack.log("sweeper"), stack.log("sweeper")[-3000:]
    stack.assert_up(pids)
    # One line per condition, not one per pass or per retry: a handful of conditions and
    # one line per container stopped or message stored, never hundreds.
    for program, count in during.items():
        assert count <= MAX_LINES_WHILE_FULL, (
            f"{program} logged {count} lines in {FULL_FOR_S}s:\n" + stack.log(program)[-6000:]
        )
    print(f"full for {freed_at - full_at:.0f}s; lines logged meanwhile: {during}")
