"""Delivery latency and footprint: the real ``nanoclaw-delivery`` process, N live sessions
writing outbound rows, time from each row's commit to the adapter's platform call.

Setup: a fresh data folder with one agent group and ``--sessions`` sessions on the terminal
chat (``cli/local``). The delivery process is the real console script with every adapter
configured (cli; telegram and slack with tokens pointing at a closed local port, so their
libraries load as in production and count in the RSS, but nothing here sends to them). This
process plays the terminal: it listens on ``run/cli-chat.sock`` like ``nanoclaw chat`` and
stamps each frame when it arrives. Writer threads, one per session, play the containers:
each commits rows through ``OutboundStore`` (the runner's writer) at ``--rate`` rows per
second with exponential gaps, and stamps each row right after its commit returned.

Latency = frame arrival − commit (same host clock, ``time.time``). The frame arrives within
a millisecond of the adapter call, so this bounds "commit → adapter call" from above.
RSS = the delivery process's ``VmRSS``/``VmHWM`` from ``/proc``, sampled every 0.2 s.
``--paths`` first runs the paths that once loaded the sandbox into delivery: an approved
``install_packages`` (the image build runs a stand-in ``podman`` that exits 0, first on the
process's PATH) and an agent-to-agent message to a stopped session.

    .venv/bin/python bench/delivery.py [--sessions 50] [--rate 2] [--seconds 20] [--paths]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from nanoclaw_common import messages as m
from nanoclaw_common.channels import cli_protocol as wire
from nanoclaw_common.paths import Layout
from nanoclaw_common.sessions import ensure_session_files, refresh_projections
from nanoclaw_common.states import ApprovalStatus, DestinationType, EngageMode, Role
from nanoclaw_common.store import CentralStore, OutboundStore
from nanoclaw_common.store.outbound import NewOutbound
from nanoclaw_common.store.rows import PendingApproval, Session

SCRIPT = Path(sys.executable).parent / "nanoclaw-delivery"


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


class Terminal:
    """Receives the CLI adapter's frames; records (text, arrival time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.arrivals: dict[str, float] = {}
        self.lock = threading.Lock()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(128)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            line = reader.readline()
            arrived = time.time()
            frame = wire.decode_frame(line)
            if isinstance(frame, wire.TextFrame):
                with self.lock:
                    self.arrivals.setdefault(frame.text, arrived)
            with contextlib.suppress(OSError):
                conn.sendall(wire.encode_line(wire.Received()))


def setup(home: Path, sessions: int) -> tuple[Layout, list[Session]]:
    layout = Layout(home)
    layout.ensure()
    central = CentralStore.open(layout.central_db)
    group = central.create_agent_group("Bench", "bench")
    chat = central.create_messaging_group("cli", "local", name="terminal")
    central.create_wiring(chat.id, group.id, engage_mode=EngageMode.PATTERN, engage_pattern=".")
    made = []
    for _ in range(sessions):
        session = central.create_session(group.id, chat.id)
        ensure_session_files(layout, session)
        refresh_projections(central, layout, session)
        made.append(session)
    central.close()
    return layout, made


def run_paths(layout: Layout, source: Session) -> None:
    """An approved install_packages and an agent-to-agent message for delivery to apply."""
    central = CentralStore(layout.central_db)
    try:
        central.upsert_user("cli:owner", "cli", "Owner")
        central.grant_role("cli:owner", Role.OWNER)
        helper = central.create_agent_group("Helper", "helper")
        central.add_destination(source.agent_group_id, "helper", DestinationType.AGENT, helper.id)
        now = int(time.time() * 1000)
        central.create_pending_approval(
            PendingApproval(
                approval_id="appr-bench",
                session_id=source.id,
                agent_group_id=source.agent_group_id,
                request_id="out-bench",
                action="install_packages",
                payload=m.encode_text(m.InstallPackages(apt=["jq"])),
                approver_user_id="cli:owner",
                channel_type=None,
                platform_id=None,
                platform_message_id=None,
                status=ApprovalStatus.PENDING,
                title="Install Packages Request",
                options_json="[]",
                created_at_ms=now,
                expires_at_ms=None,
            )
        )
        central.decide_approval("appr-bench", "cli:owner", "approve")
    finally:
        central.close()
    store = OutboundStore(layout.session(source.agent_group_id, source.id).outbound_db)
    store.insert_message(
        NewOutbound(content=m.SendText(text="hi"), channel_type="agent", platform_id=helper.id)
    )
    store.close()


def paths_done(layout: Layout) -> bool:
    central = CentralStore(layout.central_db)
    try:
        helper = central.find_agent_group("helper")
        landed = helper is not None and central.newest_active_session(helper.id) is not None
        return landed and central.list_pending_approvals() == []
    finally:
        central.close()


