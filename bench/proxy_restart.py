"""How long the credential proxy's socket refuses connections across restarts, under real
supervisord (docs/performance.md, "Credential proxy restarts").

    .venv/bin/python bench/proxy_restart.py --restarts 50

A throwaway data folder, ``nanoclaw init`` and ``nanoclaw up`` (the whole stack, the fake
Messages API behind the proxy). A client in a thread (``tests/e2e/proxy_probe.py``) sends a
health request on a fresh connection every 5 ms, and records refused connections (the
longest stretch of them, from the first refusal to the next accepted connection) and how
long each request waited for its answer. Then ``--restarts`` graceful restarts
(``nanoclaw ctl restart proxy``) and as many crashes (SIGKILL; supervisord restarts it),
each followed by the proxy's return to RUNNING and a few answered requests.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.proxy_probe import Probe
from tests.fakes.anthropic_api import FakeAnthropic
from tests.stack import Stack

KEY = "sk-ant-api03-NANOCLAW-BENCH-" + "b7N" * 10


def wait_back(stack: Stack, old_pid: int, probe: Probe) -> None:
    deadline = time.monotonic() + 60
    while True:
        info = stack.processes()["proxy"]
        if int(info["pid"]) not in (0, old_pid) and info["statename"] == "RUNNING":
            break
        if time.monotonic() > deadline:
            raise SystemExit("the proxy did not come back within 60 s")
        time.sleep(0.02)
    made = probe.report.attempts
    while probe.report.attempts < made + 3:
        time.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--restarts", type=int, default=50)
    args = parser.parse_args()
    fake = FakeAnthropic(api_key=KEY).start()
    stack = Stack.create(api_url=fake.url, api_key=KEY, prefix="nc-bench-")
    results: dict[str, dict[str, object]] = {}
    try:
        stack.start()
        for kind in ("graceful", "crash"):
            with Probe(stack.layout.proxy_socket) as probe:
                for _ in range(args.restarts):
                    before = stack.pid("proxy")
                    if kind == "graceful":
                        stack.nanoclaw("ctl", "restart", "proxy")
                    else:
                        os.kill(before, signal.SIGKILL)
                    wait_back(stack, before, probe)
            report = probe.report
            waits = sorted(report.waits)
            results[kind] = {
                "restarts": args.restarts,
                "requests": report.attempts,
                "refused": report.refused,
                "failed_after_connect": report.failed,
                "longest_refused_s": round(report.longest_refused_s, 3),
                "wait_p50_ms": round(statistics.median(waits) * 1000, 1) if waits else None,
                "wait_p99_ms": round(waits[int(len(waits) * 0.99)] * 1000, 1) if waits else None,
                "longest_wait_s": round(report.longest_wait_s, 3),
            }
    finally:
        stack.destroy()
        fake.stop()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
