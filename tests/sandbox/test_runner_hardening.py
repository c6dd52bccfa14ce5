"""What the agent's own commands can learn inside a real container (``Sandbox.wake``, the real
runner thinking with the real SDK through the real proxy): a ``bash`` tool call looks for the
run's proxy token and the API key in every environment it can read (its own, the init's; the
runner's is closed: it is non-dumpable) and in every file it can see (the runner unlinked the
token file before the first tool ran; the key never enters the container)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nanoclaw_common.store import CentralStore
from tests.fakes.anthropic_api import FakeAnthropic, text, tool_use
from tests.integration.agents.harness import start_proxy
from tests.sandbox.conftest import CANARY_KEY, SandboxFactory, SessionFactory, Tokens
from tests.sandbox.test_runner_container import acked, send
from tests.waiting import wait_until

pytestmark = pytest.mark.podman


def probe(token: str) -> str:
    """The tool call's script. The key's and the token's values are assembled at run time,
    so the command itself (kept in the agent's conversation file, inside the container)
    holds neither."""
    key_half, token_half = len(CANARY_KEY) // 2, len(token) // 2
    return f"""
key="{CANARY_KEY[:key_half]}"; key="${{key}}{CANARY_KEY[key_half:]}"
tok="{token[:token_half]}"; tok="${{tok}}{token[token_half:]}"
echo "== own environment"; env
echo "== runner"; tr '\\0' ' ' < /proc/$PPID/cmdline; echo
echo "== runner environment"; tr '\\0' '\\n' < /proc/$PPID/environ 2>&1
echo "== environments naming the key or the token"
readable=0
for f in /proc/[0-9]*/environ; do
  cat "$f" 2>/dev/null | tr '\\0' '\\n' > /tmp/env.txt && [ -s /tmp/env.txt ] || continue
  readable=$((readable + 1))
  grep -q -e ANTHROPIC_API_KEY -e NANOCLAW_PROXY_TOKEN -e "$key" -e "$tok" /tmp/env.txt && echo "$f"
done
rm -f /tmp/env.txt
echo "== readable environments"; echo "$readable"
echo "== the token file"; ls -a /session/agent | grep proxy-token
echo "== files holding the key or the token"
grep -rlsaF --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev -e "$key" -e "$tok" /
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
    central: CentralStore,
    fake_api: FakeAnthropic,
    tokens: Tokens,
) -> None:
    box = make_sandbox(command=None)  # the image's own command: the agent runner
    layout = box.layout
    session = make_session(provider="anthropic")
    seen: dict[str, Any] = {}

    def look_around(body: dict[str, Any]) -> dict[str, Any]:
        return tool_use("bash", {"command": probe(tokens.last)})

    def record(body: dict[str, Any]) -> dict[str, Any]:
        seen["output"] = body["messages"][-1]["content"][0]["content"]
        return tool_use("send_message", {"text": "looked around"})

    fake_api.reply(look_around, record, text("<internal>sent it</internal>"))
    assert box.wake(session)
    message_id = send(layout, session, central, "look around")
    wait_until(
        lambda: acked(layout, session, message_id) == "completed", timeout_s=60, what="the ack"
    )
    # The runner did hold the run's token: the proxy took it and put the key in.
    assert {r.headers["x-api-key"] for r in fake_api.message_requests()} == {CANARY_KEY}
    token = tokens.last

    output = seen["output"]
    assert token not in output and CANARY_KEY not in output
    found = sections(output)
    assert set(found) == {
        "own environment",
        "runner",
        "runner environment",
        "environments naming the key or the token",
        "readable environments",
        "the token file",
        "files holding the key or the token",
        "end",
    }, output
    # Its own environment has none of the run's variables, yet is a real environment.
    assert "NANOCLAW_" not in found["own environment"] and "PATH=" in found["own environment"]
    # Its parent is the runner, and the runner's /proc entries are closed to it.
    assert "agent_runner" in found["runner"]
    assert "Permission denied" in found["runner environment"]
    # Readable environments (its own and the init's, PID 1) name neither.
    assert found["environments naming the key or the token"] == ""
    assert int(found["readable environments"]) >= 2
    # The runner took the token file and unlinked it before any tool ran.
    assert found["the token file"] == ""
    assert found["files holding the key or the token"] == ""
