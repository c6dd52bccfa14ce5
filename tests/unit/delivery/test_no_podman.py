"""Delivery never loads podman-py (about 10 MB of RSS, issue 5): not when its dependencies are
built as ``main()`` builds them, with every adapter configured, and not on the paths that
used to need the sandbox (an approved package install, an agent-to-agent message). Checked in
a fresh interpreter, since this test process has imported everything already."""

from __future__ import annotations

import json
import subprocess
import sys

from nanoclaw_common import messages as m
from nanoclaw_common.states import DestinationType
from nanoclaw_common.store.rows import PendingApproval
from nanoclaw_delivery.approvals import OPTIONS
from tests.delivery_world import World
from tests.environ import clean_environ

CHILD = """
import asyncio, json, sys

from nanoclaw_common.paths import Layout
from nanoclaw_common.settings import load_from_process
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.async_central import AsyncCentral
from nanoclaw_delivery.__main__ import make_deps, tune_memory
from nanoclaw_delivery.approvals import ApprovalWatcher
from nanoclaw_delivery.engine import SessionWorker
from nanoclaw_delivery.service import DeliveryService


def podman_modules():
    return sorted(
        name for name in sys.modules
        if name.split(".")[0] == "podman" or name == "nanoclaw_common.sandbox.core"
    )


settings = load_from_process()
tune_memory()
layout = Layout(settings.home_path)
central = CentralStore.open(layout.central_db)
deps = make_deps(settings, layout, AsyncCentral(layout.central_db))
DeliveryService(deps)
found = {"adapters": sorted(deps.adapters), "after_main": podman_modules()}


async def paths():
    found["applied"] = await ApprovalWatcher(deps).tick(deps.clock())
    session = await asyncio.to_thread(central.get_session, sys.argv[1])
    worker = SessionWorker(deps, session, layout.session(session.agent_group_id, session.id))
    try:
        await worker.drain()
    finally:
        worker.close()


asyncio.run(paths())
deps.offload.close()
deps.central.close()
found["after_paths"] = podman_modules()
print(json.dumps(found))
"""


def test_delivery_never_imports_podman(world: World) -> None:
    # An approved install_packages waiting to be applied…
    payload = m.encode_text(m.InstallPackages(apt=["jq"]))
    world.central.create_pending_approval(
        PendingApproval(
            approval_id="appr-1",
            session_id=world.session.id,
            agent_group_id=world.group.id,
            request_id="out-1",
            action="install_packages",
            payload=payload,
            approver_user_id="telegram:owner",
            channel_type=None,
            platform_id=None,
            platform_message_id=None,
            status="pending",
            title="Install Packages Request",
            options_json=m.encode_text(OPTIONS),
            created_at_ms=world.clock(),
            expires_at_ms=None,
        )
    )
    assert world.central.decide_approval("appr-1", "telegram:owner", "approve") == "approved"
    # …and a message to another agent, whose session is stopped.
    helper = world.central.create_agent_group("Helper", "helper")
    world.central.add_destination(world.group.id, "helper", DestinationType.AGENT, helper.id)
    out = world.write(m.SendText(text="hello"), channel_type="agent", platform_id=helper.id)

    env = world.podman.env(clean_environ())
    env.update(
        NANOCLAW_HOME=str(world.settings.home_path),
        NANOCLAW_INSTALL_ID="test",
        NANOCLAW_ENV_FILE=str(world.settings.home_path / "no.env"),
        NANOCLAW_LOG_LEVEL="WARNING",
        # Every adapter configured, as in production: their libraries load, nothing connects.
        TELEGRAM_BOT_TOKEN="123456:test-token",
        TELEGRAM_API_BASE_URL="http://127.0.0.1:9",
        SLACK_BOT_TOKEN="xoxb-test-token",
        SLACK_API_BASE_URL="http://127.0.0.1:9/api/",
    )
    done = subprocess.run(
        [sys.executable, "-c", CHILD, world.session.id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["adapters"] == ["cli", "slack", "telegram"]
    assert found["after_main"] == []
    assert found["after_paths"] == []
    # The paths really ran: the image was built (podman command line) and recorded, the
    # agent message landed.
    assert found["applied"] == 1
    assert len(world.podman.builds()) == 1
    config = world.central.get_container_config(world.group.id)
    assert config is not None and config.packages_apt == '["jq"]'
    assert world.delivery(out.id).status == "delivered"
