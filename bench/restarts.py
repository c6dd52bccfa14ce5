"""Restart to ready, per program, under the real supervisord: after a crash and after a graceful
restart.

Method: a throwaway data folder, ``nanoclaw init`` and ``nanoclaw up`` (real supervisord, the
checkout's ``supervisord.conf``, the real programs; no model calls). For each of router,
delivery, sweeper and proxy, ``--restarts`` times each:
- ``crash``: SIGKILL to the program's pid; supervisord sees it exit and starts it again;
- ``graceful``: ``nanoclaw ctl restart <program>`` (supervisorctl: TERM, wait for the exit,
  start, wait for RUNNING).
Timed from the kill (or the command's start) until the new process is **ready**: it has
written its first proof of life (``run/alive/<program>`` with an mtime after the new pid's
start, read from ``/proc/<pid>/stat``: its main loop is running its service), and for the
router and the proxy their socket answers too (the terminal chat's ``run/cli.sock`` accepts a
connection; the proxy answers ``GET /nanoclaw/health`` with 200). Also reported: until
supervisord shows the new pid (the old one is gone and the new one forked), until it says
RUNNING (``startsecs`` after the start, 2 s in supervisord.conf), and for ``graceful`` until
the command returned. Between samples the program is left RUNNING for half
a second; supervisord's pid is read over its XML-RPC every few milliseconds.

    .venv/bin/python bench/restarts.py [--restarts 20] [--programs router,delivery,...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

from nanoclaw_common.paths import Layout

NANOCLAW = str(Path(sys.executable).with_name("nanoclaw"))
PROGRAMS = ("router", "delivery", "sweeper", "proxy")
POLL_S = 0.002
TIMEOUT_S = 120.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
HEALTH_REQUEST = b"GET /nanoclaw/health HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n"


def process_start_s(pid: int) -> float:
    """When ``pid`` started, in epoch seconds (to a clock tick, 10 ms). ``/proc/<pid>/stat``
    counts it in ticks since boot on the boot-time clock; ``btime`` in ``/proc/stat`` is
    rounded to the second, too coarse against a beat a second."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    started_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22 of the line
    age_s = time.clock_gettime(time.CLOCK_BOOTTIME) - started_ticks / CLOCK_TICKS
    return time.time() - age_s


def wait_for(predicate: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + TIMEOUT_S
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(POLL_S)
    return result


class Stack:
    def __init__(self, layout: Layout, env: dict[str, str]) -> None:
        self.layout = layout
        self.env = env
        url = f"unix://{layout.supervisor_socket}"
        self.rpc: Any = xmlrpc.client.ServerProxy(
            "http://127.0.0.1", SupervisorTransport(None, None, url)
        )

    def info(self, program: str) -> dict[str, Any]:
        info: dict[str, Any] = self.rpc.supervisor.getProcessInfo(program)
        return info

    def running_pid(self, program: str) -> int:
        def running() -> int:
            info = self.info(program)
            return int(info["pid"]) if info["statename"] == "RUNNING" else 0

        return int(wait_for(running, f"{program} RUNNING"))

    def new_pid(self, program: str, old: int) -> int:
        def fresh() -> int:
            pid = int(self.info(program)["pid"])
            return pid if pid not in (0, old) else 0

        return int(wait_for(fresh, f"a new {program}"))

    def serving(self, program: str) -> bool:
        if program == "router":
            return connects(self.layout.cli_socket)
        if program == "proxy":
            return health_ok(self.layout.proxy_socket)
        return True

    def proof_s(self, program: str) -> float:
        try:
            return (self.layout.alive_dir / program).stat().st_mtime
        except FileNotFoundError:
            return 0.0


def connects(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def health_ok(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
            probe.sendall(
                b"GET /nanoclaw/health HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n"
            )
            return probe.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False


def one_restart(stack: Stack, program: str, mode: str) -> dict[str, float]:
    """One restart of ``program``: seconds from its start until supervisord shows the new
    pid, until the new process is ready, until it is RUNNING and (graceful) the command
    returned."""
    old = stack.running_pid(program)
    command: subprocess.Popen[bytes] | None = None
    started = time.monotonic()
    if mode == "crash":
        os.kill(old, signal.SIGKILL)
    else:
        command = subprocess.Popen(
            [NANOCLAW, "ctl", "restart", program],
            env=stack.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    new = stack.new_pid(program, old)
    respawned = time.monotonic() - started
    born_s = process_start_s(new)
    wait_for(lambda: stack.proof_s(program) >= born_s, f"{program}'s first proof")
    wait_for(lambda: stack.serving(program), f"{program} serving")
    ready = time.monotonic() - started
    stack.running_pid(program)
    running = time.monotonic() - started
    result = {"respawned_s": respawned, "ready_s": ready, "running_s": running}
    if command is not None:
        if command.wait(TIMEOUT_S) != 0:
            raise SystemExit(f"nanoclaw ctl restart {program} failed")
        result["returned_s"] = time.monotonic() - started
    return result


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(samples) * 1000),
        "max_ms": round(max(samples) * 1000),
    }


def measure(stack: Stack, programs: list[str], restarts: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for program in programs:
        for mode in ("crash", "graceful"):
            samples = []
            for _ in range(restarts):
                samples.append(one_restart(stack, program, mode))
                time.sleep(0.5)
            results[f"{program} {mode}"] = {
                key: summary([s[key] for s in samples]) for key in samples[0]
            }
            print(program, mode, json.dumps(results[f"{program} {mode}"]), file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--restarts", type=int, default=20)
    parser.add_argument("--programs", default=",".join(PROGRAMS))
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="nc-bench-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NANOCLAW_", "ANTHROPIC_"))}
    env.update(
        NANOCLAW_HOME=str(root / "data"),
        NANOCLAW_INSTALL_ID="bench" + root.name[-6:].lower().replace("_", "x"),
        ANTHROPIC_API_KEY="sk-ant-bench-key-not-real-000000",
        ANTHROPIC_BASE_URL="http://127.0.0.1:9",  # no model call is made
    )
    layout = Layout(root / "data")
    try:
        subprocess.run([NANOCLAW, "init"], env=env, check=True, capture_output=True)
        subprocess.run([NANOCLAW, "up"], env=env, check=True, capture_output=True)
        stack = Stack(layout, env)
        load = os.getloadavg()
        result = measure(stack, args.programs.split(","), args.restarts)
        result["load_average"] = [round(x, 2) for x in (*load, *os.getloadavg())]
        print(json.dumps(result, indent=2))
    finally:
        subprocess.run([NANOCLAW, "down"], env=env, capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
