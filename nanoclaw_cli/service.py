"""``nanoclaw up``, ``down`` and ``ctl``: the programs under supervisord.

supervisord is the process manager (``supervisord.conf`` in the checkout); these commands
only start it with the right environment, wait until every program is up, and shut it down
in an order that loses nothing: the watchdog and the workers first (no new wakes), then the
agent containers (TERM, so a turn in progress ends at a clean point; an unfinished one is
retried at the next start), then supervisord with the Podman API service.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import click

from nanoclaw_cli.context import CliContext, pass_context
from nanoclaw_cli.output import console, print_json, print_table, styled
from nanoclaw_common.errors import NanoclawError
from nanoclaw_common.sandbox.service import socket_answers

START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 60.0
WORKERS: Final = ("router", "delivery", "sweeper")  # the ones that wake or feed containers
WATCHDOG: Final = "watchdog"  # the event listener that restarts hung programs
_POLL_S: Final = 0.25


def find_config(explicit: str | None) -> Path:
    """``--config``, else the checkout's supervisord.conf (the folder holding ``.venv``),
    else one in the current folder."""
    if explicit:
        candidates = [Path(explicit)]
    else:
        candidates = [Path(sys.prefix).parent / "supervisord.conf", Path("supervisord.conf")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise click.ClickException(
        f"no supervisord.conf at {', '.join(str(c) for c in candidates)}; pass --config"
    )


def _tool(name: str) -> str:
    """supervisord / supervisorctl from this virtualenv (they are our dependency)."""
    return str(Path(sys.executable).with_name(name))


def _environment(ctx: CliContext) -> dict[str, str]:
    # supervisord.conf reads the data folder from NANOCLAW_HOME; it must be absolute, since
    # the programs run in the checkout folder, wherever this command was run from.
    return {**os.environ, "NANOCLAW_HOME": str(ctx.settings.home_path.resolve())}


def _ctl_argv(config: Path, args: Sequence[str]) -> list[str]:
    return [_tool("supervisorctl"), "-c", str(config), *args]


def _ctl(ctx: CliContext, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _ctl_argv(config, args), env=_environment(ctx), capture_output=True, text=True, check=False
    )


def program_states(output: str) -> dict[str, str]:
    """``supervisorctl status`` lines (``name   STATE   details``) as name → state."""
    states: dict[str, str] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isupper():
            states[parts[0]] = parts[1]
    return states


def _states(ctx: CliContext, config: Path) -> dict[str, str]:
    return program_states(_ctl(ctx, config, "status").stdout)


def _running(ctx: CliContext) -> bool:
    return socket_answers(ctx.layout.supervisor_socket)


def _show(ctx: CliContext, states: dict[str, str]) -> None:
    if ctx.as_json:
        print_json(states)
    else:
        print_table([{"program": n, "state": s} for n, s in sorted(states.items())])


@click.command()
@click.option("--config", help="supervisord.conf (default: the checkout's).")
@click.option(
    "--timeout", type=float, default=START_TIMEOUT_S, show_default=True, help="Seconds to wait."
)
@pass_context
def up(ctx: CliContext, config: str | None, timeout: float) -> None:
    """Start every program under supervisord and wait until they run."""
    conf = find_config(config)
    ctx.store()  # refuses clearly when `nanoclaw init` has not run
    ctx.layout.ensure()
    if _running(ctx):
        console.print("already running")
    else:
        started = subprocess.run(
            [_tool("supervisord"), "-c", str(conf)],
            env=_environment(ctx),
            capture_output=True,
            text=True,
            check=False,
        )
        if started.returncode != 0:
            raise click.ClickException(f"supervisord did not start: {started.stderr.strip()}")
    states = wait_for_programs(ctx, conf, timeout)
    _show(ctx, states)
    bad = {name: state for name, state in states.items() if state != "RUNNING"}
    if bad:
        logs = ctx.layout.logs_dir
        raise click.ClickException(
            f"not running: {', '.join(f'{n} ({s})' for n, s in sorted(bad.items()))};"
            f" see {logs}/<program>.log"
        )


def wait_for_programs(ctx: CliContext, config: Path, timeout: float) -> dict[str, str]:
    """Every program's state once none is still starting (or when ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        if _running(ctx):
            states = _states(ctx, config)
            # STARTING, BACKOFF (a retry is coming) and EXITED (autorestart) are on their way.
            if states and all(s in ("RUNNING", "FATAL") for s in states.values()):
                return states
        time.sleep(_POLL_S)
    return states


@click.command()
@click.option("--config", help="supervisord.conf (default: the checkout's).")
@click.option("--keep-containers", is_flag=True, help="Leave the agent containers running.")
@pass_context
def down(ctx: CliContext, config: str | None, keep_containers: bool) -> None:
    """Stop the workers, the agent containers, then supervisord."""
    conf = find_config(config)
    if not _running(ctx):
        console.print("not running")
        return
    # The watchdog first: it must not restart a worker while `down` stops it (it leaves
    # stopped programs alone, but it may have judged one a moment before its stop).
    _ctl(ctx, conf, "stop", WATCHDOG)
    _ctl(ctx, conf, "stop", *WORKERS)
    if not keep_containers:
        stop_containers(ctx)
    pid = _read_pid(ctx.layout.supervisor_pid)
    shutdown = _ctl(ctx, conf, "shutdown")
    if shutdown.returncode != 0 and _running(ctx):
        raise click.ClickException(f"supervisorctl shutdown failed: {shutdown.stdout.strip()}")
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while pid is not None and _alive(pid) and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    if pid is not None and _alive(pid):
        raise click.ClickException(f"supervisord (pid {pid}) is still shutting down")
    console.print("stopped")


def stop_containers(ctx: CliContext) -> None:
    """TERM each of this install's running containers (through the Podman API service,
    which is still up at this point)."""
    from nanoclaw_common.sandbox import Sandbox  # noqa: PLC0415 - podman-py only when used

    sandbox = Sandbox(ctx.settings)
    try:
        for info in sandbox.running():
            outcome = sandbox.stop(info.session_id)
            console.print(f"container {info.name}: {outcome.value}")
    except NanoclawError as exc:
        console.print(styled(f"containers left running: {exc}", "yellow"))
    finally:
        sandbox.close()


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--config", help="supervisord.conf (default: the checkout's).")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@pass_context
def ctl(ctx: CliContext, config: str | None, args: Sequence[str]) -> None:
    """supervisorctl for this data folder: `nanoclaw ctl restart delivery`, `ctl tail -f router`."""
    conf = find_config(config)
    completed = subprocess.run(_ctl_argv(conf, args), env=_environment(ctx), check=False)
    sys.exit(completed.returncode)
