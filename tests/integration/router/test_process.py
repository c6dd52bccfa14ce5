"""The router process itself: graceful SIGTERM, one instance per data folder."""

from __future__ import annotations

import subprocess
import sys

from nanoclaw_common.program import EXIT_LOCKED
from tests.integration.router.conftest import REPO, RouterProcess, World


def test_sigterm_is_graceful_and_logs_a_summary(world: World, router: RouterProcess) -> None:
    router.start()
    assert router.stop() == 0
    assert "router stopped: 0 rows committed" in router.log()


def test_a_second_router_on_the_same_folder_refuses_to_start(
    world: World, router: RouterProcess
) -> None:
    router.start()
    second = subprocess.run(
        [sys.executable, "-m", "nanoclaw_router"],
        env=router.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert second.returncode == EXIT_LOCKED
    assert router.proc is not None
    assert f"another router (pid {router.proc.pid}) holds" in second.stderr
    assert router.stop() == 0
