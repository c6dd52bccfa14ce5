"""``nanoclaw-sweeper``: liveness, retries, due work, recurrence, idle stop, container cap,
orphan reaping and ack sync (DESIGN.md §6), one pass about every second.

supervisord starts this directly. The first SIGTERM/SIGINT lets the current pass finish and
exits 0; a second signal exits at once. A storage or Podman error in a pass is logged and the
next pass retries after a capped backoff; an error that escapes the loop ends the process
non-zero and supervisord restarts it (everything the sweeper knows is on disk).
"""

from __future__ import annotations

import os
import sys
import time

import msgspec
from loguru import logger

from nanoclaw_common.alive import Proof
from nanoclaw_common.clock import now_ms
from nanoclaw_common.disk.limits import Scope
from nanoclaw_common.disk.quotas import Mechanism
from nanoclaw_common.errors import ConfigError
from nanoclaw_common.faults import FAULTS_ENV
from nanoclaw_common.lifecycle import GracefulStop
from nanoclaw_common.logs import setup_logging
from nanoclaw_common.paths import Layout
from nanoclaw_common.sandbox import Sandbox
from nanoclaw_common.settings import Settings, load_from_process
from nanoclaw_common.store import CentralStore
from nanoclaw_sweeper.sweeper import PassReport, Sweeper

log = logger.bind(component="sweeper")

PASS_INTERVAL_S = 1.0  # due work is woken within about this long of its time
MAX_ERROR_BACKOFF_S = 30.0
FULL_DISK_BACKOFF_S = 5.0


def _noteworthy(report: PassReport) -> bool:
    return bool(
        report.killed
        or report.stopped_idle
        or report.settled
        or report.woken
        or report.restarted
        or report.quarantined
        or report.deferred
        or report.orphans_removed
        or report.recurrences
        or report.disk_stopped
        or report.disk_blocked
        or report.disk_lifted
    )


def run(settings: Settings, stop: GracefulStop, *, test_faults: bool = False) -> int:
    """``test_faults``: start containers with the runner's test-only crash points armed
    (``nanoclaw_common.faults``; never in production)."""
    layout = Layout(settings.home_path)
    layout.ensure()
    central = CentralStore.open(layout.central_db)
    sandbox = Sandbox(settings, test_faults=test_faults)
    proof = Proof.of(layout, "sweeper")  # beaten by each pass, and between its sessions
    sweeper = Sweeper(settings, central, sandbox, beat=proof.beat)
    passes = errors = 0
    error_delay_s = PASS_INTERVAL_S
    log.info("sweeping every {} s (max {} containers)", PASS_INTERVAL_S, settings.max_containers)
    try:
        _require_mechanism(settings, sweeper)
        while not stop.stopping:
            proof.touch()
            started = time.monotonic()
            try:
                report = sweeper.sweep(now_ms())
            except Exception as exc:
                # Podman restarting, a locked file: log, back off (capped), try again. A
                # full disk is one condition (not a traceback a pass), and passes go on
                # often enough to resume soon after there is room.
                errors += 1
                full = sweeper.disk.disk.refused("a sweep pass", exc)
                if not full:
                    log.opt(exception=exc).error("sweep failed: {!r}", exc)
                stop.wait(error_delay_s)
                cap = FULL_DISK_BACKOFF_S if full else MAX_ERROR_BACKOFF_S
                error_delay_s = min(error_delay_s * 2, cap)
                continue
            sweeper.disk.disk.written("a sweep pass")
            error_delay_s = PASS_INTERVAL_S
            passes += 1
            if _noteworthy(report):
                log.info("pass: {}", msgspec.json.encode(report).decode())
            # Sleep to the next deadline, not a fixed interval after a slow pass.
            stop.wait(max(0.0, PASS_INTERVAL_S - (time.monotonic() - started)))
    finally:
        log.info("stopped after {} passes ({} failed)", passes, errors)
        sweeper.disk.close()
        sandbox.close()
        central.close()
    return 0


def _require_mechanism(settings: Settings, sweeper: Sweeper) -> None:
    """``disk_quota_mechanism = project`` where the kernel cannot: refuse to start (FATAL
    under supervisord) rather than run with a weaker guard than the operator asked for."""
    assert sweeper.disk.quotas is not None
    for scope in (Scope.GROUP, Scope.SESSION):
        choice = sweeper.disk.quotas.choice(scope)
        log.info("disk quotas for {} folders: {} ({})", scope, choice.mechanism, choice.reason)
        if settings.disk_quota_mechanism == "project" and choice.mechanism is not Mechanism.PROJECT:
            raise ConfigError(
                f"disk_quota_mechanism = project, but {scope} folders cannot have it:"
                f" {choice.reason}"
            )


def main() -> None:
    try:
        settings = load_from_process()
    except ConfigError as exc:
        print(f"nanoclaw-sweeper: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_logging("sweeper", settings.log_level, settings.secrets())
    stop = GracefulStop().install()
    try:
        code = run(settings, stop, test_faults=FAULTS_ENV in os.environ)
    except Exception as exc:
        logger.opt(exception=exc).critical("sweeper died: {!r}", exc)
        sys.exit(1)
    sys.exit(code)


if __name__ == "__main__":
    main()
