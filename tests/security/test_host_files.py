"""Host file access (issue 8 §1, §7), attacked from inside the real container: the swap race
on the outbox, root writing through a planted ``AGENT.md`` (``nanoclaw init``, and
``create_agent`` over a removed group's folder), and the data folder's privacy against
another local user. Each asserts the refusal, that nothing of the host leaked or was
written, that every program kept its pid, and that the refusal was reported."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from nanoclaw_common.sandbox import Sandbox
from nanoclaw_common.sandbox.spec import container_name
from nanoclaw_common.sessions import refresh_projections
from nanoclaw_common.store import InboundReader, OutboundReader
from nanoclaw_common.store.rows import InboundRow, Session
from tests.security.conftest import STACK_POLL_S, Agent, HostileStack
from tests.stack import echo_reply
from tests.waiting import wait_until

pytestmark = pytest.mark.podman


RACE_S = 8.0
ROWS = 150

# Inside the container: exchange agent/outbox with a symlink to a host folder in a loop
# (renameat2 RENAME_EXCHANGE, as fast as it can) while writing rows that each send
# outbox/<row id>/f. The old delivery checked the folders, then opened the file by path:
# it sent the host's file.
SWAP_RACE = r"""
import ctypes, json, os, sqlite3, threading, time
libc = ctypes.CDLL(None, use_errno=True)
AGENT = "/session/agent"
outbox, swap = AGENT + "/outbox", AGENT + "/outbox-swap"
os.symlink(HOST_FOLDER, swap)
for n in range(ROWS):
    os.makedirs("%s/race-%d" % (outbox, n), exist_ok=True)
    with open("%s/race-%d/f" % (outbox, n), "w") as handle:
        handle.write("the agent's own file %d" % n)
stop = time.monotonic() + RACE_S
swaps = 0
def swapper():
    global swaps
    while time.monotonic() < stop:
        libc.renameat2(-100, outbox.encode(), -100, swap.encode(), 2)
        swaps += 1
thread = threading.Thread(target=swapper)
thread.start()
db = sqlite3.connect(AGENT + "/outbound.db", timeout=30, isolation_level=None)
inbound = sqlite3.connect("file:/session/inbound.db?mode=ro", uri=True)
written = 0
for n in range(ROWS):
    if time.monotonic() > stop - 1:
        break
    db.execute("BEGIN IMMEDIATE")
    top = max(db.execute("SELECT ifnull(max(seq), 0) FROM messages_out").fetchone()[0],
              inbound.execute("SELECT ifnull(max(seq), 0) FROM messages_in").fetchone()[0])
    content = json.dumps({"type": "text", "text": "race %d" % n, "files": ["f"]})
    db.execute("INSERT INTO messages_out (id, seq, timestamp_ms, kind, content)"
               " VALUES (?, ?, ?, 'chat', ?)",
               ("race-%d" % n, top + 1 if top % 2 == 0 else top + 2, int(time.time() * 1000),
                content))
    db.execute("COMMIT")
    written += 1
    time.sleep(0.03)
thread.join()
if os.path.islink(outbox):  # leave the folders as the runner expects them
    libc.renameat2(-100, outbox.encode(), -100, swap.encode(), 2)
