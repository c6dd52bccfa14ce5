"""The hostile-container fixture: a real stack with an agent that attacks from inside its own
real container (docs/security.md has the threat model and the table of attacks and tests).

``hostile`` is a ``HostileStack``: the router, delivery, sweeper, proxy and podman-api under
real supervisord, started by ``nanoclaw init`` and ``nanoclaw up`` in a data folder of its
own; the fake Messages API (``tests/fakes/anthropic_api.py``) behind the real credential
proxy; the agent group ``main`` wired to the terminal chat, and that chat's session; a
terminal chat client attached for the stack's whole life (``tests/stack.py``), so every
text delivery or the router sends to the terminal (replies, owner notices) is recorded.

``stack.agent()`` wakes the session's container through the real ``Sandbox`` (as the router
does) and waits until its runner has started the run. ``agent.sh``, ``agent.py`` and
``agent.write_outbound`` then act inside that container with ``podman exec --user
AGENT_UID:AGENT_GID``: the container's own user, its own tools, its own Python (the
runner's, ``/opt/venv/bin/python``) and sqlite3 — exactly what a prompt-injected agent
holds. Nothing is done for the attacker on the host side.

Scope and cost: **one stack per test module** (start-up is ``nanoclaw up``: a few seconds);
**per test**, the session's container is stopped afterwards (TERM, then KILL: whatever the
attack left running dies with it; the next ``agent()`` starts a fresh run with a fresh proxy
token) and the model replies a test scripted but did not use are dropped. The session, its
DBs, the group folder and the programs' logs carry over from test to test within a module:
a test that needs pristine ones (or that may leave a program broken) goes in a module of its
own. Don't run ``nanoclaw chat`` yourself: it would take the terminal over from the
fixture's client; use ``stack.chat``.

Test modules mark themselves as the other real-Podman tests do::

    pytestmark = pytest.mark.podman

A security test does the concrete attack, then asserts the refusal, that nothing leaked,
``stack.assert_up(pids_before)`` (every program RUNNING with the pid it had), and that the
refusal was reported (``stack.log(program)``, ``stack.received()`` for owner notices).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, Final

import pytest

from nanoclaw_common import messages
from nanoclaw_common.paths import CONTAINER, Layout
from nanoclaw_common.sandbox import Sandbox, runtime
from nanoclaw_common.sandbox.ownership import AGENT_GID, AGENT_UID
from nanoclaw_common.sandbox.service import socket_answers
from nanoclaw_common.sandbox.spec import container_name
from nanoclaw_common.sessions import refresh_projections
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore, OutboundReader
from nanoclaw_common.store.outbound import Written
from nanoclaw_common.store.rows import AgentGroup, OutboundRow, Session
from tests.environ import AGENT_IMAGE
from tests.fakes.anthropic_api import FakeAnthropic
from tests.stack import Stack, StackError, TerminalClient
from tests.waiting import wait_until

# A recognizable API key: the security tests look for it wherever the agent can reach.
CANARY_KEY: Final = "sk-ant-api03-NANOCLAW-SECURITY-CANARY-" + "q4W" * 12
AGENT_PYTHON: Final = "/opt/venv/bin/python"  # the runner's (Containerfile)
CONTAINER_OUTBOUND_DB: Final = "/session/agent/outbound.db"
CONTAINER_INBOUND_DB: Final = "/session/inbound.db"
# Between two checks of a running stack: a check may run `podman` or read a log file.
STACK_POLL_S: Final = 0.05
# The content types delivery files under kind 'chat'; every other type is 'system'.
CHAT_TYPES: Final = frozenset(struct.__struct_config__.tag for struct in messages.CHAT_OPERATIONS)
OUTBOUND_COLUMNS: Final = frozenset(OutboundRow.__struct_fields__) - {"content"}


# Runs inside the container (``agent.py``): the row a hostile agent writes with nothing but
# Python's sqlite3. ``ROW`` is filled in; the seq is allocated in the writing transaction,
# odd, above both DBs' highest (as the runner does) unless the attack chose one.
_WRITE_OUTBOUND = """
import json, secrets, sqlite3, time
row = json.loads(ROW)
db = sqlite3.connect(OUTBOUND, timeout=30, isolation_level=None)
db.execute("BEGIN IMMEDIATE")
if "seq" not in row:
    top = db.execute("SELECT ifnull(max(seq), 0) FROM messages_out").fetchone()[0]
    inbound = sqlite3.connect("file:" + INBOUND + "?mode=ro", uri=True)
    top = max(top, inbound.execute("SELECT ifnull(max(seq), 0) FROM messages_in").fetchone()[0])
    inbound.close()
    row["seq"] = top + 1 if top % 2 == 0 else top + 2
