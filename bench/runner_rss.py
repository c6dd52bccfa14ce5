"""The agent runner's RSS around the model SDK, and what shedding the SDK costs.

The runner imports the ``anthropic`` SDK at its first model call and, once idle for
``shed_after_s`` with the SDK loaded, re-execs itself to drop it (agent_runner/shed.py). One
runner (the real SDK, through the real credential proxy, to the fake Messages API of
tests/fakes) goes through ``--cycles`` cycles of:

1. idle without the SDK (just started, or just re-exec'd): RSS;
2. a message: commit → ack ``completed`` (the first model call pays the SDK import), then
   ``--warm`` more messages with the SDK loaded (the same, warm);
3. idle with the SDK, ``--settle`` seconds after the last ack: RSS;
4. the shed (``shed_after_s`` after the last ack): the heartbeat's gap across the exec (the
   old process's last beat → the new one's first, from the file's mtimes sampled every
   millisecond; the beat interval is long, so no timer beat falls in between).

"Idle" is what the runner waits in: no pending or claimed row, no turn, no tool. RSS is
``VmRSS`` of the runner from ``/proc/<pid>/status`` (the pid stays the same across the exec).

    .venv/bin/python bench/runner_rss.py [--cycles 10] [--warm 4] [--container] [--json]

``--container`` runs the runner in a real container started by ``Sandbox.wake`` (needs
Podman and the agent image, ``nanoclaw image build``).
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.fakes and the test harness

from nanoclaw_common import messages  # noqa: E402
from nanoclaw_common.paths import Layout, SessionPaths  # noqa: E402
from nanoclaw_common.store import CentralStore, InboundStore, NewInbound  # noqa: E402
from nanoclaw_common.store.outbound import OutboundReader  # noqa: E402
from tests.fakes.anthropic_api import FakeAnthropic, text  # noqa: E402
from tests.integration.agents import harness  # noqa: E402

SHED_AFTER_S = 2.0
HEARTBEAT_S = 30.0  # long: the only beats in a cycle are the two around the exec
RESUMED = "agent runner resumed after shedding the model SDK"
ANSWER = text('<message to="main">ok</message>')


class Runner:
    """One runner under test: its pid, its log and its session's files."""

    def __init__(self, pid: Callable[[], int], log: Callable[[], str], paths: SessionPaths):
        self.pid = pid
        self.log = log
        self.paths = paths
        self.sent = 0
        self._outbound: OutboundReader | None = None

    def wait(self, check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.001)

    def ack(self, message_id: str) -> str | None:
        if self._outbound is None:
            if not self.paths.outbound_db.exists():
                return None
            self._outbound = OutboundReader(self.paths.outbound_db)
        found = self._outbound.db.scalar(
            "SELECT status FROM processing_ack WHERE message_id = ?", (message_id,)
        )
        return None if found is None else str(found)

    def close(self) -> None:
        if self._outbound is not None:
            self._outbound.close()

    def send(self, platform_id: str, group_id: str) -> float:
        """Commit one chat row; seconds until its ack is ``completed``."""
        self.sent += 1
        message_id = f"rss-{self.sent}:{group_id}"
        store = InboundStore(self.paths.inbound_db)
        try:
            store.insert_message(
                NewInbound(
                    id=message_id,
                    content=messages.ChatContent(text=f"ping {self.sent}", sender_id="cli:b"),
                    timestamp_ms=int(time.time() * 1000),
                    channel_type="cli",
                    platform_id=platform_id,
                )
            )
        finally:
            store.close()
        committed = time.monotonic()
        self.wait(lambda: self.ack(message_id) == "completed", f"the ack of {message_id}")
        return time.monotonic() - committed

    def wait_for_sheds(self, count: int) -> None:
        self.wait(lambda: self.log().count(RESUMED) >= count, f"shed {count}", 30)

    def rss_mb(self) -> float:
        return harness.rss_kb(self.pid()) / 1024