def fake_podman(folder: Path) -> Path:
    """A ``podman`` that accepts any command: the bench measures delivery, not a build."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "podman"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    return folder


def writer(  # noqa: PLR0917 - a thread target takes its arguments positionally
    layout: Layout,
    session: Session,
    rate: float,
    until: float,
    commits: dict[str, float],
    lock: threading.Lock,
    seed: int,
) -> None:
    rng = random.Random(seed)
    store = OutboundStore(layout.session(session.agent_group_id, session.id).outbound_db)
    n = 0
    try:
        while time.time() < until:
            time.sleep(rng.expovariate(rate))
            text = f"{session.id} {n}"
            store.insert_message(NewOutbound(content=m.SendText(text=text)))
            committed = time.time()
            with lock:
                commits[text] = committed
            n += 1
    finally:
        store.close()


def memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--rate", type=float, default=2.0, help="rows per second per session")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--adapters",
        default="cli,telegram,slack",
        help="configured channels (cli is always on); others load their client libraries",
    )
    parser.add_argument(
        "--paths",
        action="store_true",
        help="first make delivery apply an approval and an agent-to-agent message",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=Path.cwd() / "bench") as tmp:
        home = Path(tmp) / "data"
        layout, sessions = setup(home, args.sessions)
        terminal = Terminal(wire.chat_socket(layout))
        env = {k: v for k, v in os.environ.items() if not k.startswith("NANOCLAW_")}
        env.update(
            NANOCLAW_HOME=str(home),
            NANOCLAW_LOG_LEVEL="WARNING",
            NANOCLAW_ENV_FILE=str(home / "none.env"),
            PYTHONUNBUFFERED="1",
            PATH=f"{fake_podman(Path(tmp) / 'bin')}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        for name in ("TELEGRAM_BOT_TOKEN", "SLACK_BOT_TOKEN"):
            env.pop(name, None)
        if "telegram" in args.adapters:
            env.update(
                TELEGRAM_BOT_TOKEN="123456:bench-token", TELEGRAM_API_BASE_URL="http://127.0.0.1:9"
            )
        if "slack" in args.adapters:
            env.update(
                SLACK_BOT_TOKEN="xoxb-bench-token", SLACK_API_BASE_URL="http://127.0.0.1:9/api/"
            )
        log_path = Path(tmp) / "delivery.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([str(SCRIPT)], env=env, stderr=log, stdout=log)
        time.sleep(1.5)  # start-up (imports, adapters): not part of the measurement
        if args.paths:
            run_paths(layout, sessions[0])
            deadline = time.time() + 20
            while not paths_done(layout):
                if time.time() > deadline:
                    raise SystemExit(f"delivery did not apply the paths:\n{log_path.read_text()}")
                time.sleep(0.1)
            time.sleep(1.0)
        idle_rss, _ = memory(proc.pid)
        cpu_start = cpu_seconds(proc.pid)

        commits: dict[str, float] = {}
        lock = threading.Lock()
        until = time.time() + args.seconds
        threads = [
            threading.Thread(
                target=writer, args=(layout, s, args.rate, until, commits, lock, n), daemon=True
            )
            for n, s in enumerate(sessions)
        ]
        rss_samples: list[int] = []
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            rss_samples.append(memory(proc.pid)[0])
            time.sleep(0.2)
        deadline = time.time() + 10
        while time.time() < deadline:
            with terminal.lock, lock:
                if all(text in terminal.arrivals for text in commits):
                    break
            time.sleep(0.05)
        cpu_used = cpu_seconds(proc.pid) - cpu_start
        rss, peak = memory(proc.pid)
        proc.send_signal(signal.SIGTERM)
        exit_code = proc.wait(30)

    with terminal.lock, lock:
        latencies = sorted(
            max(0.0, terminal.arrivals[t] - c) * 1000
            for t, c in commits.items()
            if t in terminal.arrivals
        )
        missing = sum(1 for t in commits if t not in terminal.arrivals)
    figures = {
        "sessions": args.sessions,
        "adapters": args.adapters,
        "paths_run": args.paths,
        "rows": len(commits),
        "rows_per_s": round(len(commits) / args.seconds, 1),
        "missing": missing,
        "p50_ms": round(percentile(latencies, 0.50), 1),
        "p90_ms": round(percentile(latencies, 0.90), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "max_ms": round(latencies[-1], 1),
        "rss_idle_mb": round(idle_rss / 1024, 1),
        "rss_max_sampled_mb": round(max([*rss_samples, rss]) / 1024, 1),
        "rss_peak_hwm_mb": round(peak / 1024, 1),
        "cpu_s_per_s": round(cpu_used / args.seconds, 3),
        "exit_code": exit_code,
    }
    if args.json:
        print(json.dumps(figures))
        return
    print(
        f"{figures['rows']} rows from {args.sessions} sessions"
        f" ({figures['rows_per_s']}/s), {missing} not delivered"
    )
    print(
        f"commit → adapter: p50 {figures['p50_ms']} ms, p90 {figures['p90_ms']} ms,"
        f" p99 {figures['p99_ms']} ms, max {figures['max_ms']} ms"
    )
    print(
        f"delivery RSS: idle {figures['rss_idle_mb']} MB, max {figures['rss_max_sampled_mb']} MB,"
        f" peak (VmHWM) {figures['rss_peak_hwm_mb']} MB; CPU {figures['cpu_s_per_s']} s/s;"
        f" exit {exit_code}"
    )


if __name__ == "__main__":
    main()
