"""The liveness signal: a thread of its own touches ``agent/heartbeat`` every interval, from
start to exit, whatever the model or a tool is doing. Upstream touched the file only on
provider events, so a long tool call or a rate-limit wait looked like death to the host.
Across a re-exec (``shed``) the old process beats last thing and the new one first thing."""

from __future__ import annotations

import threading
from pathlib import Path

from loguru import logger

from agent_runner.shed import touch_heartbeat

log = logger.bind(component="heartbeat")


class Heartbeat:
    def __init__(self, path: Path, interval_s: float) -> None:
        self.path = path
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._failing = False

    def touch(self) -> None:
        try:
            touch_heartbeat(self.path)
        except OSError as exc:
            # Keep trying: the host judges us by this file, and a transient error (disk
            # full) must not end the beat for good. Log once per failing stretch.
            if not self._failing:
                log.error("cannot touch heartbeat {}: {}", self.path, exc)
            self._failing = True
        else:
            self._failing = False

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.touch()

    def start(self) -> Heartbeat:
        self.touch()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
