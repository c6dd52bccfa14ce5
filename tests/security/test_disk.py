"""Disk filling, from inside the real container against the real stack (docs/security.md,
"Disk quotas"): the agent fills ``/workspace`` with ``fallocate``, its ``agent/`` folder with
``dd``, the workspace with 200,000 empty files, and plants traps for the sweeper's walk. Each
time the sweeper stops the container within its bound, the agent and the owner are told, no
message is lost, and every program keeps its pid.

This machine's filesystem has no project quotas, so the sweeper's walk is the mechanism here
(tests/sandbox/test_project_quota.py covers the kernel's, where the kernel has them). The
main group's quotas are lowered (``container_configs``) so the attacks stay small.
"""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from pathlib import Path

import pytest

from nanoclaw_common.store.disk import BLOCK_CLEANUP, BLOCK_HELD, DiskBlock, DiskLedger
from tests.fakes.anthropic_api import text, tool_use
from tests.security.conftest import STACK_POLL_S, HostileStack
from tests.stack import TurnTimeout
from tests.waiting import wait_until

pytestmark = pytest.mark.podman

GROUP_MB = 64
SESSION_MB = 32
# The sweeper walks a running session's folders every disk_check_interval_s (10 s by
# default); then a pass or two to walk and to stop. Slack for a shared machine.
STOP_BOUND_S = 40.0


def blocks(stack: HostileStack) -> list[DiskBlock]:
    with stack.central() as central:
        return DiskLedger(central).list_blocks()


def wait_for_block(stack: HostileStack, scope: str, timeout_s: float = STOP_BOUND_S) -> DiskBlock:
    found: list[DiskBlock] = []

    def blocked() -> bool:
        found[:] = [b for b in blocks(stack) if b.scope == scope]
        return bool(found)

    wait_until(blocked, timeout_s=timeout_s, what=f"a {scope} disk block", poll_s=STACK_POLL_S)
    return found[0]


def container_running(stack: HostileStack) -> bool:
    done = stack.podman("inspect", "--format", "{{.State.Running}}", stack.container_name())
    return done.returncode == 0 and done.stdout.strip() == "true"


def current_run(stack: HostileStack) -> str | None:
    with stack.central() as central:
        session = central.get_session(stack.session.id)
    return session.run_id if session else None


def host_group_dir(stack: HostileStack) -> Path:
    return stack.layout.group_dir(stack.group.folder)


