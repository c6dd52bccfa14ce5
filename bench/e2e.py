"""Message → reply through the whole assistant under supervisord, as a user sees it.

Method: a throwaway data folder, ``nanoclaw init`` and ``nanoclaw up`` (real supervisord,
the real programs, real Podman containers). The model is a local stand-in for the Messages
API that answers at once (so the figures are NanoClaw's own time, not a model's); the real
``anthropic`` SDK in the container reaches it through the real credential proxy. A client
speaks the terminal chat's socket protocol, as ``nanoclaw chat`` does, and times from
sending a message until the reply's text arrives at the terminal:
- ``cold``: no container runs for the session (stopped before each sample, not timed): the
  router's commit, a Podman start, the runner's start, the model call, delivery;
- ``warm``: the session's container is up and idle: pickup, the model call, delivery.

    .venv/bin/python bench/e2e.py [--cold 10] [--warm 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from nanoclaw_cli.chat import Terminal, listen, request
from nanoclaw_common.channels import cli_protocol as wire
from nanoclaw_common.ids import new_id
from nanoclaw_common.paths import Layout
from nanoclaw_common.sandbox import Sandbox
from nanoclaw_common.settings import Settings

NANOCLAW = str(Path(sys.executable).with_name("nanoclaw"))
DESTINATION = "terminal"  # the terminal chat's name, as `nanoclaw init` wires it


def model_app() -> web.Application:
    """Answers every call with one message to the terminal, in the Messages API format."""

    async def messages(http_request: web.Request) -> web.Response:
        body = await http_request.json()
        reply = f'<message to="{DESTINATION}">pong {len(body["messages"])}</message>'
        return web.json_response(
            {
                "id": new_id("msg"),
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": [{"type": "text", "text": reply}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 20, "output_tokens": 5},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    return app


def serve_model() -> str:
    """The stand-in model on a free port, in a thread; its base URL."""
    ready: dict[str, Any] = {}
    started = threading.Event()

    def run() -> None:
        loop = asyncio.new_event_loop()

        async def boot() -> None:
            runner = web.AppRunner(model_app(), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            ready["port"] = runner.addresses[0][1]
            started.set()

        loop.run_until_complete(boot())
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    started.wait(10)
    return f"http://127.0.0.1:{ready['port']}"


class TimedTerminal(Terminal):
    def __init__(self, save_dir: Path) -> None:
        super().__init__(save_dir=save_dir, interactive=False)
        self.arrived = asyncio.Event()

    def show(self, line: str) -> None:
        self.arrived.set()


async def one_sample(layout: Layout, terminal: TimedTerminal) -> float:
    terminal.arrived.clear()
    started = time.perf_counter()
    message = wire.SendMessage(id=new_id("cli"), text="ping", sender_name="bench")
    answer = await request(layout, message, time.monotonic() + 60)
    if isinstance(answer, wire.Refusal):
        raise SystemExit(f"refused: {answer.error}")
    await asyncio.wait_for(terminal.arrived.wait(), 60)
    return time.perf_counter() - started


def stop_containers(env: dict[str, str]) -> None:
    """Through the Podman API service supervisord runs, as `nanoclaw down` does."""
    settings = Settings.load(env)
    sandbox = Sandbox(settings)
    try:
        for info in sandbox.running():
            sandbox.stop(info.session_id)
    finally:
        sandbox.close()


async def measure(layout: Layout, env: dict[str, str], cold: int, warm: int) -> dict[str, Any]:
    terminal = TimedTerminal(layout.home)
    server = await listen(wire.chat_socket(layout), terminal)
    try:
        cold_s: list[float] = []
        for _ in range(cold):
            await asyncio.to_thread(stop_containers, env)
            cold_s.append(await one_sample(layout, terminal))
        await one_sample(layout, terminal)  # make sure it is up before the warm samples
        warm_s = [await one_sample(layout, terminal) for _ in range(warm)]
    finally:
        server.close()
    return {"cold": summary(cold_s), "warm": summary(warm_s)}


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {}

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p90_ms": pick(0.9),
        "p99_ms": pick(0.99),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cold", type=int, default=10)
    parser.add_argument("--warm", type=int, default=50)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="nc-bench-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NANOCLAW_", "ANTHROPIC_"))}
    env.update(
        NANOCLAW_HOME=str(root / "data"),
        NANOCLAW_INSTALL_ID="bench" + root.name[-6:].lower().replace("_", "x"),
        ANTHROPIC_API_KEY="sk-ant-bench-key-not-real-000000",
        ANTHROPIC_BASE_URL=serve_model(),
    )
    layout = Layout(root / "data")
    try:
        subprocess.run([NANOCLAW, "init"], env=env, check=True, capture_output=True)
        subprocess.run([NANOCLAW, "up"], env=env, check=True, capture_output=True)
        result = asyncio.run(measure(layout, env, args.cold, args.warm))
        print(json.dumps(result, indent=2))
    finally:
        subprocess.run([NANOCLAW, "down"], env=env, capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