os.unlink(swap)
print(json.dumps({"written": written, "swaps": swaps}))
"""


def test_the_outbox_swap_race_never_sends_a_host_file(
    hostile: HostileStack, tmp_path: Path
) -> None:
    stack = hostile
    canary = "HOST-CANARY-" + secrets.token_hex(8)
    host = tmp_path / "host-secrets"  # stands for /etc, ~/.ssh, central.db, other sessions
    for n in range(ROWS):
        (host / f"race-{n}").mkdir(parents=True)
        (host / f"race-{n}" / "f").write_text(canary)
    agent = stack.agent()
    pids = stack.pids()
    code = f"HOST_FOLDER = {str(host)!r}\nROWS = {ROWS}\nRACE_S = {RACE_S}\n{SWAP_RACE}"
    done = json.loads(agent.py(code, timeout_s=RACE_S + 60).stdout.strip().splitlines()[-1])
    assert done["written"] > 50 and done["swaps"] > 1000, done
    paths = stack.layout.session(stack.session.agent_group_id, stack.session.id)
    inbound = InboundReader(paths.inbound_db)
    try:

        def settled() -> bool:
            found = [inbound.get_delivery(f"race-{n}") for n in range(done["written"])]
            return all(d is not None and d.status in ("delivered", "denied") for d in found)

        wait_until(
            settled, timeout_s=120, what="delivery to settle every racing row", poll_s=STACK_POLL_S
        )
        statuses = [inbound.get_delivery(f"race-{n}") for n in range(done["written"])]
    finally:
        inbound.close()
    delivered = [d for d in statuses if d is not None and d.status == "delivered"]
    denied = [d for d in statuses if d is not None and d.status == "denied"]
    assert delivered and denied, "the race ran both ways"
    # Not one byte of the host's files left the host: not on the terminal, not staged.
    downloads = stack.home / "downloads"
    saved = (
        [p.read_text(errors="replace") for p in downloads.iterdir()] if downloads.exists() else []
    )
    assert saved and all(canary not in text for text in saved)
    assert all(text.startswith("the agent's own file") for text in saved)
    assert canary not in "".join(stack.received())
    log = stack.log("delivery")
    assert canary not in log and "MESSAGE DROPPED (denied)" in log  # reported, per row
    # Nor was anything of the host removed (the old cleanup followed agent/outbox).
    assert all((host / f"race-{n}" / "f").read_text() == canary for n in range(ROWS))
    stack.assert_up(pids)


def test_init_never_writes_through_a_planted_memory_link(
    hostile: HostileStack, tmp_path: Path
) -> None:
    """``scripts/run.sh`` re-runs ``nanoclaw init`` (as root) at every start."""
    stack = hostile
    cron = tmp_path / "cron.d"  # stands for /etc/cron.d: a file there is a root cron job
    cron.mkdir()
    agent = stack.agent()
    pids = stack.pids()
    agent.sh(f"rm -f /workspace/AGENT.md && ln -s {cron}/x /workspace/AGENT.md")
    done = cli(stack, "init")
    assert not (cron / "x").exists()
    memory = stack.layout.group_dir("main") / "AGENT.md"
    assert memory.is_symlink()  # left for the operator to look at, and said so
    assert "AGENT.md is not a regular file" in " ".join(done.split())
    agent.sh("rm /workspace/AGENT.md && echo '# memory' > /workspace/AGENT.md")
    stack.assert_up(pids)


def cli(stack: HostileStack, *args: str) -> str:
    """A ``nanoclaw`` command as the operator runs it on the host (root); its output."""
    done = stack.base.nanoclaw(*args)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def wake_other(stack: HostileStack, session: Session) -> Agent:
    """Another session's container, woken as the router would, once its runner is up."""
    with stack.central() as central:
        refresh_projections(central, stack.layout, session)
    stack.wait_for_services()
    sandbox = Sandbox(stack.settings)
    try:
        assert sandbox.wake(session)
    finally:
        sandbox.close()
    paths = stack.layout.session(session.agent_group_id, session.id)

    def started() -> bool:
        reader = OutboundReader(paths.outbound_db)
        try:
            state = reader.container_state()
        finally:
            reader.close()
        return state is not None and bool(state.run_id)

    wait_until(started, timeout_s=60, what="the other session's runner", poll_s=STACK_POLL_S)
    return Agent(stack, container_name(stack.settings.install, session.id), "")


def stop(stack: HostileStack, session: Session) -> None:
    sandbox = Sandbox(stack.settings)
    try:
        sandbox.stop(session.id)
    finally:
        sandbox.close()


