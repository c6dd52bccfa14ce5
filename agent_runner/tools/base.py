"""The tool framework: a tool is a name, a description and JSON schema for the model, an
input struct its arguments are strictly converted into (the model's arguments are outside
input), and a handler returning the text the model sees.

A handler raises ``ToolError`` for anything the model should hear about and correct (a bad
path, an unknown destination); the loop turns it into an ``is_error`` tool result
``Error: <message>``. Other exceptions are our bugs: logged with the traceback and reported
to the model the same way, so a broken tool never takes the runner down.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec

from agent_runner.destinations import Destinations
from agent_runner.diskfull import DiskWait
from agent_runner.faults import Faults
from agent_runner.mcp import McpTools
from agent_runner.reaper import ToolProcesses
from nanoclaw_common.paths import CONTAINER, SessionPaths
from nanoclaw_common.runner_config import RunnerConfig
from nanoclaw_common.store.inbound import InboundReader
from nanoclaw_common.store.outbound import NewOutbound, OutboundStore, Written
from nanoclaw_common.store.rows import InboundRow

T = TypeVar("T", bound=msgspec.Struct)

# The grep tool's hard limit: its search runs in a child process killed after this long.
GREP_TIMEOUT_S = 20.0


class ToolError(Exception):
    """Shown to the model as ``Error: <message>``."""


@dataclass
class Batch:
    """What the tools need to know about the batch being handled."""

    in_reply_to: str | None = None  # the batch's oldest row (a2a return path)
    # The batch's newest trigger row: whose request this turn answers (a question card is
    # for that person; the oldest row may be someone else's context).
    trigger_id: str | None = None
    delivered: bool = False  # something was sent since the last user push (no nudge needed)
    # Every row this turn answers, oldest first: the batch, then follow-ups pushed into the
    # turn. Each row the turn writes records them (``NewOutbound.answers``).
    rows: list[InboundRow] = field(default_factory=list)

    @property
    def answers(self) -> tuple[str, ...]:
        return tuple(row.id for row in self.rows)

    def stamp(self, new: NewOutbound) -> NewOutbound:
        """``new`` recording that it answers this batch (unless it says otherwise)."""
        if new.answers or not self.rows:
            return new
        return msgspec.structs.replace(new, answers=self.answers)


@dataclass
class ToolContext:
    inbound: InboundReader
    outbound: OutboundStore
    destinations: Destinations
    run_id: str
    config: RunnerConfig
    session: SessionPaths
    workspace: Path
    stop: threading.Event
    # Sleep until inbound.db may have changed, or the timeout (s) passes; a stop ends it.
    wait_for_inbound: Callable[[float], bool]
    # Ids this run acked (completed/failed): never pick them again.
    settled: set[str] = field(default_factory=set)
    batch: Batch = field(default_factory=Batch)
    monotonic: Callable[[], float] = time.monotonic
    mcp: McpTools | None = None  # the configured MCP servers' tools
    # What a tool call started, killed when it ends (reaper.py).
    processes: ToolProcesses = field(default_factory=ToolProcesses)
    grep_timeout_s: float = GREP_TIMEOUT_S
    faults: Faults = field(default_factory=Faults)  # test-only crash points (faults.py)
    # Writes wait out a full disk instead of failing (diskfull.py); the runner sets its own.
    disk: DiskWait = field(default_factory=lambda: DiskWait(threading.Event()))

    def write(self, new: NewOutbound) -> Written:
        """Insert an outbound row with the next odd seq above both tables, recorded as
        answering the current batch."""
        stamped = self.batch.stamp(new)
        written = self.disk.until_written(
            lambda: self.outbound.insert_message(
                stamped, run_id=self.run_id, min_seq=self.inbound.max_seq()
            ),
            "a message",
        )
        self.faults.crash("after_send", self.batch.answers)
        return written

    def ack_completed(self, ids: list[str]) -> None:
        self.disk.until_written(lambda: self.outbound.complete(ids, self.run_id), "an ack")
        self.settled.update(ids)

    def workspace_path(self, raw: str) -> Path:
        """Map the container paths ``/workspace/...`` and ``/session/inbox/...`` onto the
        real folders, so a runner started as a host process (tests, benchmarks) sees the same
        paths as in a container. A relative path is relative to the workspace."""
        path = Path(raw)
        if not path.is_absolute():
            return self.workspace / path
        for container, real in (
            (CONTAINER.workspace, self.workspace),
            (CONTAINER.session.inbox, self.session.inbox),
        ):
            if container != real:
                try:
                    return real / path.relative_to(container)
                except ValueError:
                    continue
        return path


@dataclass(frozen=True)
class Tool(Generic[T]):
    name: str
    description: str
    input_schema: dict[str, Any]
    input_type: type[T]
    handler: Callable[[ToolContext, T], str]
    # The timeout a call declares (ms), recorded so the host tolerates a long call.
    declared_timeout_ms: Callable[[ToolContext, T], int | None] = field(
        default=lambda _ctx, _args: None
    )

    def definition(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
        }

    def parse(self, arguments: Any) -> T:
        try:
            return msgspec.convert(arguments, self.input_type, strict=False)
        except msgspec.ValidationError as exc:
            raise ToolError(f"invalid arguments for {self.name}: {exc}") from None


def schema(
    properties: dict[str, dict[str, Any]], required: list[str] | None = None
) -> dict[str, Any]:
    """A JSON object schema (what the model sees); the input struct enforces it."""
    return {
        "type": "object",
        "properties": properties,
        "required": required or [],
        "additionalProperties": False,
    }


STRING: dict[str, Any] = {"type": "string"}


def string(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


def integer(description: str) -> dict[str, Any]:
    return {"type": "integer", "description": description}
