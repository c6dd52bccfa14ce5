"""The agent runner in a real container started by ``Sandbox.wake``, thinking with the real
anthropic SDK over the mounted proxy socket: the real credential proxy (host process) swaps
the run's token for the key and forwards to the fake Messages API. Then the container is
SIGKILLed, woken again, and the conversation goes on from ``agent/state/``. And an idle
runner sheds the SDK by re-executing itself inside the running container."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import podman
import pytest

from nanoclaw_common import messages
from nanoclaw_common.paths import Layout
from nanoclaw_common.sandbox import Sandbox
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore, InboundStore, NewInbound, OutboundReader, rows
from tests.fakes.anthropic_api import FakeAnthropic, text, tool_use
from tests.integration.agents.harness import rss_kb, start_proxy
from tests.sandbox.conftest import CANARY_KEY, SandboxFactory, SessionFactory
from tests.waiting import wait_until

pytestmark = pytest.mark.podman


@pytest.fixture
def fake_api(home: Path, central: CentralStore) -> Iterator[FakeAnthropic]:
    """The fake Messages API, behind the real proxy on this data folder's run/proxy/proxy.sock."""
    api = FakeAnthropic(api_key=CANARY_KEY).start()
    proxy = start_proxy(home, CANARY_KEY, api.url)
    yield api
    proxy.stop()
    api.stop()


def send(layout: Layout, session: rows.Session, central: CentralStore, text_: str) -> str:
    chat = central.get_messaging_group(session.messaging_group_id or "")
    assert chat is not None
    row_id = f"m-{time.time_ns()}:{session.agent_group_id}"
    store = InboundStore(layout.session(session.agent_group_id, session.id).inbound_db)
    try:
        store.insert_message(
            NewInbound(
                id=row_id,
                content=messages.ChatContent(text=text_, sender_id="cli:alice"),
                timestamp_ms=int(time.time() * 1000),
                channel_type=chat.channel_type,
                platform_id=chat.platform_id,
            )
        )
    finally:
        store.close()
    return row_id


def acked(layout: Layout, session: rows.Session, message_id: str) -> str | None:
    reader = OutboundReader(layout.session(session.agent_group_id, session.id).outbound_db)
    try:
        return next((a.status for a in reader.acks() if a.message_id == message_id), None)
    finally:
        reader.close()


def sent_texts(layout: Layout, session: rows.Session) -> list[str]:
    reader = OutboundReader(layout.session(session.agent_group_id, session.id).outbound_db)
    try:
        contents = [messages.decode_outbound_content(r.content) for r in reader.messages_after(0)]
    finally:
        reader.close()
    return [c.text for c in contents if isinstance(c, messages.SendText)]


def test_a_turn_in_a_container_and_resume_after_sigkill(
    make_sandbox: SandboxFactory,
    make_session: SessionFactory,
    layout: Layout,
    central: CentralStore,
    fake_api: FakeAnthropic,
) -> None:
    box: Sandbox = make_sandbox(command=None)  # the image's own command: the agent runner
    session = make_session(provider="anthropic")
    group = central.get_agent_group(session.agent_group_id)
    assert group is not None
    fake_api.reply(
        tool_use("bash", {"command": "id -u && echo made-inside > /workspace/proof.txt"}),
        lambda body: tool_use(
            "send_message", {"text": "uid " + body["messages"][-1]["content"][0]["content"]}
        ),
        text("<internal>sent it with the tool</internal>"),
    )
    assert box.wake(session)
    first = send(layout, session, central, "who are you in there?")
    wait_until(
        lambda: acked(layout, session, first) == "completed", timeout_s=60, what="the first ack"
    )
    (reply,) = sent_texts(layout, session)
    assert reply.startswith("uid ") and reply.split()[1] != "0"
    assert (layout.group_dir(group.folder) / "proof.txt").read_text() == "made-inside\n"
    requests = fake_api.message_requests()
    assert {r.headers["x-api-key"] for r in requests} == {CANARY_KEY}  # added by the proxy

    # SIGKILL the container; the next wake is a new run that resumes the conversation.
    with podman.PodmanClient(base_url=box.settings.podman_socket_url) as client:
        client.containers.get(box.container_name(session.id)).kill(signal="SIGKILL")
    wait_until(lambda: not box.running(), timeout_s=30, what="the container to die")
    seen: dict[str, Any] = {}

    def resumed(body: dict[str, Any]) -> dict[str, Any]:
        seen["history"] = json.dumps(body["messages"])
        return tool_use("send_message", {"text": "still me"})

    fake_api.reply(resumed, text("<internal>done</internal>"))
    assert box.wake(central.get_session(session.id))  # type: ignore[arg-type]
    second = send(layout, session, central, "do you remember?")
    wait_until(
        lambda: acked(layout, session, second) == "completed", timeout_s=60, what="the second ack"
    )
    assert sent_texts(layout, session)[-1] == "still me"
    assert "who are you in there?" in seen["history"] and "made-inside" in seen["history"]
    assert "do you remember?" in seen["history"]