def test_create_agent_never_gets_a_removed_groups_folder(
    hostile: HostileStack, tmp_path: Path
) -> None:
    """The chain of issue 8 §1: group Helper's agent plants ``AGENT.md`` -> a root cron file
    in its folder; the operator removes Helper; the main agent, asked by the owner, creates
    a new agent named Helper. The old code gave it the old folder and wrote the new agent's
    instructions, as root, through the link."""
    stack = hostile
    cron = tmp_path / "cron.d"
    cron.mkdir()
    pids = stack.pids()
    cli(stack, "groups", "add", "Helper")
    with stack.central() as central:
        helper = central.find_agent_group("helper")
        assert helper is not None
        helper_session = central.create_session(helper.id, None)
    helper_agent = wake_other(stack, helper_session)
    helper_agent.sh(f"rm -f /workspace/AGENT.md; ln -s {cron}/x /workspace/AGENT.md")
    stop(stack, helper_session)
    removed = " ".join(cli(stack, "groups", "remove", "helper").split())
    assert "was moved to" in removed  # the operator is told where the folder went
    assert not stack.layout.group_dir("helper").exists()

    stack.fake_api.reply(echo_reply)
    stack.chat("please create a helper agent")  # the owner asks (create_agent is admin-only)
    [asked] = [
        row
        for row in _inbound_rows(stack)
        if row.kind == "chat" and "please create a helper agent" in row.content
    ]
    agent = stack.agent()
    written = agent.write_outbound(
        {"type": "create_agent", "request_id": "r1", "name": "Helper",
         "instructions": "CRON-PAYLOAD * * * * * root id > /tmp/pwned"},
        in_reply_to=asked.id,
    )  # fmt: skip
    paths = stack.layout.session(stack.session.agent_group_id, stack.session.id)

    def settled() -> bool:
        reader = InboundReader(paths.inbound_db)
        try:
            delivery = reader.get_delivery(written.id)
        finally:
            reader.close()
        return delivery is not None and delivery.status == "delivered"

    wait_until(settled, timeout_s=60, what="create_agent to be applied", poll_s=STACK_POLL_S)
    assert not (cron / "x").exists()
    with stack.central() as central:
        groups = {g.folder: g for g in central.list_agent_groups() if g.name == "Helper"}
    [folder] = groups
    memory = stack.layout.group_dir(folder) / "AGENT.md"
    assert not memory.is_symlink() and "CRON-PAYLOAD" in memory.read_text()
    archived = list((stack.home / "archive" / "groups").glob("helper-*"))
    assert archived and (archived[0] / "AGENT.md").is_symlink()  # kept, never opened
    stack.assert_up(pids)


def _inbound_rows(stack: HostileStack) -> list[InboundRow]:
    paths = stack.layout.session(stack.session.agent_group_id, stack.session.id)
    reader = InboundReader(paths.inbound_db)
    try:
        return list(reader.list_messages())
    finally:
        reader.close()


def test_another_local_user_reads_nothing_of_the_data_folder(hostile: HostileStack) -> None:
    """§7: ``central.db``, the session DBs and saved attachments were 0644 in 0755 folders."""
    stack = hostile
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another local user")
    # The data folder where installs keep it: in a folder every local user can traverse
    # (./data of a checkout in a home folder; the test stack's own root is 0700).
    stack.base.root.chmod(0o755)
    stack.fake_api.reply(echo_reply)
    stack.chat("a private conversation")
    pids = stack.pids()
    paths = stack.layout.session(stack.session.agent_group_id, stack.session.id)
    targets = [
        stack.layout.central_db,
        paths.inbound_db,
        paths.outbound_db,
        stack.layout.home / "logs" / "delivery.log",
    ]
    for target in targets:
        assert target.exists(), target
        as_nobody = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(target)],
            capture_output=True,
            check=False,
        )
        assert as_nobody.returncode != 0, f"{target} is readable by another local user"
        assert b"Permission denied" in as_nobody.stderr, target
    # The container still reads what it must (inbound.db through its group, read-only).
    agent = stack.agent()
    seen = agent.py(
        "import sqlite3; db = sqlite3.connect('file:/session/inbound.db?mode=ro', uri=True);"
        " print(db.execute('SELECT count(*) FROM messages_in').fetchone()[0])"
    )
    assert int(seen.stdout) >= 1
    stack.assert_up(pids)
