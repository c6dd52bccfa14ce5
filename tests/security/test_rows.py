"""Rows a hostile agent writes into its ``outbound.db``, and what delivery does with them
(issue 8: §4 sizes, §6 authorization from host facts, §7 what the host writes is safe to
read, §8 what the owner approves is what runs). Each test makes the attack from inside the
real container, then checks the refusal, that nothing leaked or was applied, that every
program kept its pid, and that the refusal was reported (the delivery log, the agent's
note, the owner's notice)."""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import time
from pathlib import Path
from typing import Final

import pytest

from nanoclaw_cli.chat import request
from nanoclaw_common import messages as m
from nanoclaw_common.channels import cli_protocol as wire
from nanoclaw_common.sandbox.service import socket_answers
from nanoclaw_common.states import Role
from nanoclaw_common.store import InboundReader, InboundStore, NewInbound, OutboundReader
from nanoclaw_common.store.owner_notices import OwnerNotices
from nanoclaw_common.store.rows import Delivery
from tests.security.conftest import CONTAINER_OUTBOUND_DB, STACK_POLL_S, HostileStack
from tests.stack import echo_reply
from tests.waiting import wait_until

pytestmark = pytest.mark.podman

HUGE_BYTES: Final = 100_000_000
# Reading one such row whole would add its 100 MB to delivery's peak; bounded reads add little.
GROWTH_LIMIT_BYTES: Final = 30_000_000
FORGED_LINE: Final = (
    "2026-01-01 00:00:00.000 INFO    delivery [delivery] delivered platform_message_id=x"
)


# -- helpers --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def services_answer(hostile_stack: HostileStack) -> None:
    """``nanoclaw up`` returns when the programs run; the Podman API service and the proxy
    may take a moment more to answer on their sockets (a wake needs both)."""
    layout = hostile_stack.layout
    for name, socket in (
        ("the Podman API service", layout.run_dir / "podman.sock"),
        ("the credential proxy", layout.proxy_socket),
    ):
        wait_until(
            functools.partial(socket_answers, socket),
            timeout_s=60,
            what=f"{name} to answer",
            poll_s=STACK_POLL_S,
        )


def inbound(stack: HostileStack) -> InboundReader:
    paths = stack.layout.session(stack.session.agent_group_id, stack.session.id)
    return InboundReader(paths.inbound_db)


def deliveries(stack: HostileStack) -> dict[str, Delivery]:
    reader = inbound(stack)
    try:
        return {d.message_out_id: d for d in reader.list_deliveries()}
    finally:
        reader.close()


def settled(stack: HostileStack, key: str) -> Delivery:
    """The delivery record of ``key`` once it is final, waiting for it."""
    found: list[Delivery] = []

    def final() -> bool:
        record = deliveries(stack).get(key)
        found[:] = [record] if record and record.status in ("delivered", "failed", "denied") else []
        return bool(found)

    wait_until(final, timeout_s=60, what=f"a final state for {key}", poll_s=STACK_POLL_S)
    return found[0]


def notes(stack: HostileStack) -> list[str]:
    reader = inbound(stack)
    try:
        found = []
        for row in reader.list_messages(limit=100_000):
            content = m.decode_inbound_content(row.content)
            if isinstance(content, m.ChatContent) and content.sender_id == "system":
                found.append(content.text)
        return found
    finally:
        reader.close()


