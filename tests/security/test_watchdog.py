"""Watchdog (docs/internals.md, "Watchdog"; docs/security.md, "Watchdog"): the proofs of life
it judges the host programs by are out of every container's reach. An agent that could touch
them could keep a program it hung looking alive (so it is never restarted), or let a healthy
one's proof go stale (so the watchdog restarts it, over and over within its backoff).

The attack: from inside its container, the agent looks for a way to the host's
``run/alive/``: every mount it has, and every file under the host folders it can read, searched
for a secret the test put into that folder. The defence: ``run/`` is the host's (mode 0700),
and of it only ``run/proxy/`` is mounted into a container."""

from __future__ import annotations

import json
import secrets
import time

import pytest

from nanoclaw_common.alive import BEATING_PROGRAMS
from tests.security.conftest import STACK_POLL_S, HostileStack
from tests.waiting import wait_until

pytestmark = pytest.mark.podman

# Inside the container: the host path behind each mount (mountinfo's "root" field, relative
# to the source filesystem), and every regular file under the mounted host folders searched
# for the secret. A control file holding the secret proves the search reads what it walks.
LOOK = """
import json, os, stat
found, scanned = [], 0
control = "/workspace/.probe-" + str(os.getpid())
with open(control, "w") as handle:
    handle.write(SECRET)
try:
    with open("/proc/self/mountinfo") as handle:
        roots = [line.split()[3] for line in handle]
    for top in ("/session", "/workspace", "/run", "/tmp", "/dev/shm"):
        for folder, _, names in os.walk(top):
            for name in names:
                path = os.path.join(folder, name)
                try:
                    if stat.S_ISREG(os.lstat(path).st_mode):
                        scanned += 1
                        with open(path, "rb") as handle:
                            if SECRET.encode() in handle.read(1 << 20):
                                found.append(path)
                except OSError:
                    pass
finally:
    os.unlink(control)
print(json.dumps({"roots": roots, "found": found, "scanned": scanned}))
"""


def test_the_proofs_of_life_are_out_of_the_agents_reach(hostile: HostileStack) -> None:
    stack = hostile
    pids = stack.pids()
    alive = stack.layout.alive_dir
    # RUNNING is supervisord's "up for startsecs", not "started": on a busy machine a
    # program may still be importing. Its first beat says its loop runs.
    wait_until(
        lambda: all((alive / name).exists() for name in BEATING_PROGRAMS),
        timeout_s=60,
        what="first beats",
        poll_s=STACK_POLL_S,
    )
    secret = "alive-" + secrets.token_hex(12)
    planted = alive / f".probe-{secret}"
    planted.write_text(secret)
    try:
        agent = stack.agent()
        report = json.loads(agent.py(f"SECRET = {secret!r}\n{LOOK}").stdout)
    finally:
        planted.unlink()

    # The search worked (it found its own control file) and found nothing of the host's.
    assert report["scanned"] > 5
    assert [path for path in report["found"] if not path.startswith("/workspace/.probe-")] == []
    # No mount reaches run/ but the proxy's folder: its tail is enough to recognise it
    # whatever filesystem the data folder is on (mountinfo roots are relative to it).
    run_tail = "/".join(stack.layout.run_dir.parts[-3:])  # <stack folder>/data/run
    reaching_run = [root for root in report["roots"] if run_tail in root]
    assert reaching_run and all(root.endswith(f"{run_tail}/proxy") for root in reaching_run)

    # And the programs kept proving they are alive all along, with the pids they had.
    since = time.time()
    wait_until(
        lambda: all((alive / name).stat().st_mtime > since for name in BEATING_PROGRAMS),
        timeout_s=10,
        what="every program's next beat",
        poll_s=STACK_POLL_S,
    )
    stack.assert_up(pids)
