"""The watchdog's two channels to supervisord, both supervisord's own:

- the **event listener protocol** on stdin/stdout (``EventListener``): write ``READY``, read one
  header line and a payload of the length it gives, handle it, answer ``RESULT 2\\nOK``.
  stdout carries nothing else, ever: ``__main__`` points ``sys.stdout`` at stderr;
- the **XML-RPC interface** on supervisord's unix socket (``Supervisor``), reached through the
  URL supervisord puts in every child's environment (``SUPERVISOR_SERVER_URL``), with
  supervisor's own transport (``supervisor.childutils``).
"""

from __future__ import annotations

import xmlrpc.client
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

import msgspec
from supervisor import childutils
from supervisor.dispatchers import PEventListenerDispatcher
from supervisor.xmlrpc import Faults

READY: Final[bytes] = PEventListenerDispatcher.READY_FOR_EVENTS_TOKEN
OK: Final[bytes] = PEventListenerDispatcher.RESULT_TOKEN_START + b"2\nOK"
MAX_PAYLOAD_BYTES: Final = 1 << 20  # supervisord's events are a few hundred bytes


@dataclass(frozen=True)
class Event:
    name: str  # TICK_5, PROCESS_STATE_RUNNING, ...
    headers: dict[str, str]
    payload: bytes


class ProtocolError(Exception):
    """supervisord sent something that is not an event header."""


class EventListener:
    """supervisord's event listener protocol over a pair of binary streams."""

    def __init__(self, stdin: BinaryIO, stdout: BinaryIO) -> None:
        self._stdin = stdin
        self._stdout = stdout

    def next_event(self) -> Event | None:
        """Say READY and wait for the next event; None when supervisord closed the pipe."""
        self._stdout.write(READY)
        self._stdout.flush()
        line = self._stdin.readline()
        if not line:
            return None
        headers = parse_headers(line.decode("ascii", errors="replace"))
        try:
            length = int(headers["len"])
        except (KeyError, ValueError):
            raise ProtocolError(f"no payload length in {line[:200]!r}") from None
        if not 0 <= length <= MAX_PAYLOAD_BYTES:
            raise ProtocolError(f"payload length {length} out of range")
        payload = self._stdin.read(length)
        if len(payload) < length:
            return None
        return Event(headers.get("eventname", ""), headers, payload)

    def done(self) -> None:
        """The event is handled (always OK: a FAIL would only make supervisord resend it)."""
        self._stdout.write(OK)
        self._stdout.flush()


def parse_headers(line: str) -> dict[str, str]:
    """``key:value key:value ...`` (one event header line, or a payload's first line)."""
    pairs = (token.partition(":") for token in line.split())
    return {key: value for key, sep, value in pairs if sep}


class ProcessInfo(msgspec.Struct, frozen=True):
    """The fields of supervisord's ``getProcessInfo`` the watchdog uses."""

    name: str
    group: str
    statename: str
    pid: int
    start: int  # epoch seconds (supervisord truncates them)

    @property
    def namespec(self) -> str:
        return f"{self.group}:{self.name}"


class Supervisor:
    """supervisord's XML-RPC interface, as far as the watchdog uses it."""

    def __init__(self, rpc: Any) -> None:
        self._rpc = rpc

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Supervisor:
        return cls(childutils.getRPCInterface(environ))

    def processes(self) -> list[ProcessInfo]:
        return msgspec.convert(self._rpc.supervisor.getAllProcessInfo(), list[ProcessInfo])

    def process(self, namespec: str) -> ProcessInfo:
        return msgspec.convert(self._rpc.supervisor.getProcessInfo(namespec), ProcessInfo)

    def stop(self, namespec: str) -> bool:
        """Stop it the way supervisord always does (its stopsignal, then KILL after its
        stopwaitsecs) and wait until it has stopped. False if it was not running by then
        (someone else stopped it, or it exited): then it is not ours to start."""
        try:
            self._rpc.supervisor.stopProcess(namespec, True)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode == Faults.NOT_RUNNING:
                return False
            raise
        return True

    def start(self, namespec: str) -> None:
        """Start it without waiting for startsecs (supervisord moves it to RUNNING)."""
        try:
            self._rpc.supervisor.startProcess(namespec, False)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != Faults.ALREADY_STARTED:
                raise
