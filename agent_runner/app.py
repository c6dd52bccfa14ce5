"""``nanoclaw-agent-runner``: the program inside each session's container (``__main__``
hardens the process first, then calls ``run`` here).

Reads ``<session>/runner.json`` (``RunnerConfig``), the run id from the environment
(``NANOCLAW_RUN_ID``, taken out of ``os.environ`` at once so no child inherits it) and the
proxy token (the only credential the container holds: it is worth nothing outside the proxy)
from ``<session>/agent/.proxy-token``, which it unlinks at once (``hardening``). Paths
default to the container's mounts and can be overridden, so the same program runs as a host
process in tests, taking its token the same way:

    nanoclaw-agent-runner --session-root DIR --workspace DIR [--proxy-socket PATH]

(or ``NANOCLAW_SESSION_ROOT``, ``NANOCLAW_WORKSPACE``, ``NANOCLAW_PROXY_SOCKET``; the socket
defaults to ``runner.json``'s ``proxy_socket``). ``NANOCLAW_LOG_LEVEL`` sets the log level.

SIGTERM is graceful: the batch in hand is finished and acked, then the process exits 0. A
second signal exits at once (the host then settles the claims). An idle runner that has
loaded the model SDK re-execs itself to shed it (``shed``); that is the same run going on.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from loguru import logger

from agent_runner import hardening, shed
from agent_runner.faults import Faults
from agent_runner.heartbeat import Heartbeat
from agent_runner.model import Provider
from agent_runner.paths import RunnerPaths
from agent_runner.runner import Runner
from agent_runner.watch import ChangeWatcher
from nanoclaw_common.errors import DecodeError
from nanoclaw_common.lifecycle import STOP_SIGNALS, GracefulStop
from nanoclaw_common.logs import setup_logging
from nanoclaw_common.paths import CONTAINER, SessionPaths
from nanoclaw_common.runner_config import RunnerConfig, decode_runner_config

EXIT_CONFIG = 2
EXIT_GAVE_BACK = 75  # EX_TEMPFAIL: the model stayed out of reach; the host retries the claims


def parse_args(argv: Sequence[str] | None, environ: dict[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nanoclaw-agent-runner", description=__doc__)
    parser.add_argument(
        "--session-root",
        type=Path,
        default=Path(environ.get("NANOCLAW_SESSION_ROOT", CONTAINER.session.root)),
    )
    parser.add_argument(
        "--workspace",
        type=Path,
        default=Path(environ.get("NANOCLAW_WORKSPACE", CONTAINER.workspace)),
    )
    parser.add_argument("--proxy-socket", type=Path, default=environ.get("NANOCLAW_PROXY_SOCKET"))
    parser.add_argument("--log-level", default=environ.get("NANOCLAW_LOG_LEVEL", "INFO"))
    return parser.parse_args(argv)


def make_provider(
    config: RunnerConfig, paths: RunnerPaths, token: str, stop: GracefulStop
) -> Callable[[], Provider]:
    """A factory, called at the first model call: nothing heavy is imported before."""
    made: list[Provider] = []

    def provider() -> Provider:
        if not made:
            if config.provider == "scripted":
                from agent_runner.providers.scripted import (  # noqa: PLC0415 (lazy)
                    ScriptedProvider,
                    load_script,
                )

                script = Path(config.script_path or "script.json")
                if not script.is_absolute():
                    script = paths.session.root / script
                made.append(ScriptedProvider(load_script(script), wait=stop.wait))
            else:
                from agent_runner.providers.anthropic_api import (  # noqa: PLC0415 (lazy)
                    AnthropicProvider,
                )

                made.append(
                    AnthropicProvider(
                        socket_path=paths.proxy_socket,
                        token=token,
                        model=config.model,
                        wait_s=config.proxy_wait_s,
                        wait=stop.wait,
                    )
                )
        return made[0]

    return provider


def run(argv: Sequence[str] | None = None, *, resumed: bool = False, hardened: bool = True) -> int:
    """The program. ``resumed``: this process replaced a runner of the same run that shed the
    model SDK. ``hardened``: ``hardening.forbid_dumps()`` worked."""
    environ = dict(os.environ)
    args = parse_args(argv, environ)
    # The run's private variables leave os.environ now: no child inherits them by accident.
    # A re-exec passes the run id on explicitly (and the token through a socket of its own).
    private = {key: os.environ.pop(key) for key in hardening.PRIVATE_ENV if key in os.environ}
    token_fd = private.pop(hardening.TOKEN_FD_ENV, None)
    session = SessionPaths(args.session_root)
    # The token first, whatever else fails: the file must not stay for a tool to find. A
    # resumed process has it from the process it replaced; a file now would be the agent's.
    token = ""
    token_problem: str | None = None
    try:
        if token_fd is not None:
            token = hardening.receive_token(token_fd)
        elif not resumed:
            token = hardening.take_token_file(session.agent_dir) or ""
    except hardening.TokenError as exc:
        token_problem = str(exc)
    setup_logging("agent-runner", args.log_level, secrets=[token] if token else [])
    log = logger.bind(component="main")
    run_id = private.get("NANOCLAW_RUN_ID", "")
    try:
        config = decode_runner_config((session.root / "runner.json").read_bytes())
    except (OSError, DecodeError) as exc:
        log.error("cannot read the runner config: {}", exc)
        return EXIT_CONFIG
    if not run_id:
        log.error("NANOCLAW_RUN_ID is not set")
        return EXIT_CONFIG
    try:
        faults = Faults.from_environ(environ)
    except ValueError as exc:
        log.error("{}", exc)
        return EXIT_CONFIG
    if token_problem:
        log.warning("proxy token: {}", token_problem)
    if config.provider == "anthropic" and not token:
        log.error("no proxy token (the host writes agent/.proxy-token before each start)")
        return EXIT_CONFIG
    if not hardened:
        log.warning("cannot make the process non-dumpable: tools may read its /proc entries")
    paths = RunnerPaths(
        session=session,
        workspace=args.workspace,
        proxy_socket=args.proxy_socket or Path(config.proxy_socket),
    )
    heartbeat = Heartbeat(session.heartbeat, config.heartbeat_interval_s).start()
    stop = GracefulStop().install()
    if resumed:
        # The old process blocked stop signals for the exec; one that came meanwhile is
        # delivered now, to the handler just installed.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    watcher = ChangeWatcher(session.inbound_db)
    # A signal writes a byte here, which ends the loop's wait at once.
    signal.set_wakeup_fd(watcher.wake_fd)
    log.info(
        "agent runner {} (provider {}, model {}, inotify {})",
        "resumed after shedding the model SDK" if resumed else "starting",
        config.provider,
        config.model,
        watcher.uses_inotify,
        session=config.session_id,
        run=run_id,
    )
    runner = Runner(
        config=config,
        paths=paths,
        run_id=run_id,
        provider=make_provider(config, paths, token, stop),
        stop=stop.event,
        watcher=watcher,
        resumed=resumed,
        faults=faults,
    )
    try:
        shedding = runner.run()
    except Exception:
        log.exception("agent runner died")
        return 1
    finally:
        signal.set_wakeup_fd(-1)
        heartbeat.stop()
    if runner.gave_back:
        log.info("agent runner stopped: its claims went back to the host's retry path")
        return EXIT_GAVE_BACK
    if shedding:
        return reexec(stop, session.heartbeat, private, token)
    log.info("agent runner stopped")
    return 0


def reexec(stop: GracefulStop, heartbeat: Path, private: dict[str, str], token: str) -> int:
    """Replace this process with a fresh runner (``shed``); returns only when that is not
    possible (an exit code)."""
    log = logger.bind(component="main")
    # Blocked across the exec (the mask is inherited): a SIGTERM now waits for the new
    # process's handler instead of killing it half-started. The main thread is the only one
    # left (the heartbeat's has stopped), so no other thread can take the signal meanwhile.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    if stop.stopping:  # a stop came while the loop wound down: honour it, no new process
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        log.info("agent runner stopped")
        return 0
    # The last beat of this process; the new one beats first thing (__main__).
    with contextlib.suppress(OSError):
        shed.touch_heartbeat(heartbeat)
    sys.stdout.flush()
    sys.stderr.flush()
    token_fd = hardening.pass_token(token) if token else None
    try:
        shed.reexec(
            shed.reexec_environment(
                os.environ, private=private, heartbeat=heartbeat, token_fd=token_fd
            )
        )
    except OSError as exc:
        if token_fd is not None:
            os.close(token_fd)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        # Exiting lets the host start a fresh run when work comes; nothing is in hand.
        log.error("cannot re-exec the runner ({}); exiting", exc)
        return 1
