"""The chaos suite's stack: the whole assistant under real supervisord (``tests/stack.py``),
Telegram through the real python-telegram-bot against ``tests/fakes/telegram_api.py``, the
terminal chat, real Podman containers whose runners use the real anthropic SDK through the
real credential proxy to ``tests/fakes/anthropic_api.py``, answered by ``ChaosModel``.

Chats (each name is also the agent's destination name and the prefix of its messages'
tags): ``terminal`` (the owner's terminal), ``tga`` and ``tgb`` (Telegram groups) for the
agent group ``main``, one session each; ``tgc`` and ``tgd`` for the group ``ops``, in one
``agent-shared`` session, so replies of one session must be told apart by chat. ``main``
and ``ops`` may message each other.

The harness sends (``send``), kills (``sigkill``, ``kill_container``), restarts
(``restart``), arms crash points (``arm``, ``fired``), and records every such act with its
wall-clock time (``events``), so that the ledger can name the act nearest to any problem.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import os
import re
import signal
import subprocess
import threading
import time
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from supervisor.xmlrpc import SupervisorTransport

from nanoclaw_common.faults import FAULTS_ENV, FIRED_LOG, SESSION_FOLDER
from nanoclaw_common.paths import SessionPaths
from nanoclaw_common.sandbox import runtime
from nanoclaw_common.sandbox.spec import container_name
from nanoclaw_common.settings import Settings
from nanoclaw_common.states import SessionMode, UnknownSenderPolicy
from nanoclaw_common.store import CentralStore, InboundReader, OutboundReader
from nanoclaw_common.store.rows import AgentGroup, Session
from tests.chaos.model import ChaosModel
from tests.entities import wire
from tests.environ import AGENT_IMAGE
from tests.fakes.anthropic_api import FakeAnthropic
from tests.fakes.telegram_api import FakeTelegram
from tests.stack import Stack, StackError, TerminalClient
from tests.waiting import WaitTimeout, wait_until

API_KEY: Final = "sk-ant-api03-NANOCLAW-CHAOS-" + "c4O" * 12
KILLED_PROGRAMS: Final = ("router", "delivery", "sweeper", "proxy")
RESTARTED_PROGRAMS: Final = ("router", "delivery", "sweeper", "proxy", "podman-api", "watchdog")
STARTSECS: Final = 2.0  # supervisord.conf: a program younger than this that dies is BACKOFF
POLL_S: Final = 0.05
_WATCHDOG_RESTART: Final = re.compile(
    r"^(?P<at>\S+ \S+) \w+ +watchdog .*restarting (?P<program>\S+) \(pid \d+\): (?P<why>.*)$"
)
TELEGRAM_USER: Final = 4242  # a member of every group: no admin


@dataclass(frozen=True)
class Chat:
    name: str  # destination name, tag prefix
    channel: str
    platform_id: str
    group: str  # agent group folder


CHATS: Final = (
    Chat("terminal", "cli", "local", "main"),
    Chat("tga", "telegram", "-1001", "main"),
    Chat("tgb", "telegram", "-1002", "main"),
    Chat("tgc", "telegram", "-1003", "ops"),
    Chat("tgd", "telegram", "-1004", "ops"),
)
CHAT_BY_NAME: Final = {chat.name: chat for chat in CHATS}


@dataclass
class Message:
    """One message the suite sent, and what it expects back."""

    tag: str  # <chat>-<n>
    chat: str
    kind: str  # "" or a ChaosModel kind
    at: float  # time.time() when handed to the platform
    platform_message_id: str  # the router's message id (Telegram t<chat>_<id>, cli-…)

    @property
    def text(self) -> str:
        return f"ping {self.tag} {self.kind}".strip()


@dataclass
class Event:
    """Something the suite did to the stack."""

    at: float  # time.time() of the act
    program: str  # router, delivery, ..., or "container:<chat>"
    action: str  # sigkill | restart | forced (a crash point fired) | container-kill | stop | start
    detail: str = ""
    back_at: float = 0.0  # when supervisord ran a new process (0: not applicable / unknown)

    def describe(self, reference: float | None = None) -> str:
        when = f"{self.at - reference:+.2f}s" if reference is not None else f"{self.at:.2f}"
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.action} {self.program} at {when}{extra}"


@dataclass
class ChaosStack:
    stack: Stack
    fake_api: FakeAnthropic
    telegram: FakeTelegram
    terminal: TerminalClient
    model: ChaosModel
    faults_dir: Path
    groups: dict[str, AgentGroup]
    messages: list[Message] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    _counters: dict[str, Iterator[int]] = field(default_factory=dict)
    _armed_after: dict[str, int] = field(default_factory=dict)
    refused_on_purpose: set[str] = field(default_factory=set)  # rows the scenes forged
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- the stack ---------------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        return self.stack.settings()

    def central(self) -> contextlib.closing[CentralStore]:
        return contextlib.closing(CentralStore.open(self.stack.layout.central_db))

    def sessions(self) -> dict[str, Session]:
        """Chat name -> its session, for the chats that have one yet (``tgc`` and ``tgd``
        share ``ops``'s one session)."""
        found: dict[str, Session] = {}
        with self.central() as central:
            by_chat = {
                chat.name: central.find_messaging_group(chat.channel, chat.platform_id)
                for chat in CHATS
            }
            for chat in CHATS:
                group = self.groups[chat.group]
                active = central.list_sessions(agent_group_id=group.id, status="active")
                if chat.group == "ops":
                    # agent-shared: the group's newest active session serves every chat
                    newest = max(active, key=lambda s: s.created_at_ms, default=None)
                    if newest is not None:
                        found[chat.name] = newest
                    continue
                messaging = by_chat[chat.name]
                for session in active:
                    if messaging is not None and session.messaging_group_id == messaging.id:
                        found[chat.name] = session
        return found

    def session_paths(self, session: Session) -> SessionPaths:
        return self.stack.layout.session(session.agent_group_id, session.id)

    def readers(self, session: Session) -> tuple[InboundReader, OutboundReader]:
        paths = self.session_paths(session)
        return InboundReader(paths.inbound_db), OutboundReader(paths.outbound_db)

    # -- sending -------------------------------------------------------------------------------

    def reserve(self, chat_name: str) -> str:
        """The chat's next tag, for a ``send`` that something must wait for first."""
        with self._lock:
            counter = self._counters.setdefault(chat_name, itertools.count(1))
            return f"{chat_name}-{next(counter)}"

    def send(self, chat_name: str, kind: str = "", tag: str | None = None) -> Message:
        """Send a ``ping`` (of ``kind``) from a person in that chat: the chat's next tag,
        or ``tag`` (``reserve``d)."""
        chat = CHAT_BY_NAME[chat_name]
        tag = tag or self.reserve(chat_name)
        text = f"ping {tag} {kind}".strip()
        at = time.time()
        if chat.channel == "cli":
            platform_id = self.terminal.post(text)
        else:
            _update, number = self.telegram.push_message(
                int(chat.platform_id), text, user_id=TELEGRAM_USER, title=chat.name
            )
            platform_id = f"t{chat.platform_id}_{number}"
        message = Message(tag, chat_name, kind, at, platform_id)
        with self._lock:
            self.messages.append(message)
        return message

    # -- supervisord -----------------------------------------------------------------------------

    def record(self, event: Event) -> Event:
        with self._lock:
            self.events.append(event)
        return event

    def pid(self, program: str) -> int:
        return int(self.stack.processes()[program]["pid"])

    def wait_until_killable(self, program: str, timeout_s: float = 30.0) -> None:
        """RUNNING past supervisord's ``startsecs`` (a younger death counts as a failed
        start, and five of those make the program FATAL)."""

        def killable() -> bool:
            info = self.stack.processes()[program]
            started_s = time.time() - float(info["start"])
            return bool(info["statename"] == "RUNNING") and started_s > STARTSECS + 0.5

        wait_until(
            killable,
            timeout_s=timeout_s,
            what=f"{program} RUNNING for {STARTSECS} s",
            poll_s=POLL_S,
            detail=lambda: (
                f"{program} is {self.stack.processes()[program]['statename']}\n" + self.logs()
            ),
        )

    def wait_new_pid(self, program: str, old_pid: int, timeout_s: float = 30.0) -> float:
        """Wait until supervisord runs ``program`` with a pid other than ``old_pid``; the
        time it was seen."""

        def restarted() -> bool:
            info = self.stack.processes()[program]
            return bool(info["pid"]) and int(info["pid"]) != old_pid

        wait_until(
            restarted,
            timeout_s=timeout_s,
            what=f"{program} restarted",
            poll_s=POLL_S,
            detail=self.logs,
        )
        return time.time()

    def sigkill(self, program: str, detail: str = "") -> Event:
        """SIGKILL the program's process; supervisord restarts it (``autorestart``)."""
        self.wait_until_killable(program)
        pid = self.pid(program)
        event = self.record(Event(time.time(), program, "sigkill", detail))
        os.kill(pid, signal.SIGKILL)
        event.back_at = self.wait_new_pid(program, pid)
        return event

    def restart(self, program: str) -> Event:
        """``nanoclaw ctl restart``: SIGTERM (graceful), then a new process."""
        self.wait_until_killable(program)
        event = self.record(Event(time.time(), program, "restart"))
        self._ctl("restart", program)
        event.back_at = time.time()
        return event

    def stop(self, program: str) -> Event:
        self.wait_until_killable(program)
        event = self.record(Event(time.time(), program, "stop"))
        self._ctl("stop", program)
        return event

    def start(self, program: str) -> Event:
        """Start a stopped program without waiting for supervisord's ``startsecs``: an
        armed crash point may end the new process sooner (supervisord then retries)."""
        event = self.record(Event(time.time(), program, "start"))
        transport = SupervisorTransport(None, None, f"unix://{self.stack.layout.supervisor_socket}")
        try:
            rpc = xmlrpc.client.ServerProxy("http://localhost", transport=transport)
            rpc.supervisor.startProcess(program, False)
        finally:
            transport.close()
        event.back_at = time.time()
        return event

    def _ctl(self, verb: str, program: str) -> None:
        done = self.stack.nanoclaw("ctl", verb, program, timeout=120)
        if done.returncode != 0:
            raise StackError(f"nanoclaw ctl {verb} {program}: {done.stdout}{done.stderr}")

    def kill_container(self, chat_name: str, detail: str = "") -> Event | None:
        """``podman kill`` the chat's session container, if it runs."""
        session = self.sessions().get(chat_name)
        if session is None:
            return None
        name = container_name(self.settings.install, session.id)
        event = Event(time.time(), f"container:{chat_name}", "container-kill", detail)
        done = self.podman("kill", name)
        if done.returncode != 0:
            return None  # not running right now (stopped, or being replaced)
        return self.record(event)

    def container_running(self, chat_name: str) -> bool:
        """Whether the chat's session container runs right now (as Podman says)."""
        session = self.sessions().get(chat_name)
        if session is None:
            return False
        name = container_name(self.settings.install, session.id)
        done = self.podman("container", "inspect", "--format", "{{.State.Running}}", name)
        return done.returncode == 0 and done.stdout.strip() == "true"

    def forge_row(self, chat_name: str, text: str) -> dict[str, Any]:
        """Write, from inside the chat's session container and as its agent user (what a
        prompt-injected agent can do), an outbound row with an *even* seq above every seq
        so far: a row delivery refuses as it reads it (crash row 4a). Its id and seq; the
        key goes into ``refused_on_purpose``, so the ledger does not count its refusal."""
        session = self.sessions()[chat_name]
        owner = self.session_paths(session).agent_dir.stat()
        done = self.podman(
            "exec",
            "-i",
            "--user",
            f"{owner.st_uid}:{owner.st_gid}",
            container_name(self.settings.install, session.id),
            "/opt/venv/bin/python",
            "-c",
            _FORGE_ROW,
            json.dumps({"type": "text", "text": text}),
        )
        if done.returncode != 0:
            raise StackError(f"forging a row failed: {done.stdout}{done.stderr}")
        forged = json.loads(done.stdout.strip().splitlines()[-1])
        with self._lock:
            self.refused_on_purpose.add(str(forged["id"]))
        return dict(forged)

    def podman(self, *args: str) -> subprocess.CompletedProcess[str]:
        conf = runtime.conf_path(self.stack.layout)
        return subprocess.run(
            ["podman", *args],
            env=runtime.podman_env(conf if conf.is_file() else None),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    # -- crash points (nanoclaw_common.faults) ---------------------------------------------------

    def arm(self, point: str, **only: str) -> None:
        """Arm ``point`` (for a crash whose facts match ``only``, e.g. ``content=...``);
        ``wait_fired`` then waits for its next firing."""
        with self._lock:
            self._armed_after[point] = sum(1 for r in self.fired() if r["point"] == point)
        (self.faults_dir / point).write_text(json.dumps(only) if only else "")

    def disarm(self, point: str) -> bool:
        """Take an armed point back; False if it fired meanwhile."""
        try:
            (self.faults_dir / point).unlink()
        except FileNotFoundError:
            return False
        return True

    def fired(self) -> list[dict[str, Any]]:
        """Every crash point of a host program that fired, in order (``fired.jsonl``)."""
        return _records(self.faults_dir / FIRED_LOG)

    def wait_fired(self, point: str, timeout_s: float) -> dict[str, Any] | None:
        """The record of ``point`` firing since it was armed, or None past the timeout;
        once it fired, supervisord's restart of the program is awaited and recorded."""
        with self._lock:
            before = self._armed_after.get(point, 0)

        def record_since_armed() -> dict[str, Any] | None:
            records = [record for record in self.fired() if record["point"] == point]
            return records[-1] if len(records) > before else None

        try:
            record = wait_until(
                record_since_armed, timeout_s=timeout_s, what=f"{point} fired", poll_s=POLL_S
            )
        except WaitTimeout:
            return None  # the scene records the miss
        program = str(record["program"])
        event = self.record(
            Event(record["at_ms"] / 1000, program, "forced", point.split(".", 1)[1])
        )
        event.back_at = self.wait_new_pid(program, int(record["pid"]))
        return record

    # -- the runner's crash points (in a session's container) ------------------------------------

    def runner_faults(self, chat_name: str) -> Path:
        """The folder the runner of ``chat_name``'s session arms its points from, made
        writable for the container's user (it takes the armed file, writes the marker)."""
        session = self.sessions()[chat_name]
        agent_dir = self.session_paths(session).agent_dir
        folder = agent_dir / SESSION_FOLDER
        folder.mkdir(exist_ok=True)
        owner = agent_dir.stat()
        os.chown(folder, owner.st_uid, owner.st_gid)
        return folder

    def arm_runner(self, chat_name: str, point: str) -> int:
        """Arm ``runner.<point>`` for the chat's session; the markers seen so far."""
        folder = self.runner_faults(chat_name)
        before = len(_records(folder / FIRED_LOG))
        (folder / f"runner.{point}").touch()
        return before

    def wait_runner_fired(
        self, chat_name: str, point: str, before: int, timeout_s: float
    ) -> dict[str, Any] | None:
        folder = self.runner_faults(chat_name)

        def record_since_armed() -> dict[str, Any] | None:
            records = [r for r in _records(folder / FIRED_LOG) if r["point"] == f"runner.{point}"]
            return records[-1] if len(records) > before else None

        try:
            record = wait_until(
                record_since_armed,
                timeout_s=timeout_s,
                what=f"runner.{point} fired in {chat_name}'s container",
                poll_s=POLL_S,
            )
        except WaitTimeout:
            with contextlib.suppress(FileNotFoundError):
                (folder / f"runner.{point}").unlink()
            return None  # the scene records the miss
        self.record(Event(record["at_ms"] / 1000, f"container:{chat_name}", "forced", point))
        return record

    def platform_texts(self, chat_name: str) -> list[tuple[float, str, float]]:
        """What the chat shows: (time accepted, text, seconds its answer was held)."""
        chat = CHAT_BY_NAME[chat_name]
        if chat.channel == "cli":
            return [(at, text, 0.0) for at, text in self.terminal.timed_texts()]
        return [
            (sent.at, sent.text or f"[document {sent.filename}]", sent.held_s)
            for sent in self.telegram.sent()
            if sent.chat_id == chat.platform_id and sent.method in ("sendMessage", "sendDocument")
        ]

    def logs(self) -> str:
        return self.stack.logs()

    def watchdog_restarts(self) -> list[Event]:
        """The restarts the watchdog made on its own (a program it judged hung or too big):
        none is expected in a healthy run."""
        found = []
        for line in self.stack.log("watchdog").splitlines():
            hit = _WATCHDOG_RESTART.match(line)
            if hit is not None:
                at = dt.datetime.strptime(hit["at"], "%Y-%m-%d %H:%M:%S.%f").timestamp()
                found.append(Event(at, hit["program"], "watchdog-restart", hit["why"]))
        return found


# Runs in the container: sqlite3 on the session's own outbound.db, as the agent could.
_FORGE_ROW = """
import json, sqlite3, sys, time
db = sqlite3.connect("/session/agent/outbound.db", timeout=30, isolation_level=None)
db.execute("BEGIN IMMEDIATE")
top = db.execute("SELECT ifnull(max(seq), 0) FROM messages_out").fetchone()[0]
inbound = sqlite3.connect("file:/session/inbound.db?mode=ro", uri=True)
top = max(top, inbound.execute("SELECT ifnull(max(seq), 0) FROM messages_in").fetchone()[0])
seq = top + 2 if top % 2 == 0 else top + 1
now = int(time.time() * 1000)
row = {"id": "forged-%d" % now, "seq": seq, "timestamp_ms": now, "kind": "chat",
       "content": sys.argv[1]}
names = sorted(row)
sql = "INSERT INTO messages_out (%s) VALUES (%s)" % (", ".join(names), ", ".join("?" * len(names)))
db.execute(sql, [row[n] for n in names])
db.execute("COMMIT")
print(json.dumps({"id": row["id"], "seq": seq}))
"""


def _records(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def start_chaos_stack(environment: dict[str, str]) -> ChaosStack:
    """Start everything (``close_chaos_stack`` stops it). ``environment``: settings for the
    programs (the suite shortens delivery's backoff)."""
    if subprocess.run(["podman", "image", "exists", AGENT_IMAGE], check=False).returncode:
        raise StackError(f"the agent image {AGENT_IMAGE} is missing: `nanoclaw image build`")
    model = ChaosModel()
    fake_api = FakeAnthropic(api_key=API_KEY, responder=model).start()
    telegram = FakeTelegram().start()
    stack = Stack.create(api_url=fake_api.url, api_key=API_KEY, prefix="nc-chaos-")
    faults_dir = stack.root / "faults"
    faults_dir.mkdir()
    stack.env.update(
        {
            "TELEGRAM_BOT_TOKEN": telegram.token,
            "TELEGRAM_API_BASE_URL": telegram.base_url,
            FAULTS_ENV: str(faults_dir),
            **environment,
        }
    )
    terminal: TerminalClient | None = None
    try:
        stack.start()
        groups = configure(stack)
        terminal = TerminalClient(stack.layout).start()
        return ChaosStack(stack, fake_api, telegram, terminal, model, faults_dir, groups)
    except BaseException:
        if terminal is not None:
            terminal.close()
        stack.destroy()
        telegram.stop()
        fake_api.stop()
        raise


def configure(stack: Stack) -> dict[str, AgentGroup]:
    """The chats and groups of the module docstring (``nanoclaw init`` made ``main``, the
    terminal and its wiring)."""
    with contextlib.closing(CentralStore.open(stack.layout.central_db)) as central:
        main = central.find_agent_group("main")
        assert main is not None, "nanoclaw init made no main group"
        ops = central.create_agent_group("Ops", central.unique_folder("ops"))
        groups = {"main": main, "ops": ops}
        for chat in CHATS:
            if chat.channel == "cli":
                continue
            mode = SessionMode.AGENT_SHARED if chat.group == "ops" else SessionMode.SHARED
            # Named before it is wired: the wiring names the group's destination after it.
            made = central.create_messaging_group(
                chat.channel,
                chat.platform_id,
                name=chat.name,
                is_group=True,
                unknown_sender_policy=UnknownSenderPolicy.PUBLIC,
            )
            wire(central, made, groups[chat.group], session_mode=mode)
        central.add_destination(main.id, "ops", "agent", ops.id)
        central.add_destination(ops.id, "main", "agent", main.id)
    return groups


def close_chaos_stack(chaos: ChaosStack, *, keep: bool = False) -> None:
    """Stop everything; ``keep`` leaves the data folder (stopped) for a post-mortem."""
    chaos.terminal.close()
    if keep:
        chaos.stack.nanoclaw("down")
        print(f"chaos stack kept in {chaos.stack.root}")
    else:
        chaos.stack.destroy()
    chaos.telegram.stop()
    chaos.fake_api.stop()
