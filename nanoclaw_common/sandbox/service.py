"""The Podman API service that podman-py talks to: ``podman system service --time=0
unix://<home>/run/podman.sock``.

In production supervisord runs it as the program ``podman-api``, through
``nanoclaw podman-service`` (which writes our containers.conf when needed, then *execs*
podman, so supervisord's signals reach podman itself). Tests and one-off CLI commands start
their own with ``PodmanService`` and stop it afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Final

from nanoclaw_common.errors import NanoclawError

READY_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 10.0
_READY_POLL_S: Final = 0.02


class PodmanUnavailable(NanoclawError):
    """The Podman API service could not be started or reached."""


def service_argv(socket_path: Path) -> list[str]:
    # --time=0: never exit on idle; supervisord (or the test) decides when it stops.
    return ["podman", "system", "service", "--time=0", f"unix://{socket_path}"]


def socket_answers(socket_path: Path) -> bool:
    """True when something accepts connections on ``socket_path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(socket_path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def remove_stale_socket(socket_path: Path) -> None:
    """A socket file nobody listens on (left by a killed service) blocks a new service."""
    if socket_path.is_socket() and not socket_answers(socket_path):
        socket_path.unlink(missing_ok=True)


class PodmanService:
    """A ``podman system service`` child process on ``socket_path``."""

    def __init__(self, socket_path: Path, env: dict[str, str]) -> None:
        self.socket_path = socket_path
        self.env = env
        # The service's own log, next to its socket (a pipe nobody reads would fill up
        # and block podman).
        self.log_path = socket_path.with_name(socket_path.name + ".log")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self, ready_timeout_s: float = READY_TIMEOUT_S) -> PodmanService:
        """Start the service and return once its socket accepts connections."""
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_socket(self.socket_path)
        try:
            with self.log_path.open("ab") as log_file:
                self.process = subprocess.Popen(
                    service_argv(self.socket_path),
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                )
        except OSError as exc:
            raise PodmanUnavailable(f"cannot run podman: {exc}") from None
        deadline = time.monotonic() + ready_timeout_s
        while not socket_answers(self.socket_path):
            if self.process.poll() is not None:
                error = self.log_path.read_text(errors="replace")[-2000:].strip()
                raise PodmanUnavailable(f"podman system service exited: {error}")
            if time.monotonic() > deadline:
                self.stop()
                raise PodmanUnavailable(f"podman system service not ready in {ready_timeout_s}s")
            time.sleep(_READY_POLL_S)
        return self

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """TERM, a bounded wait, then KILL (the containers keep running: conmon owns them)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.socket_path.unlink(missing_ok=True)

    def __enter__(self) -> PodmanService:
        return self.start() if self.process is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def exec_service(socket_path: Path, env: dict[str, str]) -> None:
    """Replace this process with the service (for supervisord's ``podman-api`` program)."""
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_socket(socket_path)
    argv = service_argv(socket_path)
    os.execvpe(argv[0], argv, env)