@pytest.fixture(autouse=True)
def small_quotas(hostile: HostileStack) -> None:
    """Small quotas for the main group (the sweeper reads them every pass), and nothing
    left over from the previous test: no block, no file of an earlier attack."""
    with hostile.central() as central:
        central.update_container_config(
            hostile.group.id, group_disk_quota_mb=GROUP_MB, session_disk_quota_mb=SESSION_MB
        )
    for leftover in host_group_dir(hostile).glob("attack-*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
    wait_until(
        lambda: not blocks(hostile),
        timeout_s=STOP_BOUND_S,
        what="earlier blocks to be lifted",
        poll_s=STACK_POLL_S,
    )


def test_filling_the_workspace_stops_the_run_and_the_agent_cleans_up(
    hostile: HostileStack,
) -> None:
    stack = hostile
    pids = stack.pids()
    name = f"attack-fill-{secrets.token_hex(3)}"
    # The cleanup run the sweeper grants: the agent deletes what it wrote, then answers.
    stack.fake_api.reply(
        tool_use("bash", {"command": f"rm -f /workspace/{name}"}),
        text('<message to="terminal">cleaned up</message>'),
    )
    agent = stack.agent()
    started = time.monotonic()
    agent.sh(f"fallocate -l 300M /workspace/{name}")  # the walk mechanism lets it happen
    block = wait_for_block(stack, "group")
    took = time.monotonic() - started
    assert took <= STOP_BOUND_S
    assert block.state == BLOCK_CLEANUP and "over its disk quota" in block.reason
    # The run that filled it is stopped, and a fresh one (its cleanup run) replaces it.
    assert block.cleanup_after_run == agent.run_id
    wait_until(
        lambda: current_run(stack) not in (None, agent.run_id),
        timeout_s=60,
        what="the cleanup run",
        poll_s=STACK_POLL_S,
    )
    # Told: the owner on the terminal (the owner's chat), the agent in its prompt.
    notice = stack.wait_for_text("over its disk quota")
    assert str(host_group_dir(stack)) in notice
    requests = stack.fake_api.wait_for_requests(2, timeout_s=60)
    prompt = str(requests[0].body["messages"])
    assert "Disk quota: /workspace holds" in prompt and name in prompt
    # The agent deleted its file; the next walk lifts the block; the answer went out.
    assert stack.wait_for_text("cleaned up", timeout_s=60) == "cleaned up"
    wait_until(
        lambda: not blocks(stack),
        timeout_s=STOP_BOUND_S,
        what="the block to be lifted",
        poll_s=STACK_POLL_S,
    )
    assert not (host_group_dir(stack) / name).exists()
    assert "over its disk quota" in stack.log("sweeper")
    stack.assert_up(pids)


def test_a_cleanup_run_that_keeps_writing_is_held_and_messages_wait(
    hostile: HostileStack,
) -> None:
    stack = hostile
    pids = stack.pids()
    first, second = (f"attack-{n}-{secrets.token_hex(3)}" for n in ("a", "b"))
    # Its "cleanup" run writes more instead of deleting.
    stack.fake_api.reply(
        tool_use("bash", {"command": f"fallocate -l 200M /workspace/{second}"}),
        text('<message to="terminal">did not clean</message>'),
    )
    agent = stack.agent()
    agent.sh(f"fallocate -l 100M /workspace/{first}")
    wait_for_block(stack, "group")
    wait_until(
        lambda: any(b.state == BLOCK_HELD for b in blocks(stack)),
        timeout_s=STOP_BOUND_S * 2,
        what="the block to be held after the cleanup run grew the folder",
        poll_s=STACK_POLL_S,
    )
    wait_until(
        lambda: not container_running(stack),
        timeout_s=30,
        what="the container to be stopped",
        poll_s=STACK_POLL_S,
    )
    held = next(b for b in blocks(stack) if b.state == BLOCK_HELD)
    assert "grew" in held.reason
    # A message now waits: the router's wake is refused (recorded), nothing answers it...
    stack.fake_api.reply(text('<message to="terminal">back after the cleanup</message>'))
    replies: list[str] = []
    failure: list[BaseException] = []

    def chat() -> None:
        try:
            replies.extend(stack.chat("are you there", timeout_s=120))
        except (TurnTimeout, AssertionError) as exc:
            failure.append(exc)

    talker = threading.Thread(target=chat)
    talker.start()
    wait_until(
        lambda: any(b.refused_wakes > 0 for b in blocks(stack)),
        timeout_s=30,
        what="a refused wake",
        poll_s=STACK_POLL_S,
    )
    assert not container_running(stack)
    # ...until the owner frees the space by hand: the next walk lifts the block and the
    # message is answered.
    for name in (first, second):
        (host_group_dir(stack) / name).unlink()
    talker.join(150)
    assert not failure, failure
    assert "back after the cleanup" in replies
    assert "are you there" in str(stack.fake_api.message_requests()[-1].body["messages"])
    assert blocks(stack) == []
    stack.assert_up(pids)


def test_filling_the_agent_folder_stops_the_run(hostile: HostileStack) -> None:
    stack = hostile
    pids = stack.pids()
    stack.fake_api.reply(
        tool_use("bash", {"command": "rm -f /session/agent/attack-fill"}),
        text('<message to="terminal">agent folder cleaned</message>'),
    )
    agent = stack.agent()
    agent.sh("dd if=/dev/zero of=/session/agent/attack-fill bs=1M count=64 status=none")
    block = wait_for_block(stack, "session")
    assert block.scope_id == stack.session.id
    assert stack.wait_for_text("agent folder cleaned", timeout_s=90) == "agent folder cleaned"
    wait_until(
        lambda: not blocks(stack),
        timeout_s=STOP_BOUND_S,
        what="the block to be lifted",
        poll_s=STACK_POLL_S,
    )
    stack.assert_up(pids)


def test_a_flood_of_empty_files_counts(hostile: HostileStack) -> None:
    """200,000 empty files hold no data at all; the entry quota (200,000 by default) stops
    them as surely as bytes would, and the walk stops counting at the limit."""
    stack = hostile
    pids = stack.pids()
    stack.fake_api.reply(
        tool_use("bash", {"command": "rm -rf /workspace/attack-flood"}),
        text('<message to="terminal">flood removed</message>'),
    )
    agent = stack.agent()
    agent.py(
        "import os\n"
        "os.mkdir('/workspace/attack-flood')\n"
        "for n in range(200_001):\n"
        "    os.close(os.open('/workspace/attack-flood/%d' % n, os.O_CREAT | os.O_WRONLY))\n",
        timeout_s=300,
    )
    block = wait_for_block(stack, "group", timeout_s=STOP_BOUND_S * 2)
    assert block.reason.endswith("more than 200000 entries")
    assert stack.wait_for_text("flood removed", timeout_s=120) == "flood removed"
    wait_until(
        lambda: not blocks(stack),
        timeout_s=STOP_BOUND_S * 2,
        what="the block to be lifted",
        poll_s=STACK_POLL_S,
    )
    stack.assert_up(pids)


def test_traps_for_the_walk_neither_stall_it_nor_fool_it(hostile: HostileStack) -> None:
    """A socket file, a link to / (a walk that followed it would measure the host), 50 names
    for one 40 MiB file (counted once: under the quota), a sparse terabyte (holds nothing):
    no block. Then 150 nested folders: over (too deep). (A FIFO, which a walk that opened it
    would hang on, the seccomp profile no longer lets the agent make; tests/unit/disk/
    test_walk.py plants one from the host.)"""
    stack = hostile
    pids = stack.pids()
    agent = stack.agent()
    agent.sh(
        "cd /workspace && mkdir attack-traps && cd attack-traps"
        " && python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind(\"sock\")'"
        " && ln -s / root && fallocate -l 40M big"
        " && for i in $(seq 1 50); do ln big link$i; done && truncate -s 1T sparse"
    )
    # Two walks later (20 s) there is still no block, and the sweeper kept passing.
    time_to_walk = 25.0
    deadline = time.monotonic() + time_to_walk
    while time.monotonic() < deadline:
        assert blocks(stack) == [], blocks(stack)
        time.sleep(1.0)
    assert container_running(stack)
    stack.fake_api.reply(
        tool_use("bash", {"command": "rm -rf /workspace/attack-deep /workspace/attack-traps"}),
        text('<message to="terminal">deep removed</message>'),
    )
    agent.py(
        "import os\n"
        "os.chdir('/workspace')\n"
        "os.mkdir('attack-deep'); os.chdir('attack-deep')\n"
        "for n in range(150):\n"
        "    os.mkdir('d'); os.chdir('d')\n"
    )
    block = wait_for_block(stack, "group")
    assert block.reason.endswith("folders nested deeper than 100 levels")
    assert stack.wait_for_text("deep removed", timeout_s=90) == "deep removed"
    wait_until(
        lambda: not blocks(stack),
        timeout_s=STOP_BOUND_S,
        what="the block to be lifted",
        poll_s=STACK_POLL_S,
    )
    stack.assert_up(pids)
