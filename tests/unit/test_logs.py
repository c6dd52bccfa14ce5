"""What the programs write to stderr is safe to read: no secret anywhere in a record
(tracebacks, exception chains, ids, standard-library loggers, uncaught exceptions), one line
per record, a forged line indented under its record.

Each test runs a real program entry point (or the real ``setup_logging`` with settings loaded
the way ``main()`` loads them) in a subprocess and reads its stderr."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import quote

import pytest

from nanoclaw_common.logs import TRACE_PREFIX
from nanoclaw_common.store import CentralStore
from tests.environ import clean_environ

TELEGRAM = "7000000001:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
SLACK_BOT = "xoxb-1111-2222-SeCrEtBoTtOkEn"
SLACK_APP = "xapp-1-A111-2222-SeCrEtApPtOkEn"
SIGNING = "8f742231b10e8888abcd99yyyzzz85a5"
API_KEY = "sk-ant-api03-SeCrEtKeY-0123456789"
WEBHOOK = "wh-secret-0123456789abcdef"
SECRETS = (TELEGRAM, SLACK_BOT, SLACK_APP, SIGNING, API_KEY, WEBHOOK)
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} [A-Z]+ ")


def program_env(home: Path) -> dict[str, str]:
    env = clean_environ("ANTHROPIC_", "TELEGRAM_", "SLACK_")
    env.update(
        NANOCLAW_HOME=str(home),
        TELEGRAM_BOT_TOKEN=TELEGRAM,
        SLACK_BOT_TOKEN=SLACK_BOT,
        SLACK_APP_TOKEN=SLACK_APP,
        SLACK_SIGNING_SECRET=SIGNING,
        ANTHROPIC_API_KEY=API_KEY,
        NANOCLAW_WEBHOOK_SECRETS=f"ci={WEBHOOK}",
        PYTHONPATH=str(Path.cwd()),
    )
    return env


def run_script(script: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        check=False,
        text=True,
        env=program_env(home),
        cwd=home,
        timeout=60,
    )


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text
        assert quote(secret, safe="") not in text
    # Not even the distinctive middle of one (a secret cut by a repr or a line break).
    assert "SeCrEt" not in text and "AAHdqTcv" not in text


def assert_one_line_records(text: str) -> None:
    """Every line is a record's first line or an indented traceback line."""
    for line in text.splitlines():
        assert RECORD_START.match(line) or line.startswith(TRACE_PREFIX), line


def test_every_part_of_a_record_is_masked(home: Path) -> None:
    result = run_script(
        """
        import logging, threading, warnings
        from loguru import logger
        from nanoclaw_common.logs import setup_logging
        from nanoclaw_common.settings import load_from_process

        settings = load_from_process()
        setup_logging("router", settings.log_level, settings.secrets())
        log = logger.bind(component="telegram")

        def call_platform():
            token = settings.telegram_bot_token  # a local variable holding the secret
            url = "https://api.telegram.org/bot" + token + "/getUpdates"
            raise ConnectionError(f"cannot reach {url}")

        def fetch():
            try:
                call_platform()
            except ConnectionError as exc:
                raise RuntimeError("poll failed: " + settings.slack_app_token) from exc

        try:
            fetch()
        except RuntimeError as exc:
            log.exception("inbound failed: {}", exc, chat=settings.slack_bot_token)
            log.opt(exception=exc).error("again {!r}", exc)
        # A library logging through the standard library, with the token URL-encoded.
        encoded = settings.telegram_bot_token.replace(":", "%3A")
        logging.getLogger("httpx").warning("HTTP Request: POST %s", "https://x/bot" + encoded)
        try:
            fetch()
        except RuntimeError:
            logging.getLogger("aiohttp.server").exception("Error handling request")
        warnings.warn("key " + settings.anthropic_api_key)
        worker = threading.Thread(target=fetch)
        worker.start()
        worker.join()
        log.info("webhook secret {} signing {}", settings.webhook_secrets["ci"],
                 settings.slack_signing_secret)
        fetch()  # uncaught: the process dies through sys.excepthook
        """,
        home,
    )
    assert result.returncode == 1
    err = result.stderr
    assert_no_secret(err)
    # Five records with a traceback, each a chain of two exceptions.
    assert err.count("Traceback (most recent call last)") == 10
    assert "The above exception was the direct cause" in err  # the chain is printed
    assert "inbound failed: poll failed: ***" in err
    assert "(chat=***)" in err
    assert "bot***/getUpdates" in err
    assert "uncaught RuntimeError in thread" in err
    assert "CRITICAL router uncaught RuntimeError" in err
    assert_one_line_records(err)


