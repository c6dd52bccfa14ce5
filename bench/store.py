"""Store throughput: inserts per second into session DBs, one transaction per insert.

Scenarios (each for inbound.db and outbound.db):
- one session vs. spread round-robin over 100 sessions;
- a persistent connection per session vs. open-write-close per insert.
Plus reference points: a bare fsync-bound SQLite file (WAL, synchronous=FULL, one INSERT per
transaction, no store code), and the same with journal_mode=DELETE (what session DBs use) and
PERSIST (a rollback journal that is zeroed rather than deleted), so the store's own overhead
and the journal's cost can be told apart.

Each scenario runs ``--rounds`` times; we print the median rate and per-insert latency
percentiles over all inserts.

    .venv/bin/python bench/store.py [--inserts 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import apsw

from nanoclaw_common import messages as m
from nanoclaw_common.store import (
    InboundStore,
    NewInbound,
    NewOutbound,
    OutboundStore,
    create_session_files,
)

Insert = Callable[[int], None]


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


def run_scenario(
    make: Callable[[Path], tuple[Insert, Callable[[], None]]], inserts: int, rounds: int
) -> tuple[float, list[float]]:
    rates: list[float] = []
    latencies: list[float] = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(dir=Path.cwd() / "bench") as tmp:
            insert, finish = make(Path(tmp))
            start = time.perf_counter()
            for n in range(inserts):
                t0 = time.perf_counter()
                insert(n)
                latencies.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start
            finish()
        rates.append(inserts / elapsed)
    return statistics.median(rates), sorted(latencies)


def session_paths(root: Path, sessions: int) -> list[tuple[Path, Path]]:
    paths = []
    for n in range(sessions):
        folder = root / f"s{n}"
        (folder / "agent").mkdir(parents=True)
        pair = (folder / "inbound.db", folder / "agent" / "outbound.db")
        create_session_files(*pair)
        paths.append(pair)
    return paths


def inbound_row(n: int) -> NewInbound:
    return NewInbound(
        id=f"{n}:ag-bench",
        content=m.ChatContent(text=f"message {n}", sender_id="bench:1", sender_name="Bench"),
        timestamp_ms=n,
        channel_type="bench",
        platform_id="chat-1",
    )


def outbound_row(n: int) -> NewOutbound:
    return NewOutbound(
        content=m.SendText(text=f"reply {n}"), channel_type="bench", platform_id="chat-1"
    )


def store_scenario(kind: str, sessions: int, persistent: bool):  # type: ignore[no-untyped-def]
    def make(root: Path) -> tuple[Insert, Callable[[], None]]:
        paths = session_paths(root, sessions)
        index = 0 if kind == "inbound" else 1
        opener = InboundStore if kind == "inbound" else OutboundStore
        open_stores = [opener(p[index]) for p in paths] if persistent else []

        def insert(n: int) -> None:
            target = n % sessions
            store = open_stores[target] if persistent else opener(paths[target][index])
            if kind == "inbound":
                store.insert_message(inbound_row(n))  # type: ignore[union-attr]
            else:
                store.insert_message(outbound_row(n))  # type: ignore[union-attr,arg-type]
            if not persistent:
                store.close()

        def finish() -> None:
            for store in open_stores:
                store.close()

        return insert, finish

    return make


def bare_scenario(journal_mode: str):  # type: ignore[no-untyped-def]
    def make(root: Path) -> tuple[Insert, Callable[[], None]]:
        conn = apsw.Connection(str(root / "bare.db"))
        conn.execute(f"PRAGMA journal_mode={journal_mode}")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")

        def insert(n: int) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (body) VALUES (?)", (f"message {n}",))
            conn.execute("COMMIT")

        return insert, conn.close

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inserts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    scenarios: list[tuple[str, Callable[[Path], tuple[Insert, Callable[[], None]]]]] = [
        ("bare SQLite, WAL, synchronous=FULL", bare_scenario("wal")),
        ("bare SQLite, DELETE journal, synchronous=FULL", bare_scenario("delete")),
        ("bare SQLite, PERSIST journal, synchronous=FULL", bare_scenario("persist")),
    ]
    for kind in ("inbound", "outbound"):
        for sessions in (1, 100):
            for persistent in (True, False):
                label = (
                    f"{kind:8} {sessions:3} session{'s' if sessions > 1 else ' '}"
                    f" {'persistent' if persistent else 'open-write-close'}"
                )
                scenarios.append((label, store_scenario(kind, sessions, persistent)))

    print(f"{args.inserts} inserts x {args.rounds} rounds, one transaction per insert\n")
    print(f"{'scenario':50} {'median/s':>9} {'p50 ms':>7} {'p99 ms':>7}")
    for label, make in scenarios:
        rate, latencies = run_scenario(make, args.inserts, args.rounds)
        print(
            f"{label:50} {rate:9.0f} {percentile(latencies, 0.5) * 1000:7.2f}"
            f" {percentile(latencies, 0.99) * 1000:7.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