class Beats:
    """Every distinct mtime (ns) of the heartbeat file, sampled every millisecond."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: list[int] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.001):
            try:
                mtime = self.path.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            if not self.seen or mtime != self.seen[-1]:
                self.seen.append(mtime)

    def after(self, ns: int) -> list[int]:
        return [m for m in self.seen if m > ns]

    def wait_for(self, count: int, *, after_ns: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.after(after_ns)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {count} heartbeats")
            time.sleep(0.005)

    def stop(self) -> None:
        self._done.set()
        self._thread.join(5)


@contextmanager
def host_runner(home: Path, api: FakeAnthropic) -> Iterator[tuple[Runner, str, str]]:
    """The runner as a host process (the integration tests' harness)."""
    layout = Layout(home)
    layout.ensure()
    central = CentralStore.open(layout.central_db)
    proxy = harness.start_proxy(home, api.api_key, api.url)
    agent = harness.make_session(central, home)
    harness.write_config(
        agent,
        proxy.socket,
        model="claude-sonnet-5",
        shed_after_s=SHED_AFTER_S,
        heartbeat_interval_s=HEARTBEAT_S,
    )
    process = harness.start_runner(agent)
    runner = Runner(lambda: process.process.pid, process.log, agent.paths)
    try:
        yield runner, "chat-1", agent.group_id
    finally:
        runner.close()
        process.terminate()
        proxy.stop()
        central.close()


@contextmanager
def container_runner(home: Path, api: FakeAnthropic) -> Iterator[tuple[Runner, str, str]]:
    """The runner in a real container started by ``Sandbox.wake``."""
    import podman

    from nanoclaw_common.sandbox import Sandbox, runtime
    from nanoclaw_common.sandbox.service import PodmanService
    from nanoclaw_common.sessions import refresh_projections
    from nanoclaw_common.settings import Settings

    layout = Layout(home)
    layout.ensure()
    conf = runtime.ensure_containers_conf(layout)
    service = PodmanService(layout.podman_socket, runtime.podman_env(conf)).start()
    settings = Settings(
        home=str(home),
        install_id="rss" + secrets.token_hex(3),
        podman_url=service.url,
        runner_shed_after_s=SHED_AFTER_S,
        heartbeat_interval_s=HEARTBEAT_S,
        heartbeat_timeout_s=HEARTBEAT_S * 4,
        model="claude-sonnet-5",
    ).validate()
    central = CentralStore.open(layout.central_db)
    proxy = harness.start_proxy(home, api.api_key, api.url)
    group = central.create_agent_group("Bench", central.unique_folder("bench"))
    layout.group_dir(group.folder).mkdir(parents=True, exist_ok=True)
    chat = central.create_messaging_group("cli", "local", name="main")
    central.add_destination(group.id, "main", "channel", chat.id)
    session = central.create_session(group.id, chat.id)
    refresh_projections(central, layout, session)
    box = Sandbox(settings)
    client = podman.PodmanClient(base_url=service.url)

    def container() -> Any:
        return client.containers.get(box.container_name(session.id))

    def pid() -> int:
        init = int(container().attrs["State"]["Pid"])
        tasks = Path(f"/proc/{init}/task").iterdir()
        (child,) = [int(c) for task in tasks for c in (task / "children").read_text().split()]
        return child

    def log() -> str:
        return b"".join(container().logs(stdout=True, stderr=True)).decode(errors="replace")

    runner = Runner(pid, log, layout.session(group.id, session.id))
    try:
        if not box.wake(session):
            raise RuntimeError("wake failed (is the agent image built?)")
        yield runner, "local", group.id
    finally:
        runner.close()
        box.stop(session.id)
        box.close()
        for found in client.containers.list(all=True):
            if found.name == box.container_name(session.id):
                found.remove(force=True)
        client.close()
        proxy.stop()
        service.stop()
        central.close()


def measure(
    runner: Runner, chat: str, group: str, *, cycles: int, warm: int, settle_s: float
) -> Any:
    pause = threading.Event()
    runner.wait(runner.paths.heartbeat.exists, "the first heartbeat")
    beats = Beats(runner.paths.heartbeat)
    pid = runner.pid()
    found: dict[str, list[float]] = {
        "rss_idle_no_sdk_mb": [],
        "rss_idle_with_sdk_mb": [],
        "first_call_ms": [],
        "warm_call_ms": [],
        "heartbeat_gap_ms": [],
    }
    try:
        for cycle in range(cycles):
            pause.wait(settle_s)
            found["rss_idle_no_sdk_mb"].append(runner.rss_mb())
            found["first_call_ms"].append(runner.send(chat, group) * 1000)
            found["warm_call_ms"] += [runner.send(chat, group) * 1000 for _ in range(warm)]
            idle_from = time.time_ns()
            pause.wait(settle_s)
            found["rss_idle_with_sdk_mb"].append(runner.rss_mb())
            runner.wait_for_sheds(cycle + 1)
            beats.wait_for(2, after_ns=idle_from)
            last_of_old, first_of_new = beats.after(idle_from)[:2]
            found["heartbeat_gap_ms"].append((first_of_new - last_of_old) / 1e6)
            if runner.pid() != pid:
                raise RuntimeError("the runner's pid changed: a restart, not a re-exec")
        pause.wait(settle_s)
        found["rss_idle_no_sdk_mb"].append(runner.rss_mb())  # after the last shed
    finally:
        beats.stop()
    result: dict[str, Any] = {"cycles": cycles}
    for name, values in found.items():
        result[name] = {
            "p50": round(statistics.median(values), 1),
            "min": round(min(values), 1),
            "max": round(max(values), 1),
            "n": len(values),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--warm", type=int, default=4, help="warm calls per cycle")
    parser.add_argument("--settle", type=float, default=0.5, help="seconds before an RSS read")
    parser.add_argument("--container", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.settle >= SHED_AFTER_S:
        parser.error(f"--settle must be below the shed time ({SHED_AFTER_S} s)")
    api = FakeAnthropic().start()
    api.reply(*([ANSWER] * (args.cycles * (1 + args.warm))))
    try:
        with tempfile.TemporaryDirectory(prefix="nanoclaw-bench-rss-") as tmp:
            home = Path(tmp)
            runner = container_runner(home, api) if args.container else host_runner(home, api)
            with runner as (handle, chat, group):
                result = measure(
                    handle, chat, group, cycles=args.cycles, warm=args.warm, settle_s=args.settle
                )
    finally:
        api.stop()
    result["where"] = "container" if args.container else "host process"
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