now = int(time.time() * 1000)
row.setdefault("id", "out-%d-%s" % (now, secrets.token_hex(4)))
row.setdefault("timestamp_ms", now)
if "run_id" not in row:
    found = db.execute("SELECT run_id FROM container_state WHERE id = 1").fetchone()
    row["run_id"] = found[0] if found else None
names = sorted(row)
db.execute(
    "INSERT INTO messages_out (%s) VALUES (%s)" % (", ".join(names), ", ".join("?" * len(names))),
    [row[name] for name in names],
)
db.execute("COMMIT")
print(json.dumps({"id": row["id"], "seq": row["seq"]}))
"""


class Agent:
    """The hostile agent: commands inside the session's running container, as its user."""

    def __init__(self, stack: HostileStack, container: str, run_id: str) -> None:
        self.stack = stack
        self.container = container  # the container's name
        self.run_id = run_id  # the run the fixture woke

    def exec(
        self, argv: list[str], *, stdin: str = "", timeout_s: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` in the container as the agent user, ``stdin`` on its standard input.
        ``check``: a non-zero exit raises, with what it printed. Past ``timeout_s``,
        ``subprocess.TimeoutExpired``; what it started runs on until the container stops
        (after the test)."""
        uid, gid = self.stack.container_user()
        user = f"{uid}:{gid}"
        # In /workspace, where the agent's own commands run (the container's working folder
        # is the runner's, which the agent cannot write).
        done = self.stack.podman(
            "exec", "-i", "--user", user, "--workdir", str(CONTAINER.workspace), self.container,
            *argv, stdin=stdin, timeout_s=timeout_s,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(
                f"{argv[:2]} in {self.container} exited {done.returncode}\n"
                f"stdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}"
            )
        return done

    def sh(
        self, script: str, timeout_s: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``sh -c script`` (one argument: the kernel caps it at 128 KiB; make big data
        inside the container, e.g. ``head -c 10M /dev/zero``). Its stdin is empty."""
        return self.exec(["sh", "-c", script], timeout_s=timeout_s, check=check)

    def py(
        self, code: str, timeout_s: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``code`` run by the runner's Python (read from stdin, so any size)."""
        return self.exec([AGENT_PYTHON, "-"], stdin=code, timeout_s=timeout_s, check=check)

    def write_outbound(self, content: dict[str, Any] | str, **columns: Any) -> Written:
        """Insert a ``messages_out`` row from inside the container, as a hostile agent
        would, and return its id and seq. ``content`` is a dict (written as compact JSON,
        e.g. ``{"type": "text", "text": "hi"}``; see nanoclaw_common/messages.py) or a str
        written verbatim (broken or oversized JSON). ``columns`` set any other column
        (``seq``, ``kind``, ``platform_id``, ``channel_type``, ``in_reply_to``, ``run_id``
        ...); by default: the next odd seq above both DBs, a fresh id, now, ``kind`` from the
        content's type, NULL address (the session's own chat), the current run's id."""
        unknown = set(columns) - OUTBOUND_COLUMNS
        if unknown:
            raise ValueError(f"messages_out has no column(s) {sorted(unknown)}")
        row = dict(columns)
        if isinstance(content, dict):
            row["content"] = json.dumps(content, separators=(",", ":"))
            row.setdefault("kind", "chat" if content.get("type") in CHAT_TYPES else "system")
        else:
            row["content"] = content
            row.setdefault("kind", "chat")
        code = (
            f"ROW = {json.dumps(row)!r}\nOUTBOUND = {CONTAINER_OUTBOUND_DB!r}\n"
            f"INBOUND = {CONTAINER_INBOUND_DB!r}\n{_WRITE_OUTBOUND}"
        )
        written = json.loads(self.py(code).stdout.strip().splitlines()[-1])
        return Written(str(written["id"]), int(written["seq"]))


class HostileStack:
    """See the module docstring."""

    def __init__(
        self,
        stack: Stack,
        fake_api: FakeAnthropic,
        terminal: TerminalClient,
        group: AgentGroup,
        session: Session,
    ) -> None:
        self.base = stack
        self.fake_api = fake_api
        self.terminal = terminal
        self.group = group
        self.session = session
        self.settings: Settings = stack.settings()

    @property
    def home(self) -> Path:
        return self.base.home

    @property
    def layout(self) -> Layout:
        return self.base.layout

    def central(self) -> closing[CentralStore]:
        """A fresh connection to the central DB: ``with stack.central() as central:``."""
        return closing(CentralStore.open(self.layout.central_db))

    # -- the terminal ----------------------------------------------------------------------

    def chat(self, text: str, timeout_s: float = 60) -> list[str]:
        """Send ``text`` from the terminal chat and wait until its turn is over (as
        ``nanoclaw chat --message`` does); the texts the terminal showed meanwhile.
        Raises ``tests.stack.TurnTimeout`` (with ``.replies``) past ``timeout_s``."""
        return self.terminal.send(text, timeout_s)

    def received(self) -> list[str]:
        """Every text the terminal showed since the stack started (replies, edits,
        questions, owner notices), in order."""
        return self.terminal.texts()

    def wait_for_text(self, fragment: str, timeout_s: float = 30) -> str:
        """The first text the terminal showed that contains ``fragment``, waiting for it."""
        found: list[str] = []

        def shown() -> bool:
            found[:] = [t for t in self.received() if fragment in t]
            return bool(found)

        wait_until(
            shown,
            timeout_s=timeout_s,
            what=f"the terminal to show {fragment!r}",
            poll_s=STACK_POLL_S,
        )
        return found[0]

    # -- the programs ----------------------------------------------------------------------

    def pids(self) -> dict[str, int]:
        return self.base.pids()

    def assert_up(self, pids_before: dict[str, int]) -> None:
        self.base.assert_up(pids_before)

    def log(self, program: str) -> str:
        return self.base.log(program)

    # -- the container ---------------------------------------------------------------------

    def container_name(self) -> str:
        return container_name(self.settings.install, self.session.id)

    def container_user(self) -> tuple[int, int]:
        """The uid:gid the container runs as: ``AGENT_UID:AGENT_GID`` with rootful Podman,
        the host user (``--userns=keep-id``) with rootless."""
        return (AGENT_UID, AGENT_GID) if os.geteuid() == 0 else (os.getuid(), os.getgid())

    def podman(
        self, *args: str, stdin: str = "", timeout_s: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """The podman CLI with the stack's environment (its containers.conf: runtime and
        ulimits), as the stack's own podman-api service runs."""
        conf = runtime.conf_path(self.layout)
        return subprocess.run(
            ["podman", *args],
            input=stdin,
            env=runtime.podman_env(conf if conf.is_file() else None),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
            check=False,
        )

    def wait_for_services(self, timeout_s: float = 60) -> None:
        """Until the Podman API and the proxy sockets answer. supervisord reports podman-api
        and the proxy RUNNING a moment before their sockets do; a wake before that fails
        (NotReady), so every wake a test makes right after start-up waits here first."""
        podman_socket = Path(self.settings.podman_socket_url.removeprefix("unix://"))
        for path, what in ((podman_socket, "Podman API"), (self.layout.proxy_socket, "proxy")):
            wait_until(
                functools.partial(socket_answers, path),
                timeout_s=timeout_s,
                what=f"the {what} socket",
                poll_s=STACK_POLL_S,
            )

    def agent(self, timeout_s: float = 60) -> Agent:
        """Wake the session's container (as the router does: projections refreshed, then
        ``Sandbox.wake``) and wait until its runner has started the run; the agent in it."""
        with self.central() as central:
            session = central.get_session(self.session.id)
            assert session is not None
            refresh_projections(central, self.layout, session)
        self.wait_for_services(timeout_s)
        sandbox = Sandbox(self.settings)
        try:
            if not sandbox.wake(session):
                raise StackError(f"the session's container did not start\n{self.base.logs()}")
        finally:
            sandbox.close()
        run_id = self._wait_for_runner(timeout_s)
        return Agent(self, self.container_name(), run_id)

    def stop_agent(self) -> None:
        """Stop the session's container (TERM, then KILL) and revoke its proxy tokens."""
        sandbox = Sandbox(self.settings)
        try:
            sandbox.stop(self.session.id)
        finally:
            sandbox.close()

    def _wait_for_runner(self, timeout_s: float) -> str:
        paths = self.layout.session(self.session.agent_group_id, self.session.id)
        run_id = ""

        def started() -> bool:
            nonlocal run_id
            with self.central() as central:
                session = central.get_session(self.session.id)
            run_id = (session.run_id if session else None) or ""
            reader = OutboundReader(paths.outbound_db)
            try:
                state = reader.container_state()
            finally:
                reader.close()
            return bool(run_id) and state is not None and state.run_id == run_id

        try:
            wait_until(
                started,
                timeout_s=timeout_s,
                what="the agent runner to start its run",
                poll_s=STACK_POLL_S,
            )
        except AssertionError:
            logs = self.podman("logs", "--tail", "50", self.container_name())
            raise StackError(
                f"the runner did not start\n{logs.stdout}{logs.stderr}\n{self.base.logs()}"
            ) from None
        return run_id


@pytest.fixture(scope="module")
def hostile_stack() -> Iterator[HostileStack]:
    """One stack per test module (see the module docstring); ``hostile`` is the per-test
    view of it."""
    if subprocess.run(["podman", "image", "exists", AGENT_IMAGE], check=False).returncode:
        pytest.fail(
            f"the agent image {AGENT_IMAGE} is missing: run `.venv/bin/nanoclaw image build`",
            pytrace=False,
        )
    fake_api = FakeAnthropic(api_key=CANARY_KEY).start()
    stack = Stack.create(api_url=fake_api.url, api_key=CANARY_KEY, prefix="nc-sec-")
    terminal: TerminalClient | None = None
    try:
        stack.start()
        with closing(CentralStore.open(stack.layout.central_db)) as central:
            group = central.find_agent_group("main")
            chat = central.find_messaging_group("cli", "local")
            assert group is not None and chat is not None, "nanoclaw init made no main/terminal"
            [wiring] = central.list_wirings(chat.id)
            # What the router does with the terminal's first message.
            session, _ = central.resolve_session(group.id, chat.id, None, wiring.session_mode)
            refresh_projections(central, stack.layout, session)
        terminal = TerminalClient(stack.layout).start()
        yield HostileStack(stack, fake_api, terminal, group, session)
    finally:
        if terminal is not None:
            terminal.close()
        stack.destroy()
        fake_api.stop()


@pytest.fixture
def hostile(hostile_stack: HostileStack) -> Iterator[HostileStack]:
    """The module's stack; after the test its container is stopped and unused scripted
    model replies are dropped."""
    yield hostile_stack
    hostile_stack.stop_agent()
    hostile_stack.fake_api.clear_replies()
