"""``nanoclaw-sweeper``: liveness, retries, due work, recurrence, idle stop, container cap,
orphan reaping and ack sync (DESIGN.md §6), one pass about every second (``loop``).

supervisord starts this directly (``nanoclaw_common.program``). The first SIGTERM/SIGINT
lets the current pass finish and exits 0; a second signal exits at once. A storage or
Podman error in a pass is logged and the next pass retries after a capped backoff; an error
that escapes the loop ends the process non-zero ("sweeper died") and supervisord restarts
it (everything the sweeper knows is on disk).
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from loguru import logger

from nanoclaw_common.alive import Proof
from nanoclaw_common.disk.limits import Scope
from nanoclaw_common.disk.quotas import Mechanism
from nanoclaw_common.errors import ConfigError
from nanoclaw_common.faults import FAULTS_ENV
from nanoclaw_common.lifecycle import GracefulStop
from nanoclaw_common.paths import Layout
from nanoclaw_common.program import run_program
from nanoclaw_common.sandbox import Sandbox
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore
from nanoclaw_sweeper.loop import PASS_INTERVAL_S, SweepLoop
from nanoclaw_sweeper.sweeper import Sweeper

log = logger.bind(component="sweeper")


def serve(settings: Settings, layout: Layout) -> None:
    """Sweep until a stop signal. With ``NANOCLAW_FAULTS`` set, containers start with the
    runner's test-only crash points armed (``nanoclaw_common.faults``; never in
    production)."""
    stop = GracefulStop().install()
    central = CentralStore.open(layout.central_db)
    sandbox = Sandbox(settings, test_faults=FAULTS_ENV in os.environ)
    proof = Proof.of(layout, "sweeper")  # beaten by each pass, and between its sessions
    sweeper = Sweeper(settings, central, sandbox, beat=proof.beat)
    loop = SweepLoop(sweeper, touch=proof.touch, full_disk=sweeper.disk.disk)
    log.info("sweeping every {} s (max {} containers)", PASS_INTERVAL_S, settings.max_containers)
    try:
        _require_mechanism(settings, sweeper)
        loop.run(stop)
    finally:
        log.info("stopped after {} passes ({} failed)", loop.passes, loop.errors)
        sweeper.disk.close()
        sandbox.close()
        central.close()


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


def main() -> NoReturn:
    sys.exit(run_program("sweeper", serve))


if __name__ == "__main__":
    main()