def runner_pid(box: Sandbox, session: rows.Session) -> int:
    """The host pid of the agent runner: the child of the container's init (PID 1 inside)."""
    with podman.PodmanClient(base_url=box.settings.podman_socket_url) as client:
        init = int(client.containers.get(box.container_name(session.id)).attrs["State"]["Pid"])
    children = [
        int(pid)
        for task in Path(f"/proc/{init}/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]
    assert len(children) == 1, children
    return children[0]


def container_log(box: Sandbox, session: rows.Session) -> str:
    with podman.PodmanClient(base_url=box.settings.podman_socket_url) as client:
        container = client.containers.get(box.container_name(session.id))
        chunks = container.logs(stdout=True, stderr=True)
        assert not isinstance(chunks, bytes)  # without stream=True: an iterator all the same
        return b"".join(chunks).decode(errors="replace")


def test_an_idle_runner_sheds_the_sdk_inside_its_container(
    make_sandbox: SandboxFactory,
    make_session: SessionFactory,
    box_settings: Settings,
    central: CentralStore,
    fake_api: FakeAnthropic,
) -> None:
    # runner.json gets shed_after_s from the settings (Sandbox.runner_config).
    box = make_sandbox(
        command=None, settings=msgspec.structs.replace(box_settings, runner_shed_after_s=1.0)
    )
    layout = box.layout
    session = make_session(provider="anthropic")
    seen: dict[str, Any] = {}

    def after_shed(body: dict[str, Any]) -> dict[str, Any]:
        seen["history"] = json.dumps(body["messages"])
        return tool_use("bash", {"command": "cat /proc/$PPID/environ"})

    def after_bash(body: dict[str, Any]) -> dict[str, Any]:
        seen["bash"] = body["messages"][-1]["content"][0]["content"]
        return tool_use("send_message", {"text": "You are Ada."})

    fake_api.reply(
        tool_use("send_message", {"text": "Hello Ada."}),
        text("<internal>greeted</internal>"),
        after_shed,
        after_bash,
        text("<internal>answered</internal>"),
    )
    assert box.wake(session)
    paths = layout.session(session.agent_group_id, session.id)
    first = send(layout, session, central, "my name is Ada")
    wait_until(
        lambda: acked(layout, session, first) == "completed", timeout_s=60, what="the first ack"
    )
    pid = runner_pid(box, session)
    with_sdk_kb = rss_kb(pid)
    started = OutboundReader(paths.outbound_db)
    try:
        state = started.container_state()
    finally:
        started.close()
    assert state is not None

    resumed = "agent runner resumed after shedding the model SDK"
    wait_until(lambda: resumed in container_log(box, session), timeout_s=30, what="the re-exec")
    assert runner_pid(box, session) == pid  # the same process, in the same container
    shed_kb = rss_kb(pid)
    assert with_sdk_kb - shed_kb > 40 * 1024 and shed_kb < 80 * 1024, (with_sdk_kb, shed_kb)

    second = send(layout, session, central, "what is my name?")
    wait_until(
        lambda: acked(layout, session, second) == "completed", timeout_s=60, what="the second ack"
    )
    assert sent_texts(layout, session) == ["Hello Ada.", "You are Ada."]
    assert "my name is Ada" in seen["history"] and "Hello Ada." in seen["history"]
    # The re-exec'd runner is non-dumpable again: its tools cannot read its environment.
    assert "Permission denied" in seen["bash"] and "NANOCLAW_PROXY_TOKEN" not in seen["bash"]
    reader = OutboundReader(paths.outbound_db)
    try:
        after = reader.container_state()
    finally:
        reader.close()
    assert after is not None
    assert (after.run_id, after.started_at_ms) == (state.run_id, state.started_at_ms)
    assert {r.headers["x-api-key"] for r in fake_api.message_requests()} == {CANARY_KEY}


def test_tool_processes_end_with_their_call_inside_the_container(
    make_sandbox: SandboxFactory,
    make_session: SessionFactory,
    layout: Layout,
    central: CentralStore,
    fake_api: FakeAnthropic,
) -> None:
    """Under the container's init, the runner (a child subreaper) still gets a detached
    child of a timed-out bash call back, kills and reaps it; grep passes a FIFO by."""
    box: Sandbox = make_sandbox(command=None)
    session = make_session(provider="anthropic")
    # The container cannot make a FIFO (the seccomp profile); one in the group folder can
    # still come from the host side.
    group = central.get_agent_group(session.agent_group_id)
    assert group is not None
    os.mkfifo(layout.group_dir(group.folder) / "pipe")
    escape = (
        "echo needle > /workspace/hay.txt && "
        "setsid sh -c 'echo $$ > /workspace/holder.pid; exec sleep 300' & sleep 60"
    )
    probe = (
        "pid=$(cat /workspace/holder.pid); "
        "if [ -e /proc/$pid ]; then echo alive; cat /proc/$pid/stat; else echo gone; fi"
    )
    fake_api.reply(
        tool_use("bash", {"command": escape, "timeout_s": 2}, "toolu_escape"),
        tool_use("grep", {"pattern": "needle"}, "toolu_grep"),
        tool_use("bash", {"command": probe}, "toolu_probe"),
        tool_use("send_message", {"text": "checked"}, "toolu_send"),
        text("<internal>done</internal>"),
    )
    assert box.wake(session)
    message_id = send(layout, session, central, "leave something running")
    try:
        wait_until(
            lambda: acked(layout, session, message_id) == "completed", timeout_s=90, what="the ack"
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{container_log(box, session)}") from None
    requests = fake_api.message_requests()
    results = [r.body["messages"][-1]["content"][0] for r in requests[1:4]]
    assert [r["tool_use_id"] for r in results] == ["toolu_escape", "toolu_grep", "toolu_probe"]
    assert results[0]["content"].startswith("Error: command timed out after 2s")
    assert results[1]["content"] == "hay.txt:1: needle"
    assert results[2]["content"] == "gone"  # killed, and reaped (not a zombie either)
    # The timed-out call did not wait for the pipe the detached child held.
    assert requests[2].at - requests[1].at < 6
