"""Several processes write one session's two DBs at once (host processes into inbound.db, a
container-side process into outbound.db, as in production). Whatever the interleaving:
every seq is unique across both tables, host rows are even, container rows are odd, and an
id inserted twice (by one process or by two) is one row with one seq."""

from __future__ import annotations

import multiprocessing
import tempfile
from collections.abc import Iterator
from multiprocessing.pool import Pool
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanoclaw_common import messages as m
from nanoclaw_common.store import (
    InboundReader,
    InboundStore,
    NewInbound,
    NewOutbound,
    OutboundStore,
    create_session_files,
)

HOST_WORKERS = 3
CONTAINER_WORKERS = 2


def host_worker(inbound_path: str, ids: list[str]) -> list[tuple[str, int]]:
    """Insert each id in its own transaction (as the router does per event)."""
    store = InboundStore(inbound_path)
    try:
        results = []
        for message_id in ids:
            result = store.insert_message(
                NewInbound(
                    id=message_id,
                    content=m.ChatContent(text=message_id, sender_id="test:1"),
                    timestamp_ms=0,
                )
            )
            results.append((result.id, result.seq))
        return results
    finally:
        store.close()


def container_worker(inbound_path: str, outbound_path: str, count: int) -> list[int]:
    """Write outbound rows, each numbered above what the inbound side holds (as the runner)."""
    reader = InboundReader(inbound_path)
    store = OutboundStore(outbound_path)
    try:
        seqs = []
        for n in range(count):
            written = store.insert_message(
                NewOutbound(content=m.SendText(text=str(n))), min_seq=reader.max_seq()
            )
            seqs.append(written.seq)
        return seqs
    finally:
        reader.close()
        store.close()


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    # spawn: each worker is a fresh interpreter with its own SQLite connections.
    with multiprocessing.get_context("spawn").Pool(HOST_WORKERS + CONTAINER_WORKERS) as workers:
        yield workers


id_pool = st.sampled_from([f"msg-{n}:ag" for n in range(40)])
plans = st.tuples(
    st.lists(
        st.lists(id_pool, min_size=1, max_size=25), min_size=HOST_WORKERS, max_size=HOST_WORKERS
    ),
    st.lists(
        st.integers(min_value=0, max_value=25),
        min_size=CONTAINER_WORKERS,
        max_size=CONTAINER_WORKERS,
    ),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans)
def test_concurrent_inserts_keep_parity_and_idempotency(
    pool: Pool, plan: tuple[list[list[str]], list[int]]
) -> None:
    host_plans, container_counts = plan
    with tempfile.TemporaryDirectory() as tmp:
        inbound_path = Path(tmp) / "inbound.db"
        outbound_path = Path(tmp) / "outbound.db"
        create_session_files(inbound_path, outbound_path)

        host_jobs = [pool.apply_async(host_worker, (str(inbound_path), ids)) for ids in host_plans]
        container_jobs = [
            pool.apply_async(container_worker, (str(inbound_path), str(outbound_path), count))
            for count in container_counts
        ]
        host_results = [job.get(timeout=60) for job in host_jobs]
        container_seqs = [seq for job in container_jobs for seq in job.get(timeout=60)]

        reader = InboundReader(inbound_path)
        stored = {row.id: row.seq for row in reader.list_messages(limit=10_000)}
        reader.close()

    # One row per distinct id, whoever inserted it and however often.
    assert set(stored) == {message_id for ids in host_plans for message_id in ids}
    # Every insert of an id (first or repeated, any process) reports the stored seq.
    for results in host_results:
        for message_id, seq in results:
            assert stored[message_id] == seq
    host_seqs = list(stored.values())
    assert all(seq % 2 == 0 for seq in host_seqs)
    assert all(seq % 2 == 1 for seq in container_seqs)
    assert len(container_seqs) == sum(container_counts)
    all_seqs = host_seqs + container_seqs
    assert len(set(all_seqs)) == len(all_seqs)
