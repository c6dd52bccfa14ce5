"""What the agent's own commands can learn inside a real container (``Sandbox.wake``, the real
runner thinking with the real SDK through the real proxy): a ``bash`` tool call looks for the
proxy token in its environment and in the runner's ``/proc/<pid>/environ`` (the runner is
non-dumpable), and for the API key anywhere (the key never enters the container)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nanoclaw_common.paths import Layout
from nanoclaw_common.store import CentralStore
from tests.fakes.anthropic_api import FakeAnthropic, text, tool_use
from tests.integration.agents.harness import start_proxy
from tests.sandbox.conftest import CANARY_KEY, SandboxFactory, SessionFactory, wait_until
from tests.sandbox.test_runner_container import acked, send

pytestmark = pytest.mark.podman

# The key's value is assembled at run time, so the command itself (kept in the agent's
# conversation file, inside the container) does not hold it.
HALF = len(CANARY_KEY) // 2
PROBE = f"""
key="{CANARY_KEY[:HALF]}"; key="${{key}}{CANARY_KEY[HALF:]}"
echo "== own environment"; env
echo "== runner"; tr '\\0' ' ' < /proc/$PPID/cmdline; echo
echo "== runner environment"; tr '\\0' '\\n' < /proc/$PPID/environ 2>&1
echo "== environments naming the key"
readable=0
for f in /proc/[0-9]*/environ; do
  cat "$f" 2>/dev/null | tr '\\0' '\\n' > /tmp/env.txt && [ -s /tmp/env.txt ] || continue
  readable=$((readable + 1))
  grep -q -e ANTHROPIC_API_KEY -e "$key" /tmp/env.txt && echo "$f"
done
rm -f /tmp/env.txt
echo "== readable environments"; echo "$readable"
echo "== files holding the key"
grep -rlsaF --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev -e "$key" /
echo "== end"
"""


@pytest.fixture
def fake_api(home: Path, central: CentralStore) -> Iterator[FakeAnthropic]:
    """The fake Messages API, behind the real proxy on this data folder's run/proxy/proxy.sock."""
    api = FakeAnthropic(api_key=CANARY_KEY).start()
    proxy = start_proxy(home, CANARY_KEY, api.url)
    yield api
    proxy.stop()
    api.stop()


def sections(output: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for part in output.split("== ")[1:]:
        title, _, body = part.partition("\n")
        found[title] = body.strip()
    return found


def test_a_tool_cannot_read_the_token_or_find_the_key(
    make_sandbox: SandboxFactory,
    make_session: SessionFactory,
    layout: Layout,
    central: CentralStore,
    fake_api: FakeAnthropic,
) -> None:
    box = make_sandbox(command=None)  # the image's own command: the agent runner
    session = make_session(provider="anthropic")
    seen: dict[str, Any] = {}

    def record(body: dict[str, Any]) -> dict[str, Any]:
        seen["output"] = body["messages"][-1]["content"][0]["content"]
        return tool_use("send_message", {"text": "looked around"})

    fake_api.reply(
        tool_use("bash", {"command": PROBE}), record, text("<internal>sent it</internal>")
    )
    assert box.wake(session)
    message_id = send(layout, session, central, "look around")
    wait_until(lambda: acked(layout, session, message_id) == "completed", 60, "the ack")
    code, token, err = box.exec_in(session.id, ["printenv", "NANOCLAW_PROXY_TOKEN"])
    token = token.strip()
    assert code == 0 and len(token) > 20, err  # the container does hold a token...

    output = seen["output"]
    assert token not in output  # ...which the tool found nowhere
    found = sections(output)
    assert set(found) == {
        "own environment",
        "runner",
        "runner environment",
        "environments naming the key",
        "readable environments",
        "files holding the key",
        "end",
    }, output
    # Its own environment has none of the run's variables, yet is a real environment.
    assert "NANOCLAW_" not in found["own environment"] and "PATH=" in found["own environment"]
    # Its parent is the runner, and the runner's /proc entries are closed to it.
    assert "agent_runner" in found["runner"]
    assert "Permission denied" in found["runner environment"]
    # Readable environments (its own at least) hold no ANTHROPIC_API_KEY and not the key.
    assert found["environments naming the key"] == ""
    assert int(found["readable environments"]) >= 1
    assert found["files holding the key"] == ""
