"""Process lifecycle shared by the workers: graceful stop on the first SIGTERM/SIGINT, exit at
once on the second.

Signal handlers only record (no logging, no DB writes, nothing raised): the loop sees the flag
and acts. ``stop.wait(timeout)`` is the only sleep a loop uses, so a signal wakes it at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_ON_SECOND_SIGNAL = 130


class GracefulStop:
    """A stop flag set by the first stop signal. A second signal ends the process at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_number: int | None = None

    def request(self, signal_number: int | None = None) -> None:
        """What the handler does; tests call it directly."""
        if self.event.is_set():
            os._exit(EXIT_ON_SECOND_SIGNAL)
        self.signal_number = signal_number
        self.event.set()

    def _handler(self, signal_number: int, frame: FrameType | None) -> None:
        self.request(signal_number)

    def install(self) -> GracefulStop:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handler)
        return self

    def install_async(self, loop: asyncio.AbstractEventLoop, stopped: asyncio.Event) -> None:
        """For asyncio programs: also set ``stopped`` (an asyncio.Event) in the loop."""

        def on_signal(sig: int) -> None:
            self.request(sig)
            stopped.set()

        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)

    @property
    def stopping(self) -> bool:
        return self.event.is_set()

    def wait(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s``; True if a stop was requested."""
        return self.event.wait(timeout_s)
