"""The watchdog's thin shell around ``rules.decide``: observe every program, decide, act.

One tick: supervisord's process list, each program's proof of life (``run/alive/<program>``,
its mtime) and RSS (``VmRSS`` of its pid), then ``decide``, then a restart or a log line per
action. Only the program's own pid is measured, not its children: delivery's ``podman build``
and the Podman service's helpers come and go with their work, and restarting the parent for
their size would cut that work short without fixing anything.

A restart is supervisord's: ``stopProcess`` (its stopsignal, KILL after its stopwaitsecs; a
hung loop never acts on TERM, so a hung program takes its stopwaitsecs to go) and then
``startProcess``. A marker file (``run/watchdog/<program>``) lives from the stop to the start:
a watchdog killed in between (the stop can take a minute) leaves a program STOPPED that nobody
asked to stop, and the next watchdog finishes the restart at its start (``resume``).
"""

from __future__ import annotations

import os
import time
import xmlrpc.client
from collections.abc import Sequence
from pathlib import Path

from loguru import logger

from nanoclaw_common.paths import Layout
from nanoclaw_watchdog.rules import Action, Hold, Limits, Memory, Observation, Restart, decide
from nanoclaw_watchdog.supervisor import ProcessInfo, Supervisor

log = logger.bind(component="watchdog")

MAX_STATUS_BYTES = 16_384  # /proc/<pid>/status is about 1.5 KB


class Watchdog:
    def __init__(
        self, limits: Limits, supervisor: Supervisor, layout: Layout, *, self_name: str
    ) -> None:
        self.limits = limits
        self.supervisor = supervisor
        self.layout = layout
        self.self_name = self_name  # its own entry in supervisord's list is never judged
        self.memory: dict[str, Memory] = {}

    @property
    def markers_dir(self) -> Path:
        return self.layout.run_dir / "watchdog"

    def describe(self) -> str:
        stale = ", ".join(
            f"{name} {limit:g} s" for name, limit in sorted(self.limits.stale_s.items())
        )
        ceilings = ", ".join(
            f"{name} {mb or 'none'}" for name, mb in sorted(self.limits.rss_max_mb.items())
        )
        return (
            f"proof of life at most {stale or 'nobody'} old (start-up grace"
            f" {self.limits.start_grace_s:g} s); RSS at most {self.limits.default_rss_max_mb} MB"
            + (f" ({ceilings})" if ceilings else "")
            + f"; restarts of one program {self.limits.backoff_s:g} s apart at least, doubling"
            f" to {self.limits.backoff_max_s:g} s"
        )

    # -- one tick ---------------------------------------------------------------------------

    def tick(self, now_s: float | None = None) -> list[Action]:
        """Observe, decide and act once; the actions taken."""
        infos = [p for p in self.supervisor.processes() if p.name != self.self_name]
        now_s = time.time() if now_s is None else now_s
        decision = decide([self.observe(info) for info in infos], self.memory, self.limits, now_s)
        self.memory = decision.memory
        by_name = {info.name: info for info in infos}
        for action in decision.actions:
            if isinstance(action, Restart):
                self.restart(by_name[action.program], action)
            else:
                self.hold(action, now_s)
        return decision.actions

    def observe(self, info: ProcessInfo) -> Observation:
        running = info.statename == "RUNNING"
        return Observation(
            name=info.name,
            running=running,
            pid=info.pid,
            started_s=float(info.start),
            proof_s=_mtime_s(self.layout.alive_dir / info.name),
            rss_mb=rss_mb(info.pid) if running and info.pid > 0 else None,
        )

    # -- acting -----------------------------------------------------------------------------

    def restart(self, info: ProcessInfo, action: Restart) -> None:
        log.warning(
            "restarting {} (pid {}): {} [restart {} in a row]",
            info.name,
            action.pid,
            action.reason,
            action.restarts,
        )
        # An error (supervisord's socket, a fault) leaves the marker: whether the stop went
        # through is unknown, and the next watchdog's resume() looks.
        marker = self._mark(info.name)
        if not self.supervisor.stop(info.namespec):
            marker.unlink(missing_ok=True)
            log.info("{} was no longer running: left as it is", info.name)
            return
        self.supervisor.start(info.namespec)
        marker.unlink(missing_ok=True)
        log.info("restarted {}: pid {} -> {}", info.name, action.pid, self._pid(info.namespec))

    def hold(self, action: Hold, now_s: float) -> None:
        log.error(
            "{} (pid {}): {}, but it was restarted {:.0f} s ago ({} in a row): not before"
            " {:.0f} s from now; see its log",
            action.program,
            action.pid,
            action.reason,
            action.since_restart_s,
            action.restarts,
            action.next_restart_s - now_s,
        )

    def resume(self) -> None:
        """Finish restarts an earlier watchdog began: start each marked program that is
        STOPPED (the earlier one's stop went through, its start never came)."""
        try:
            marked = sorted(self.markers_dir.iterdir())
        except FileNotFoundError:
            return
        states = {info.name: info for info in self.supervisor.processes()}
        for marker in marked:
            info = states.get(marker.name)
            if info is not None and info.statename == "STOPPED":
                log.warning("finishing the restart of {} that an earlier watchdog began", info.name)
                self.supervisor.start(info.namespec)
            marker.unlink(missing_ok=True)

    def _mark(self, program: str) -> Path:
        self.markers_dir.mkdir(mode=0o700, exist_ok=True)
        marker = self.markers_dir / program
        marker.touch()
        return marker

    def _pid(self, namespec: str) -> int | str:
        try:
            return self.supervisor.process(namespec).pid
        except (OSError, xmlrpc.client.Error):  # only for the log line
            return "?"


def rss_mb(pid: int) -> float | None:
    """``VmRSS`` of ``pid`` in MB (MiB: kB / 1024); None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            text = status.read(MAX_STATUS_BYTES)
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(b"VmRSS:"):
            fields: Sequence[bytes] = line.split()
            return int(fields[1]) / 1024 if len(fields) >= 2 and fields[1].isdigit() else None
    return None  # a zombie has no VmRSS


def _mtime_s(path: Path) -> float | None:
    try:
        return os.stat(path, follow_symlinks=False).st_mtime
    except FileNotFoundError:
        return None
