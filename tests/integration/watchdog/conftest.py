"""A real supervisord running stand-in programs (``standin.py``) and the real
``nanoclaw-watchdog`` as its ``[eventlistener:watchdog]``, configured the way
``supervisord.conf`` configures it, with short limits.

The data folder lives under a short ``/tmp`` path: supervisord's Unix socket path is limited to
108 bytes and pytest's ``tmp_path`` can be longer than that."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from supervisor.xmlrpc import SupervisorTransport

from tests.environ import clean_environ
from tests.waiting import wait_until

STANDIN = Path(__file__).with_name("standin.py")
WATCHDOG = Path(sys.executable).with_name("nanoclaw-watchdog")
SUPERVISORD = Path(sys.executable).with_name("supervisord")

#: Stand-in programs, and what each is for.
PROGRAMS = {
    "healthy": "beats all along: never restarted",
    "stall": "hangs on SIGUSR1",
    "hog": "grows on SIGUSR2",
    "stuck": "hangs at every start",
    "spare": "for the resume test",
}
STALE_S = 3  # for the ones whose hang is under test
HEALTHY_STALE_S = 10  # a healthy program beats every second; a loaded machine delays that
HOG_RSS_MAX_MB = 100  # a stand-in idles at about 25 MB and grows by 200
BACKOFF_S = 600  # longer than any test here: a second restart never comes


def config(home: Path) -> str:
    logs, run = home / "logs", home / "run"
    programs = "".join(
        f"""
[program:{name}]
command={sys.executable} {STANDIN} {name}
autorestart=true
startsecs=1
startretries=3
stopwaitsecs=2
redirect_stderr=true
stdout_logfile={logs}/%(program_name)s.log
environment=NANOCLAW_HOME="{home}",PYTHONUNBUFFERED="1"
"""
        for name in PROGRAMS
    )
    return f"""
[unix_http_server]
file={run}/supervisor.sock
chmod=0700

[supervisord]
logfile={logs}/supervisord.log
pidfile={run}/supervisord.pid
childlogdir={logs}
nodaemon=true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{run}/supervisor.sock
{programs}
[eventlistener:watchdog]
command={WATCHDOG}
events=TICK_5
priority=5
autorestart=true
startsecs=2
stdout_logfile=NONE
stderr_logfile={logs}/%(program_name)s.log
environment=NANOCLAW_HOME="{home}",PYTHONUNBUFFERED="1"
"""


def settings_toml() -> str:
    return f"""
watchdog_start_grace_s = {STALE_S}
watchdog_backoff_s = {BACKOFF_S}
watchdog_backoff_max_s = {BACKOFF_S}

[watchdog_program_stale_s]
healthy = {HEALTHY_STALE_S}
stall = {STALE_S}
hog = {HEALTHY_STALE_S}
stuck = {STALE_S}
spare = {HEALTHY_STALE_S}

[watchdog_program_rss_max_mb]
hog = {HOG_RSS_MAX_MB}
"""


@dataclass
class Supervised:
    home: Path
    process: subprocess.Popen[bytes]
    rpc: Any

    def info(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = self.rpc.supervisor.getProcessInfo(name)
        return info

    def pid(self, name: str) -> int:
        return int(self.info(name)["pid"])

    def running_pid(self, name: str) -> int:
        """The pid of ``name`` once supervisord reports it RUNNING."""
        return int(
            wait_until(
                lambda: self.info(name)["statename"] == "RUNNING" and self.pid(name),
                timeout_s=30,
                what=f"{name} RUNNING",
                poll_s=0.1,
            )
        )

    def new_pid(self, name: str, old_pid: int, timeout_s: float = 60) -> int:
        """Wait until ``name`` runs again under a pid other than ``old_pid``."""
        return int(
            wait_until(
                lambda: (
                    self.info(name)["statename"] == "RUNNING"
                    and self.pid(name) != old_pid
                    and self.pid(name)
                ),
                timeout_s=timeout_s,
                what=f"{name} restarted (pid {old_pid} replaced)",
                poll_s=0.1,
            )
        )

    def log(self, name: str) -> str:
        path = self.home / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def proof_s(self, name: str) -> float | None:
        path = self.home / "run" / "alive" / name
        return path.stat().st_mtime if path.exists() else None


@pytest.fixture(scope="module")
def supervised() -> Iterator[Supervised]:
    with running_supervisord() as started:
        yield started


@contextlib.contextmanager
def running_supervisord() -> Iterator[Supervised]:
    """supervisord with the stand-ins and the watchdog, every one of them RUNNING."""
    root = Path(tempfile.mkdtemp(prefix="nc-wd-", dir="/tmp"))
    home = root / "data"
    for folder in (home / "logs", home / "run"):
        folder.mkdir(parents=True)
    (home / "hang-stuck").touch()
    (home / "nanoclaw.toml").write_text(settings_toml())
    conf = root / "supervisord.conf"
    conf.write_text(config(home))
    env = clean_environ()
    env["NANOCLAW_HOME"] = str(home)
    process = subprocess.Popen(
        [str(SUPERVISORD), "-c", str(conf)],
        env=env,
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    socket_url = f"unix://{home / 'run' / 'supervisor.sock'}"
    rpc = xmlrpc.client.ServerProxy("http://127.0.0.1", SupervisorTransport(None, None, socket_url))
    supervised = Supervised(home, process, rpc)
    try:
        wait_until(
            (home / "run" / "supervisor.sock").exists, timeout_s=30, what="supervisord", poll_s=0.1
        )
        for name in (*PROGRAMS, "watchdog"):
            supervised.running_pid(name)
        yield supervised
    finally:
        rpc("close")()  # the transport's socket
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)
