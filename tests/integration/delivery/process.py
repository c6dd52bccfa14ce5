"""Running the real ``nanoclaw-delivery`` console script as a child process."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from nanoclaw_common.settings import Settings
from tests.environ import clean_environ
from tests.waiting import wait_until

SCRIPT = Path(sys.executable).parent / "nanoclaw-delivery"
READY_LINE = "delivery started"


class DeliveryProcess:
    def __init__(
        self, settings: Settings, log_path: Path, extra_env: Mapping[str, str] | None = None
    ) -> None:
        self.settings = settings
        self.log_path = log_path
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def env(self) -> dict[str, str]:
        env = clean_environ("SLACK_")
        env.pop("TELEGRAM_BOT_TOKEN", None)
        env.update(
            NANOCLAW_HOME=str(self.settings.home_path),
            NANOCLAW_INSTALL_ID=self.settings.install_id or "test",
            NANOCLAW_ENV_FILE=str(self.settings.home_path / "no.env"),
            NANOCLAW_LOG_LEVEL="DEBUG",
            PYTHONUNBUFFERED="1",
        )
        if self.settings.telegram_bot_token:
            env["TELEGRAM_BOT_TOKEN"] = self.settings.telegram_bot_token
            env["TELEGRAM_API_BASE_URL"] = self.settings.telegram_api_base_url
        env.update(self.extra_env)
        return env

    def start(self, timeout_s: float = 20.0) -> DeliveryProcess:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it until it exits
        self.proc = subprocess.Popen([str(SCRIPT)], env=self.env(), stderr=log, stdout=log)
        log.close()
        self.wait_for_log(READY_LINE, timeout_s)
        return self

    def log(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[self._log_offset :].decode(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float = 20.0) -> None:
        """Until ``text`` is in the log; fails at once if delivery exited without writing it."""

        def logged() -> bool:
            if text in self.log():
                return True
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"delivery exited ({self.proc.returncode}):\n{self.log()}")
            return False

        wait_until(logged, timeout_s=timeout_s, what=f"{text!r} in the log", detail=self.log)

    def signal(self, number: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(number)

    def kill(self) -> None:
        """SIGKILL: no handler, no cleanup, exactly like an OOM kill or a power cut."""
        self.signal(signal.SIGKILL)
        self.wait()

    def wait(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
