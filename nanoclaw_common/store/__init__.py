"""The stores: the only place that imports apsw and holds SQL. Callers get verb-named methods
that take and return msgspec structs."""

from __future__ import annotations

from pathlib import Path

from nanoclaw_common.store.central import CentralStore
from nanoclaw_common.store.inbound import InboundReader, InboundStore, InsertResult, NewInbound
from nanoclaw_common.store.outbound import NewOutbound, OutboundReader, OutboundStore, Written

__all__ = [
    "CentralStore",
    "InboundReader",
    "InboundStore",
    "InsertResult",
    "NewInbound",
    "NewOutbound",
    "OutboundReader",
    "OutboundStore",
    "Written",
    "create_session_files",
]


def create_session_files(inbound_path: Path, outbound_path: Path) -> None:
    """Create both session DBs with their schemas (idempotent). The host creates
    ``outbound.db`` too, so a container never starts against a missing file."""
    InboundStore(inbound_path).close()
    OutboundStore(outbound_path, container_file=True).close()