def test_a_forged_line_stays_inside_its_record(home: Path) -> None:
    forged = "2026-01-01 00:00:00.000 INFO    delivery [delivery] delivered out-1"
    result = run_script(
        f"""
        from loguru import logger
        from nanoclaw_common.logs import setup_logging
        setup_logging("delivery", "INFO", [])
        log = logger.bind(component="delivery")
        chat = "123\\n{forged}\\r\\x1b[2J\\u202e"
        log.info("sending to {{}}", chat, chat=chat)
        try:
            raise ValueError("bad chat " + chat)
        except ValueError:
            log.exception("failed")
        log.info("{{}}", "x" * 300_000)
        """,
        home,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert not any(line.startswith(forged) for line in lines)
    assert "sending to 123\\x0a2026-01-01" in lines[0]
    assert "\\x1b[2J\\u202e" in lines[0] and "\x1b" not in result.stderr
    assert_one_line_records(result.stderr)
    assert len(lines[-1]) < 21_000 and "(cut: 300000 chars)" in lines[-1]


ROUTER_CRASH = """
import sys
import nanoclaw_router.__main__ as program
from nanoclaw_router.app import Router

async def crash(self, stopped):
    token = self.settings.telegram_bot_token
    raise RuntimeError("telegram said no to " + token)

Router.run = crash
program.main()
"""
DELIVERY_CRASH = """
import nanoclaw_delivery.__main__ as program

async def crash(settings, layout, stop, faults=None):
    key = settings.anthropic_api_key
    raise RuntimeError("cannot start with " + key + settings.slack_bot_token)

program.serve = crash
program.main()
"""
SWEEPER_CRASH = """
import nanoclaw_sweeper.__main__ as program

def crash(settings, layout):
    secret = settings.slack_signing_secret
    raise RuntimeError("sweep " + secret)

program.serve = crash
program.main()
"""
PROXY_CRASH = """
import nanoclaw_proxy.__main__ as program

async def crash(settings, *_serving):
    raise RuntimeError("upstream refused " + settings.anthropic_api_key)

program.run = crash
program.main()
"""
WATCHDOG_CRASH = """
import os
import nanoclaw_watchdog.__main__ as program
from nanoclaw_common.settings import load_from_process

os.environ["SUPERVISOR_SERVER_URL"] = "unix:///nonexistent/supervisor.sock"

def crash(watchdog, listener):
    token = load_from_process().telegram_bot_token
    raise RuntimeError("restart failed for " + token)

program.serve = crash
program.main()
"""
CLI_LOGS = """
import sys
from loguru import logger
from nanoclaw_common.store.central import CentralStore
from nanoclaw_common.settings import load_from_process
import nanoclaw_cli as program

def failing(self, limit):
    try:
        raise OSError("read failed for " + load_from_process().webhook_secrets["ci"])
    except OSError:
        logger.exception("listing drops failed")
    return []

CentralStore.list_drops = failing
sys.argv = ["nanoclaw", "dropped", "list"]
program.main()
"""


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (ROUTER_CRASH, "router died"),
        (DELIVERY_CRASH, "delivery died"),
        (SWEEPER_CRASH, "sweeper died"),
        (PROXY_CRASH, "proxy died"),
        (WATCHDOG_CRASH, "watchdog died"),
        (CLI_LOGS, "listing drops failed"),
    ],
    ids=["router", "delivery", "sweeper", "proxy", "watchdog", "cli"],
)
def test_every_program_masks_its_tracebacks(
    home: Path, central: CentralStore, script: str, expected: str
) -> None:
    """Each console script's ``main()`` configures the masked sink with every configured
    secret before anything can fail."""
    result = run_script(script, home)
    assert expected in result.stderr, result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert_no_secret(result.stderr + result.stdout)
    assert_one_line_records(result.stderr)
