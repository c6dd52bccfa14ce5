"""The router as a real process (``python -m nanoclaw_router``) against fake platforms.

Data folders live under a short ``/tmp`` path: Unix socket paths are limited to 108 bytes and
pytest's ``tmp_path`` can be longer than that."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from nanoclaw_common.store import CentralStore, InboundReader
from nanoclaw_common.store.rows import AgentGroup, InboundRow, MessagingGroup, Session
from tests import entities
from tests.environ import clean_environ
from tests.fakes.slack_api import FakeSlack
from tests.fakes.telegram_api import FakeTelegram
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RouterProcess:
    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home / "router.log"
        self.starts = 0

    def start(self, **extra: str) -> RouterProcess:
        env = {**self.env, **extra}
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"--- start {self.starts} ---\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nanoclaw_router"],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()
        wait_until(self._started, timeout_s=20, what="router start")
        return self

    def _started(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"router exited early:\n{self.log()}")
        return (
            f"--- start {self.starts} ---" in self.log()
            and "router running" in self.log().split(f"--- start {self.starts} ---")[-1]
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_exit(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(20)
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Delivery:
    """``nanoclaw-delivery`` as a real process, logging to ``<home>/delivery.log``."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.log_path = home / "delivery.log"
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nanoclaw_delivery"],
                env={"NANOCLAW_DELIVERY_BACKOFF_BASE_S": "0.2", **env},
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(20)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class World:
    """A data folder, its central DB, and helpers to look at sessions."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.central = CentralStore.open(home / "central.db")
        self.wake_log = home / "wakes.log"

    def group(self, name: str = "Main") -> AgentGroup:
        return entities.new_group(self.central, name)

    def wire(
        self, channel: str, platform_id: str, group: AgentGroup, **options: Any
    ) -> MessagingGroup:
        return entities.wire_platform_chat(self.central, channel, platform_id, group, **options)

    def sessions(self) -> list[Session]:
        return self.central.list_sessions()

    def rows(self, session: Session) -> list[InboundRow]:
        paths_root = self.home / "sessions" / session.agent_group_id / session.id
        reader = InboundReader(paths_root / "inbound.db")
        try:
            return reader.list_messages()
        finally:
            reader.close()

    def all_rows(self) -> list[InboundRow]:
        found: list[InboundRow] = []
        for session in self.sessions():
            try:
                found += self.rows(session)
            except apsw.Error:
                continue  # not created yet (the router is creating it right now)
        return found

    def wakes(self) -> list[str]:
        if not self.wake_log.exists():
            return []
        return [line for line in self.wake_log.read_text().splitlines() if line]

    def close(self) -> None:
        self.central.close()


@pytest.fixture
def short_home() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="nc-", dir="/tmp"))
    home = root / "d"
    home.mkdir()
    yield home
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def world(short_home: Path) -> Iterator[World]:
    w = World(short_home)
    yield w
    w.close()


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    fake = FakeTelegram().start()
    yield fake
    fake.stop()


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    yield fake
    fake.stop()


@pytest.fixture
def router_env(short_home: Path) -> dict[str, str]:
    env = clean_environ("TELEGRAM_", "SLACK_", "ANTHROPIC_")
    env.update(
        {
            "NANOCLAW_HOME": str(short_home),
            "NANOCLAW_ENV_FILE": str(short_home / "none.env"),
            "NANOCLAW_LOG_LEVEL": "DEBUG",
            "NANOCLAW_TEST_WAKE_LOG": str(short_home / "wakes.log"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@pytest.fixture
def router(short_home: Path, router_env: dict[str, str]) -> Iterator[RouterProcess]:
    process = RouterProcess(short_home, router_env)
    yield process
    process.kill()
