"""The fixture itself, on today's code: a message is answered through the real proxy and the
API key is nowhere the agent can look, a row the agent writes from inside its container
reaches the terminal, and the agent really is the container's unprivileged user. No attack
here (those are the other test_*.py); these show every part of ``hostile`` works."""

from __future__ import annotations

import json
import secrets

import pytest

from nanoclaw_common.sandbox.ownership import AGENT_GID, AGENT_UID
from nanoclaw_common.store import InboundReader
from tests.security.conftest import AGENT_PYTHON, CANARY_KEY, STACK_POLL_S, HostileStack
from tests.stack import echo_reply
from tests.waiting import wait_until

pytestmark = pytest.mark.podman

# Inside the container: every process's environment and command line, and every regular
# file under the places the agent can read, searched for each needle; what was found where.
SCAN = """
import json, os, stat, subprocess
NEEDLES = json.loads(NEEDLES_JSON)
ROOTS = ["/session", "/workspace", "/tmp", "/run", "/dev/shm", "/app", "/etc"]
found, scanned = [], 0

def look(where, data):
    global scanned
    scanned += 1
    found.extend([name, where] for name, needle in NEEDLES.items() if needle.encode() in data)

# The controls: a process and a file that do hold the marker, so a scan that reads nothing
# cannot pass.
child = subprocess.Popen(["sleep", "60"], env={"PROBE": NEEDLES["marker"]})
probe = "/workspace/.probe-" + str(os.getpid())
with open(probe, "w") as handle:
    handle.write(NEEDLES["marker"])
try:
    look("os.environ", json.dumps(dict(os.environ)).encode())
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for part in ("environ", "cmdline"):
            try:
                with open("/proc/%s/%s" % (pid, part), "rb") as handle:
                    look("/proc/%s/%s" % (pid, part), handle.read(1 << 20))
            except OSError:
                pass  # not ours to read (the runner is not dumpable), or gone
    for root in ROOTS:
        for folder, _, names in os.walk(root):
            for name in names:
                path = os.path.join(folder, name)
                try:
                    if not stat.S_ISREG(os.lstat(path).st_mode):
                        continue
                    with open(path, "rb") as handle:
                        look(path, handle.read(64 << 20))
                except OSError:
                    pass
finally:
    child.kill()
    os.unlink(probe)
print(json.dumps({"found": found, "scanned": scanned, "child": child.pid}))
"""


def test_a_message_is_answered_through_the_proxy_and_the_key_is_nowhere_inside(
    hostile: HostileStack,
) -> None:
    stack = hostile
    pids = stack.pids()
    stack.fake_api.reply(echo_reply)
    assert stack.chat("hello through the proxy") == ["echo: hello through the proxy"]
    [request] = stack.fake_api.message_requests()
    assert request.headers["x-api-key"] == CANARY_KEY  # the proxy put the real key in

    agent = stack.agent()  # the container that just answered
    marker = "probe-" + secrets.token_hex(8)
    needles = json.dumps({"key": CANARY_KEY, "marker": marker})
    done = agent.py(f"NEEDLES_JSON = {needles!r}\n{SCAN}")
    report = json.loads(done.stdout)
    child = report["child"]
    assert ["marker", f"/proc/{child}/environ"] in report["found"], report
    assert any(hit[0] == "marker" and hit[1].startswith("/workspace/") for hit in report["found"])
    assert [hit for hit in report["found"] if hit[0] == "key"] == []
    assert report["scanned"] > 50  # the session, the workspace, /etc, every process

    inspected = stack.podman("inspect", agent.container)
    assert inspected.returncode == 0, inspected.stderr
    assert CANARY_KEY not in inspected.stdout  # not in the container's config either
    stack.assert_up(pids)


def test_a_row_the_agent_writes_reaches_the_terminal(hostile: HostileStack) -> None:
    stack = hostile
    agent = stack.agent()
    pids = stack.pids()
    text = "written inside the container " + secrets.token_hex(4)
    written = agent.write_outbound({"type": "text", "text": text})
    assert written.seq % 2 == 1  # the container's half of the seq space
    assert stack.wait_for_text(text) == text

    paths = stack.layout.session(stack.session.agent_group_id, stack.session.id)
    inbound = InboundReader(paths.inbound_db)
    try:

        def delivered() -> bool:
            delivery = inbound.get_delivery(written.id)
            return delivery is not None and delivery.status == "delivered"

        wait_until(
            delivered,
            timeout_s=10,
            what="delivery to record the row delivered",
            poll_s=STACK_POLL_S,
        )
    finally:
        inbound.close()
    stack.assert_up(pids)


def test_the_agent_is_the_containers_unprivileged_user(hostile: HostileStack) -> None:
    stack = hostile
    pids = stack.pids()
    agent = stack.agent()
    ids = agent.sh("id -u; id -g; grep CapEff /proc/self/status").stdout.split()
    assert ids == [str(AGENT_UID), str(AGENT_GID), "CapEff:", "0000000000000000"]
    where = agent.py("import os, sys; print(sys.executable, os.getuid(), os.getcwd())")
    assert where.stdout.split() == [AGENT_PYTHON, str(AGENT_UID), "/workspace"]
    refused = agent.sh("echo x >> /session/inbound.db", check=False)
    assert refused.returncode != 0  # mounted read-only

    # Each run is fresh: after a stop, the next agent is a new run in a new container.
    stack.stop_agent()
    again = stack.agent()
    assert again.run_id != agent.run_id
    assert again.sh("id -u").stdout.strip() == str(AGENT_UID)
    stack.assert_up(pids)
