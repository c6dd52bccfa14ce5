"""A supervised stand-in program for the watchdog's tests: it proves it is alive exactly as the
router, delivery and the proxy do (``nanoclaw_common.alive.beating``, a task on its asyncio
loop) and misbehaves on demand:

- ``SIGUSR1``: its loop blocks for good (a callback that never returns), so it stops beating
  and no longer acts on SIGTERM either, like a program stuck in one system call;
- ``SIGUSR2``: it allocates and fills ``--grow-mb`` MB and keeps them (its RSS passes a
  ceiling);
- a file ``<NANOCLAW_HOME>/hang-<name>``: every start hangs right after its first beat (a
  program that keeps hanging after each restart).

SIGTERM stops it gracefully (exit 0) while its loop runs.

    python tests/integration/watchdog/standin.py NAME [--grow-mb N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import threading
from pathlib import Path

from nanoclaw_common.alive import beating
from nanoclaw_common.lifecycle import GracefulStop
from nanoclaw_common.paths import Layout

_hoard: list[bytes] = []


def hang() -> None:
    threading.Event().wait()  # never set: the loop thread is gone for good


def grow(megabytes: int) -> None:
    _hoard.append(b"\x01" * (megabytes << 20))  # written, so every page is resident


async def serve(name: str, grow_mb: int) -> None:
    layout = Layout(Path(os.environ["NANOCLAW_HOME"]))
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    GracefulStop().install_async(loop, stopped)
    loop.add_signal_handler(signal.SIGUSR1, hang)
    loop.add_signal_handler(signal.SIGUSR2, grow, grow_mb)
    async with beating(layout, name):
        if (layout.home / f"hang-{name}").exists():
            await asyncio.sleep(0.2)  # the first beat goes out, then nothing
            hang()
        await stopped.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--grow-mb", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(serve(args.name, args.grow_mb))


if __name__ == "__main__":
    main()
