"""Cold start through Podman: ``Sandbox.wake()`` → the agent runner's first claim in
``outbound.processing_ack`` (issue 3 target: p50 ≤ 1.5 s).

Method: a throwaway data folder and our own ``podman system service`` (as in production,
with this machine's containers.conf). One agent group on the scripted model (no network, no
proxy). Each run makes a new session with one pending message (not timed: the router does
this before it wakes), then times:
- ``wake``: the ``wake()`` call itself (lock, settle, runner.json, token, ownership, Podman
  create + start);
- ``claim``: from the start of ``wake()`` until the message's claim is visible in
  ``outbound.db`` (polled every millisecond from the host, read-only, as delivery would);
- ``reply``: until the scripted model's reply row is in ``outbound.db``.
The container is stopped after each run (not timed). Requires the agent image
(``nanoclaw image build``).

    .venv/bin/python bench/cold_start.py [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from nanoclaw_common.logs import setup_logging
from nanoclaw_common.messages import ChatContent
from nanoclaw_common.paths import Layout
from nanoclaw_common.sandbox import Sandbox, runtime
from nanoclaw_common.sandbox.service import PodmanService
from nanoclaw_common.sessions import refresh_projections
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore, InboundStore, NewInbound, OutboundReader, rows

SCRIPT = {"fallback": {"content": [{"type": "text", "text": '<message to="bench">pong</message>'}]}}
POLL_S = 0.001
RUN_TIMEOUT_S = 30.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def prepare_session(
    central: CentralStore, layout: Layout, group: rows.AgentGroup, chat: rows.MessagingGroup
) -> rows.Session:
    session = central.create_session(group.id, chat.id)
    refresh_projections(central, layout, session)
    paths = layout.session(group.id, session.id)
    (paths.agent_dir / "script.json").write_text(json.dumps(SCRIPT))
    inbound = InboundStore(paths.inbound_db)
    inbound.insert_message(
        NewInbound(
            id="ping",
            content=ChatContent(text="ping", sender_id="cli:bench"),
            timestamp_ms=int(time.time() * 1000),
            channel_type="cli",
            platform_id="bench",
        )
    )
    inbound.close()
    return session


def one_run(box: Sandbox, layout: Layout, session: rows.Session) -> tuple[float, float, float]:
    paths = layout.session(session.agent_group_id, session.id)
    reader = OutboundReader(paths.outbound_db)
    try:
        started = time.perf_counter()
        if not box.wake(session):
            raise RuntimeError("wake() returned False")
        woke = time.perf_counter() - started
        claimed = replied = 0.0
        while not replied:
            elapsed = time.perf_counter() - started
            if elapsed > RUN_TIMEOUT_S:
                raise RuntimeError(f"no claim/reply within {RUN_TIMEOUT_S}s")
            if not claimed and reader.acks():
                claimed = elapsed
            if claimed and reader.max_seq():
                replied = elapsed
            time.sleep(POLL_S)
        return woke, claimed, replied
    finally:
        reader.close()
        box.stop(session.id, timeout_s=5)


def summary(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"{name:<6} p50 {percentile(ms, 0.5):6.0f} ms   p90 {percentile(ms, 0.9):6.0f} ms"
        f"   p99 {percentile(ms, 0.99):6.0f} ms   min {min(ms):5.0f}   max {max(ms):5.0f}"
        f"   mean {statistics.mean(ms):5.0f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--image", default=Settings().image)
    args = parser.parse_args()
    setup_logging("bench", "WARNING")
    with tempfile.TemporaryDirectory(prefix="nanoclaw-bench-") as tmp:
        layout = Layout(Path(tmp) / "data")
        layout.ensure()
        conf = runtime.ensure_containers_conf(layout)
        with PodmanService(layout.podman_socket, runtime.podman_env(conf)) as service:
            settings = Settings(
                home=str(layout.home),
                install_id="bench",
                podman_url=service.url,
                image=args.image,
            ).validate()
            central = CentralStore.open(layout.central_db)
            group = central.create_agent_group("Bench", "bench")
            central.update_container_config(group.id, provider="scripted")
            chat = central.create_messaging_group("cli", "bench", name="bench")
            central.create_wiring(chat.id, group.id)
            box = Sandbox(settings)
            results: list[tuple[float, float, float]] = []
            try:
                one_run(box, layout, prepare_session(central, layout, group, chat))  # warm-up
                for _ in range(args.runs):
                    session = prepare_session(central, layout, group, chat)
                    results.append(one_run(box, layout, session))
            finally:
                box.close()
                central.close()
    print(f"cold start through Podman, {args.runs} runs (+1 warm-up), image {args.image}")
    print(summary("wake", [r[0] for r in results]))
    print(summary("claim", [r[1] for r in results]))
    print(summary("reply", [r[2] for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