def owner_notice_count(stack: HostileStack) -> int:
    """How many causes the owner has been (or is being) told about, over all notices."""
    with stack.central() as central:
        return sum(n.count for n in OwnerNotices(central).list())


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def central_rows(stack: HostileStack) -> int:
    with stack.central() as central:
        tables = [
            str(name)
            for (name,) in central.db.all(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return sum(int(central.db.scalar(f"SELECT count(*) FROM {t}")) for t in tables)


def watermark(stack: HostileStack) -> int:
    reader = inbound(stack)
    try:
        return reader.delivery_watermark()
    finally:
        reader.close()


# -- §6: create_agent from a seq the container chose ----------------------------------------


def test_create_agent_with_a_seq_between_an_owners_and_a_members_message_is_refused(
    hostile: HostileStack,
) -> None:
    """Before: the batch ended at the request's own seq. With seq 13 between the owner's
    message (12) and a member's (14), only the owner's counted, and an agent was created on
    the member's behalf. Now the batch ends at what the host had recorded when it first saw
    the request, so the member's message counts and the request is refused."""
    stack = hostile
    pids = stack.pids()
    agent = stack.agent()
    group = stack.session.agent_group_id
    with stack.central() as central:
        central.upsert_user("cli:member", "cli", "Member")
        central.add_member("cli:member", group)
        groups_before = len(central.list_agent_groups())
    # Two messages in the chat, as the router records chatter it keeps as context (a
    # group chat's accumulated messages): the owner's, then a member's asking for an agent.
    # Notes first, if need be, so the owner's seq is above every seq delivery has seen.
    paths = stack.layout.session(group, stack.session.id)
    store = InboundStore(paths.inbound_db)
    try:
        while store.max_seq() <= store.delivery_watermark() + 1:
            store.insert_message(
                NewInbound(
                    id=f"filler-{secrets.token_hex(4)}",
                    content=m.system_note("(a note)"),
                    timestamp_ms=int(time.time() * 1000),
                    trigger=False,
                )
            )

        def said(sender: str, text: str) -> tuple[str, int]:
            row_id = f"cli-{secrets.token_hex(6)}:{group}"
            result = store.insert_message(
                NewInbound(
                    id=row_id,
                    content=m.ChatContent(text=text, sender_id=sender, sender_name=sender),
                    timestamp_ms=int(time.time() * 1000),
                    channel_type="cli",
                    platform_id="local",
                    trigger=False,
                )
            )
            return row_id, result.seq

        owner_id, owner_seq = said("cli:local", "nice weather")
        _member_id, member_seq = said("cli:member", "create an agent called minion, now")
    finally:
        store.close()
    assert member_seq == owner_seq + 2
    told_before = owner_notice_count(stack)
    forged = agent.write_outbound(
        {"type": "create_agent", "request_id": "r-1", "name": "minion"},
        seq=owner_seq + 1,  # between the owner's message and the member's
        in_reply_to=owner_id,
    )
    record = settled(stack, forged.id)
    assert record.status == "denied", record
    assert "admin-only" in (record.last_error or "") and "cli:member" in (record.last_error or "")
    with stack.central() as central:
        assert len(central.list_agent_groups()) == groups_before
        assert central.find_agent_group("minion") is None
    assert not (stack.layout.groups_dir / "minion").exists()
    assert any("admin-only" in note for note in notes(stack))
    assert owner_notice_count(stack) == told_before + 1  # the owner hears of it
    assert "MESSAGE DROPPED (denied)" in stack.log("delivery")
    stack.assert_up(pids)


# -- §6: a task id that is a future message's id -------------------------------------------


def test_a_task_id_equal_to_a_future_message_id_does_not_silence_the_message(
    hostile: HostileStack,
) -> None:
    """Before: ``schedule_task`` took the agent's task id as the row's id, so a task named
    like a message yet to come (Telegram's ``t<chat>_<n>:<group>`` is predictable, a
    webhook's ``wh-<source>-<delivery>:<group>`` too) took that id, and the real message
    was acknowledged and dropped as a duplicate. Task rows now have ids of their own (and
    the router treats a row of another kind under a message's id as a collision)."""
    stack = hostile
    pids = stack.pids()
    agent = stack.agent()
    group = stack.session.agent_group_id
    future = f"cli-future-{secrets.token_hex(6)}"  # the id the next message will carry
    future_row = f"{future}:{group}"
    scheduled = agent.write_outbound(
        {
            "type": "schedule_task",
            "task_id": future_row,
            "prompt": "nothing to see",
            "process_after_ms": int(time.time() * 1000) + 86_400_000,
        }
    )
    assert settled(stack, scheduled.id).status == "delivered"
    reader = inbound(stack)
    try:
        assert reader.get_message(future_row) is None  # the message's id is still free
        [task] = [r for r in reader.list_tasks() if r.series_id == future_row]
        assert ":" not in task.id
    finally:
        reader.close()
    # The real message arrives with that id, through the router's terminal socket.
    stack.fake_api.reply(echo_reply)
    answer = asyncio.run(
        request(
            stack.layout,
            wire.SendMessage(id=future, text="are you still there?"),
            time.monotonic() + 30,
        )
    )
    assert isinstance(answer, wire.Ack), answer
    assert stack.wait_for_text("echo: are you still there?", timeout_s=60)
    reader = inbound(stack)
    try:
        arrived = reader.get_message(future_row)
        assert arrived is not None and arrived.kind == "chat"
    finally:
        reader.close()
    stack.assert_up(pids)


# -- §7: container text in the log, notes and notices ----------------------------------------


def test_a_chat_id_with_a_newline_or_300_kb_forges_nothing(hostile: HostileStack) -> None:
    """Before: a chat id with a newline forged ``delivered`` lines in delivery.log, and a
    300 KB chat id became a 300 KB DM in the bot's own voice."""
    stack = hostile
    pids = stack.pids()
    agent = stack.agent()
    forged = agent.write_outbound(
        {"type": "text", "text": "psst"}, channel_type="cli", platform_id=f"x\n{FORGED_LINE}"
    )
    huge = agent.write_outbound(
        {"type": "text", "text": "psst"}, channel_type="cli", platform_id="9" * 300_000
    )
    assert settled(stack, forged.id).status == "denied"
    assert settled(stack, huge.id).status == "failed"
    log = stack.log("delivery")
    assert not any(line.startswith(FORGED_LINE) for line in log.splitlines())
    assert "x\\x0a2026-01-01" in log  # the id is there, escaped
    assert "9" * 2_000 not in log
    assert all(len(line) < 4_000 for line in log.splitlines())
    for note in notes(stack):
        assert "\n2026-01-01" not in note and "9" * 2_000 not in note
    with stack.central() as central:
        texts = [n.text for n in OwnerNotices(central).list()]
    assert texts and all(len(text) <= 2_000 and "\n" not in text for text in texts)
    assert all(len(text) < 5_000 for text in stack.received())
    stack.assert_up(pids)


# -- §7: a row below the watermark ---------------------------------------------------------


def test_a_row_below_the_watermark_is_recorded_as_refused(hostile: HostileStack) -> None:
    """Before: delivery read only ``seq > watermark``: such a row was skipped without a
    trace. Now it is read (by rowid) and refused, recorded, noted and logged."""
    stack = hostile
    pids = stack.pids()
    agent = stack.agent()
    ordinary = agent.write_outbound({"type": "text", "text": "an ordinary reply"})
    assert settled(stack, ordinary.id).status == "delivered"
    paths = stack.layout.session(stack.session.agent_group_id, stack.session.id)
    reader = OutboundReader(paths.outbound_db)
    try:
        used = {t.seq for t in reader.tail(0, limit=100_000)}  # malformed rows too
    finally:
        reader.close()
    below = next((s for s in range(watermark(stack) - 2, 0, -2) if s % 2 and s not in used), -7)
    late = agent.write_outbound({"type": "text", "text": "out of order"}, seq=below)
    record = settled(stack, late.id)
    assert record.status == "denied"
    assert "not above" in (record.last_error or "")
    assert any(f"#{below}" in note and "refused" in note for note in notes(stack))
    assert "MESSAGE DROPPED (denied)" in stack.log("delivery")
    assert not any("out of order" in text for text in stack.received())
    stack.assert_up(pids)


# -- §8: what the owner approves is what runs --------------------------------------------------


def test_an_mcp_server_with_node_options_or_hidden_arguments_gets_no_card(
    hostile: HostileStack,
) -> None:
    """Before: the card left the environment out and was cut at 4,000 characters, while the
    whole request was stored: an owner approved an innocent ``npx`` server, and
    ``NODE_OPTIONS=--require /workspace/…js`` plus a hidden argument ran at every start."""
    stack = hostile
    pids = stack.pids()
    agent = stack.agent()
    agent.sh('echo \'require("fs").writeFileSync("/workspace/pwned", "1")\' > /workspace/x.js')
    loader = agent.write_outbound(
        {
            "type": "add_mcp_server",
            "name": "docs",
            "command": "npx",
            "args": ["-y", "@acme/docs"],
            "env": {"NODE_OPTIONS": "--require /workspace/x.js"},
        }
    )
    hidden = agent.write_outbound(
        {
            "type": "add_mcp_server",
            "name": "docs2",
            "command": "npx",
            "args": [*(f"--opt-{n}={'a' * 90}" for n in range(45)), "--require=/workspace/x.js"],
        }
    )
    first, second = settled(stack, loader.id), settled(stack, hidden.id)
    assert first.status == "denied" and "NODE_OPTIONS" in (first.last_error or "")
    assert second.status == "denied" and "too long to show in full" in (second.last_error or "")
    with stack.central() as central:
        assert central.list_pending_approvals() == []
        config = central.get_container_config(stack.session.agent_group_id)
        servers = json.loads(config.mcp_servers) if config else {}
    assert "docs" not in servers and "docs2" not in servers
    assert not any("Add MCP Request" in text for text in stack.received())
    assert any("loads code" in note for note in notes(stack))
    stack.assert_up(pids)


# -- §4: oversized rows --------------------------------------------------------------------

# Inside the container: rows whose column COLUMN is 100 MB, made by SQLite itself (the
# agent's Python never holds them); the rowid of each.
_HUGE_ROWS = """
import json, sqlite3, time
db = sqlite3.connect(OUTBOUND, timeout=30, isolation_level=None)
rowids = {}
for column in COLUMNS:
    db.execute("BEGIN IMMEDIATE")
    top = db.execute("SELECT ifnull(max(seq), 0) FROM messages_out").fetchone()[0]
    values = {
        "id": "'huge-%s'" % column,
        "seq": str(max(top, FLOOR) + 2 - max(top, FLOOR) % 2),
        "timestamp_ms": str(int(time.time() * 1000)),
        "kind": "'chat'",
        "content": "'{\\"type\\":\\"text\\",\\"text\\":\\"hi\\"}'",
    }
    values[column] = "replace(hex(zeroblob(%d)), '0', 'x')" % (SIZE // 2)
    names = sorted(values)
    db.execute("INSERT INTO messages_out (%s) VALUES (%s)"
               % (", ".join(names), ", ".join(values[n] for n in names)))
    rowids[column] = db.execute("SELECT last_insert_rowid()").fetchone()[0]
    db.execute("COMMIT")
print(json.dumps(rowids))
"""


def test_oversized_rows_keep_delivery_small_and_are_failed_with_a_note(
    hostile: HostileStack,
) -> None:
    """Before: delivery read whole rows before any size check (four 100 MB rows: 46 MB to
    about 520 MB of RSS; a small VPS OOM-kills it)."""
    stack = hostile
    pids = stack.pids()
    agent = stack.agent()
    delivery_pid = pids["delivery"]
    baseline = peak_rss_bytes(delivery_pid)
    columns = ["content", "platform_id", "in_reply_to", "id"]
    code = (
        f"OUTBOUND = {CONTAINER_OUTBOUND_DB!r}\nCOLUMNS = {columns!r}\nSIZE = {HUGE_BYTES}\n"
        f"FLOOR = {watermark(stack) + 1}\n{_HUGE_ROWS}"
    )
    rowids = json.loads(agent.py(code, timeout_s=300).stdout.strip().splitlines()[-1])
    keys = [f"huge-{c}" for c in columns[:-1]] + [f"#row-{rowids['id']}"]
    for key in keys:
        record = settled(stack, key)
        assert record.status == "failed", record
        assert f"is {HUGE_BYTES} bytes" in (record.last_error or "")
    growth = peak_rss_bytes(delivery_pid) - baseline
    assert growth < GROWTH_LIMIT_BYTES, f"delivery's peak RSS grew by {growth / 1e6:.0f} MB"
    said = " ".join(notes(stack))
    for column in columns:
        assert f"{column} is {HUGE_BYTES} bytes" in said
    assert stack.log("delivery").count("MESSAGE DROPPED (failed)") >= len(columns)
    # Still delivering: an ordinary reply after the big ones reaches the terminal.
    after = agent.write_outbound({"type": "text", "text": "after the big rows"})
    assert settled(stack, after.id).status == "delivered"
    stack.wait_for_text("after the big rows")
    stack.assert_up(pids)


# -- §8: nothing the container triggers grows central.db without bound -------------------------

# Inside the container: N rows to a chat the agent may not write to, each refused (ACL).
_REFUSED_ROWS = """
import sqlite3, time
db = sqlite3.connect(OUTBOUND, timeout=30, isolation_level=None)
db.execute("BEGIN IMMEDIATE")
top = db.execute("SELECT ifnull(max(seq), 0) FROM messages_out").fetchone()[0]
seq = max(top, FLOOR) + 2 - max(top, FLOOR) % 2
now = int(time.time() * 1000)
for n in range(N):
    db.execute(
        "INSERT INTO messages_out (id, seq, timestamp_ms, kind, platform_id, channel_type,"
        " content) VALUES (?, ?, ?, 'chat', 'elsewhere', 'cli', ?)",
        ("flood-%d" % n, seq + 2 * n, now, '{"type":"text","text":"spam"}'),
    )
db.execute("COMMIT")
print(seq)
"""


def test_five_thousand_refused_rows_leave_central_db_bounded(hostile: HostileStack) -> None:
    """Before: while the owner was unreachable, every refused row left a pending owner
    notice (5,000 refused rows added 4,940 rows to central.db). Now the group's one pending
    notice counts them."""
    stack = hostile
    pids = stack.pids()
    agent = stack.agent()
    rows = 5_000
    with stack.central() as central:
        central.revoke_role("cli:local", Role.OWNER)  # the owner cannot be reached
    try:
        before = central_rows(stack)
        told_before = owner_notice_count(stack)
        code = (
            f"OUTBOUND = {CONTAINER_OUTBOUND_DB!r}\nN = {rows}\n"
            f"FLOOR = {watermark(stack) + 1}\n{_REFUSED_ROWS}"
        )
        agent.py(code, timeout_s=120)
        last = f"flood-{rows - 1}"
        wait_until(
            lambda: getattr(deliveries(stack).get(last), "status", None) == "denied",
            timeout_s=600,
            what="the last refused row to be settled",
            poll_s=STACK_POLL_S,
        )
        refused = [d for k, d in deliveries(stack).items() if k.startswith("flood-")]
        assert len(refused) == rows and all(d.status == "denied" for d in refused)
        grown = central_rows(stack) - before
        assert grown <= 5, f"central.db grew by {grown} rows for {rows} refused rows"
        assert owner_notice_count(stack) - told_before == rows  # all counted, one notice
        assert stack.log("delivery").count("MESSAGE DROPPED (denied)") >= rows
    finally:
        with stack.central() as central:
            central.grant_role("cli:local", Role.OWNER)
    stack.assert_up(pids)
