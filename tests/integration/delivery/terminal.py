"""A stand-in for ``nanoclaw chat``'s listening side: it accepts the CLI adapter's frames on
``run/cli-chat.sock`` and answers ``received``, like the real client, in a background thread.

``hold()`` makes it read frames without answering (a platform that accepted the message but
whose answer has not reached delivery yet: the duplicate window); ``release()`` answers again.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

from nanoclaw_common.channels import cli_protocol as wire
from tests.waiting import wait_until


class FakeTerminal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.frames: list[wire.Frame] = []
        self.answer_delay_s = 0.0  # a slow platform: time between receiving and answering
        self._answering = threading.Event()
        self._answering.set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FakeTerminal:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        server.listen(16)
        server.settimeout(0.05)
        self._server = server
        self._stop.clear()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._answering.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def hold(self) -> None:
        self._answering.clear()

    def release(self) -> None:
        self._answering.set()

    def texts(self) -> list[str]:
        with self._lock:
            return [f.text for f in self.frames if isinstance(f, wire.TextFrame)]

    def wait_for(self, count: int, timeout_s: float = 10.0) -> None:
        """Until ``count`` frames arrived."""

        def arrived() -> bool:
            with self._lock:
                return len(self.frames) >= count

        wait_until(
            arrived,
            timeout_s=timeout_s,
            what=f"{count} frames on the terminal",
            poll_s=0.005,
            detail=lambda: f"{len(self.frames)} arrived",
        )

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            line = reader.readline()
            if not line:
                return
            frame = wire.decode_frame(line)
            with self._lock:
                self.frames.append(frame)
            while not self._answering.wait(0.05):
                if self._stop.is_set():
                    return
            if self.answer_delay_s:
                time.sleep(self.answer_delay_s)
            with contextlib.suppress(OSError):
                conn.sendall(wire.encode_line(wire.Received()))
