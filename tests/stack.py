"""The whole assistant under real supervisord, for the tests that need all of it (tests/e2e,
tests/security, the chaos suite): a data folder of its own under /tmp, ``nanoclaw init``
and ``nanoclaw up`` as a user runs them, and ``destroy`` that leaves nothing behind (the
programs, supervisord, this install's containers, the folder).

``Stack`` drives the real commands (``nanoclaw ...`` in a subprocess, with the stack's
environment) and reads supervisord's view of the programs over its XML-RPC socket.
``TerminalClient`` is the terminal chat (``nanoclaw chat``) running in a thread of the test
process for the stack's whole life: the real client code (``cli.chat.listen``,
``one_message``) on the real sockets, so a reply delivery sends at any time (not only during
a turn the test started) is received and recorded, with the time it was shown. ``post``
sends a message without waiting for its turn (re-sent with the same id until the router
acknowledges it, as the client does); ``hold_frame`` keeps the next matching frame from
delivery waiting before or after it is shown, so a test can kill delivery at that moment;
``detach``/``attach`` close and reopen the client (the user quit ``nanoclaw chat``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from supervisor.xmlrpc import SupervisorTransport

from nanoclaw_cli.chat import Terminal, listen, one_message, request
from nanoclaw_common.channels import cli_protocol as wire
from nanoclaw_common.ids import new_id
from nanoclaw_common.paths import Layout
from nanoclaw_common.sandbox.spec import LABEL_INSTALL
from nanoclaw_common.settings import Settings
from nanoclaw_common.store.async_central import AsyncCentral
from tests.environ import clean_environ
from tests.fakes.anthropic_api import text

T = TypeVar("T")

CHECKOUT: Final = Path(__file__).resolve().parents[1]
NANOCLAW: Final = str(Path(sys.executable).with_name("nanoclaw"))
PROGRAMS: Final = frozenset({"podman-api", "proxy", "router", "delivery", "sweeper", "watchdog"})
COMMAND_TIMEOUT_S: Final = 180.0


class StackError(AssertionError):
    """The stack did not start or a program is not in the state a test expects."""


@dataclass
class Stack:
    root: Path  # everything of this stack lives under it (short: Unix sockets live there)
    env: dict[str, str]
    install: str

    @classmethod
    def create(cls, *, api_url: str, api_key: str, prefix: str = "nc-stack-") -> Stack:
        """A new, empty stack folder whose programs will use the Messages API at ``api_url``
        with ``api_key``. Nothing runs yet (``start`` or the ``nanoclaw`` commands)."""
        root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        install = prefix.strip("-").replace("-", "")[:8] + secrets.token_hex(4)
        env = clean_environ("ANTHROPIC_")
        env.update(
            NANOCLAW_HOME=str(root / "data"),
            NANOCLAW_INSTALL_ID=install,
            ANTHROPIC_API_KEY=api_key,
            ANTHROPIC_BASE_URL=api_url,
        )
        return cls(root, env, install)

    @property
    def home(self) -> Path:
        return self.root / "data"

    @property
    def layout(self) -> Layout:
        return Layout(self.home)

    def settings(self) -> Settings:
        """The settings the programs load (same environment, same files)."""
        return Settings.load(self.env, cwd=CHECKOUT)

    def nanoclaw(
        self, *args: str, timeout: float = COMMAND_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [NANOCLAW, *args],
            env=self.env,
            cwd=self.root,  # not the checkout: `up` must find its config anyway
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> None:
        """``nanoclaw init`` and ``nanoclaw up``; raises unless every program runs."""
        for args in (("init",), ("up", "--timeout", "120")):
            done = self.nanoclaw(*args)
            if done.returncode != 0:
                raise StackError(
                    f"nanoclaw {' '.join(args)} failed: {done.stderr}{done.stdout}\n{self.logs()}"
                )

    # -- supervisord's view ---------------------------------------------------------------

    def pid(self, program: str) -> int:
        """Through ``nanoclaw ctl pid`` (the command a user types)."""
        done = self.nanoclaw("ctl", "pid", program)
        return int(done.stdout.strip())

    def processes(self) -> dict[str, dict[str, Any]]:
        """supervisord's ``getAllProcessInfo``, by program name (``statename``, ``pid``...)."""
        transport = SupervisorTransport(None, None, f"unix://{self.layout.supervisor_socket}")
        rpc = xmlrpc.client.ServerProxy("http://localhost", transport=transport)
        try:
            infos = rpc.supervisor.getAllProcessInfo()
        finally:
            transport.close()
        assert isinstance(infos, list)
        return {str(info["name"]): info for info in infos}

    def pids(self) -> dict[str, int]:
        """Each program's pid (0 for one that is not running)."""
        return {name: int(info["pid"]) for name, info in self.processes().items()}

    def assert_up(self, pids_before: dict[str, int]) -> None:
        """Every program RUNNING, each with the pid it had in ``pids_before``: none crashed
        and was restarted meanwhile."""
        processes = self.processes()
        states = {name: info["statename"] for name, info in processes.items()}
        pids = {name: int(info["pid"]) for name, info in processes.items()}
        if states != dict.fromkeys(PROGRAMS, "RUNNING") or pids != pids_before:
            raise StackError(
                f"programs not all up as before: states {states}, pids {pids}"
                f" (before {pids_before})\n{self.logs()}"
            )

    # -- logs, containers, the end ---------------------------------------------------------

    def log(self, program: str) -> str:
        """That program's log so far (``logs/<program>.log``, supervisord's capture)."""
        path = self.layout.logs_dir / f"{program}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def logs(self, tail_chars: int = 3000) -> str:
        """The end of every program's log: for failure messages."""
        parts = []
        for program in sorted(PROGRAMS):
            text = self.log(program)
            if text:
                parts.append(f"--- {program}.log ---\n{text[-tail_chars:]}")
        return "\n".join(parts)

    def containers(self) -> list[str]:
        """The ids of this install's containers, running or not."""
        done = subprocess.run(
            ["podman", "ps", "-a", "-q", "--filter", f"label={LABEL_INSTALL}={self.install}"],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.split()

    def destroy(self) -> None:
        """``nanoclaw down``, then force: this install's containers and the folder go."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.nanoclaw("down")
        for container in self.containers():
            subprocess.run(["podman", "rm", "-f", container], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


class TurnTimeout(AssertionError):
    """A terminal message whose turn was not over in time; ``replies`` holds what came."""

    def __init__(self, message: str, replies: list[str]) -> None:
        super().__init__(message)
        self.replies = replies


BEFORE_SHOW: Final = "before_show"
AFTER_SHOW: Final = "after_show"
FRAME_HOLD_MAX_S: Final = 4.0  # below the sender's 5 s wait for "received"


@dataclass
class FrameHold:
    """A frame held by the terminal (``TerminalClient.hold_frame``). ``before_show``: once
    released, the frame is dropped unshown and unconfirmed (as if it never arrived: the
    sender retries); ``after_show``: shown at once, the receipt held back."""

    match: Callable[[str], bool]
    stage: str
    arrived: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    arrived_at: float = 0.0
    text: str = ""

    def release(self) -> None:
        self.released.set()


class _Screen(Terminal):
    """The client's terminal, also remembering every text it showed, in order, with the
    time (``time.time()``) it showed it."""

    def __init__(self, save_dir: Path) -> None:
        super().__init__(save_dir=save_dir, interactive=False)
        self.lock = threading.Lock()
        self.shown: list[str] = []
        self.shown_at: list[float] = []
        self.holds: list[FrameHold] = []

    def show(self, line: str) -> None:
        """Remembered (``shown``), not printed: a test's output stays readable."""

    def handle(self, frame: wire.Frame) -> None:
        text = _frame_text(frame)
        hold = self._take_hold(text) if text is not None else None
        if hold is not None and hold.stage == BEFORE_SHOW:
            self._wait(hold, text or "")
            # Not shown and not confirmed: the client's listener answers nothing to a
            # connection error, so the sender retries, as after a frame lost in transit.
            raise ConnectionResetError("held frame dropped")
        super().handle(frame)
        if text is not None:
            with self.lock:
                self.shown.append(text)
                self.shown_at.append(time.time())
        if hold is not None:
            self._wait(hold, text or "")

    def _take_hold(self, text: str) -> FrameHold | None:
        with self.lock:
            for hold in self.holds:
                if hold.match(text):
                    self.holds.remove(hold)
                    return hold
        return None

    def _wait(self, hold: FrameHold, text: str) -> None:
        # Blocks the client's loop (the listener calls ``handle`` synchronously) for at most
        # FRAME_HOLD_MAX_S: the holding test kills the sender and releases at once.
        hold.text = text
        hold.arrived_at = time.time()
        hold.arrived.set()
        hold.released.wait(FRAME_HOLD_MAX_S)


def _frame_text(frame: wire.Frame) -> str | None:
    if isinstance(frame, wire.TextFrame | wire.EditFrame):
        return frame.text
    if isinstance(frame, wire.QuestionFrame):
        return frame.question
    return None


class TerminalClient:
    """``nanoclaw chat`` attached to the stack for its whole life, in a thread with its own
    event loop. ``texts()`` is everything the terminal showed; ``send`` is ``nanoclaw chat
    --message``: one message, its turn waited for the way the CLI waits for it."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.screen = _Screen(layout.home / "downloads")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="tty")
        self._server: asyncio.AbstractServer | None = None
        self._posts: dict[str, wire.Answer | None] = {}
        self._posts_lock = threading.Lock()

    def start(self) -> TerminalClient:
        self._thread.start()
        self._server = self._run(listen(wire.chat_socket(self.layout), self.screen))
        return self

    def texts(self) -> list[str]:
        with self.screen.lock:
            return list(self.screen.shown)

    def timed_texts(self) -> list[tuple[float, str]]:
        """Every text shown, with the ``time.time()`` it was shown."""
        with self.screen.lock:
            return list(zip(self.screen.shown_at, self.screen.shown, strict=True))

    def question(self) -> wire.QuestionFrame | None:
        """The last question card the terminal showed (an approval, an agent's question)."""
        return self.screen.question

    def post(self, text: str, timeout_s: float = 120.0) -> str:
        """Send ``text`` without waiting for its turn; the message's id. Like the client,
        it re-sends with the same id until the router acknowledges it (``posted``)."""
        message_id = new_id("cli")
        item = wire.SendMessage(id=message_id, text=text, sender_name="chaos")
        self._spawn(request(self.layout, item, time.monotonic() + timeout_s), message_id)
        return message_id

    def click(self, question_id: str, option: int, timeout_s: float = 30.0) -> wire.Answer:
        """Click option ``option`` (0-based) of a question card, as the client does."""
        item = wire.Click(question_id=question_id, option=option)
        return self._run(request(self.layout, item, time.monotonic() + timeout_s), timeout_s + 5)

    def posted(self) -> dict[str, wire.Answer | None]:
        """Each ``post``ed message id and the router's answer (None while it is re-sent)."""
        with self._posts_lock:
            return dict(self._posts)

    def hold_frame(self, match: Callable[[str], bool], stage: str = BEFORE_SHOW) -> FrameHold:
        """Hold the next frame whose text ``match``es (see ``FrameHold``)."""
        hold = FrameHold(match, stage)
        with self.screen.lock:
            self.screen.holds.append(hold)
        return hold

    def unhold(self, hold: FrameHold) -> None:
        """Take back a hold no frame took."""
        with self.screen.lock:
            if hold in self.screen.holds:
                self.screen.holds.remove(hold)

    def detach(self) -> None:
        """Stop listening, as when the user quits ``nanoclaw chat``: deliveries to the
        terminal fail (and are retried) until ``attach``."""
        if self._server is not None:
            self._server.close()
            self._run(self._server.wait_closed())
            self._server = None
        wire.chat_socket(self.layout).unlink(missing_ok=True)

    def attach(self) -> None:
        self._server = self._run(listen(wire.chat_socket(self.layout), self.screen))

    def _spawn(self, coro: Coroutine[Any, Any, wire.Answer], message_id: str) -> None:
        with self._posts_lock:
            self._posts[message_id] = None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)

        def done(finished: Any) -> None:
            with self._posts_lock:
                self._posts[message_id] = None if finished.exception() else finished.result()

        future.add_done_callback(done)

    def send(self, text: str, timeout_s: float, message_id: str | None = None) -> list[str]:
        """Send ``text`` (under ``message_id``, or a new id) and wait until its turn is over
        (acked, every reply delivered); the texts the terminal showed meanwhile.
        ``TurnTimeout`` past ``timeout_s``."""
        shown_before = len(self.texts())
        code = self._run(self._one_message(text, timeout_s, message_id), timeout_s + 30)
        replies = self.texts()[shown_before:]
        if code != 0:
            raise TurnTimeout(f"no complete reply to {text!r} within {timeout_s}s", replies)
        return replies

    async def _one_message(self, text: str, timeout_s: float, message_id: str | None) -> int:
        central = AsyncCentral(self.layout.central_db, readers=1)
        try:
            return await one_message(
                self.layout, central, text, timeout_s, self.screen, message_id=message_id
            )
        finally:
            await asyncio.to_thread(central.close)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._run(self._server.wait_closed())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        wire.chat_socket(self.layout).unlink(missing_ok=True)

    def _run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)


def echo_reply(body: dict[str, Any]) -> dict[str, Any]:
    """A scripted model reply (``FakeAnthropic.reply(echo_reply)``) answering the newest
    message to whoever sent it: the formatter names the origin chat in
    ``<message from="...">``, which is also its destination name. A turn with no person's
    message in it (only a system note: a refusal told to the agent, a tool's result) gets
    an internal remark and sends nothing."""
    prompt = json.dumps(body["messages"][-1]["content"])
    origins = re.findall(r'from=\\"([^"\\]+)\\"', prompt)
    texts = re.findall(r">([^<>]*)</message>", prompt)
    if not origins or not texts:
        return text("<internal>noted</internal>")
    return text(f'<message to="{origins[-1]}">echo: {texts[-1].strip()}</message>')
