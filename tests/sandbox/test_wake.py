"""``Sandbox.wake`` / ``stop`` / listing against real Podman: idempotence under concurrency
(threads and processes), stop escalation, settling leftover claims, failures that return
False, allowlisted extra mounts, restarts through the sweeper and group images."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import threading
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import msgspec
import podman
import pytest

from nanoclaw_common.clock import now_ms
from nanoclaw_common.messages import ChatContent, decode_inbound_content, system_note
from nanoclaw_common.paths import Layout
from nanoclaw_common.runner_config import PROXY_TOKEN_FILE
from nanoclaw_common.sandbox import Sandbox, StopOutcome
from nanoclaw_common.sandbox.group_image import build_recorded_group_image
from nanoclaw_common.sandbox.ownership import AGENT_GID, AGENT_UID
from nanoclaw_common.sandbox.service import PodmanService
from nanoclaw_common.sandbox.settle import failure_note_id
from nanoclaw_common.settings import Settings
from nanoclaw_common.states import ContainerStatus
from nanoclaw_common.store import CentralStore, InboundStore, NewInbound, OutboundStore, rows
from nanoclaw_common.store.runs import RunLedger
from nanoclaw_sweeper.sweeper import Sweeper
from tests.sandbox.conftest import SLEEP, SandboxFactory, SessionFactory, Tokens
from tests.waiting import wait_until

pytestmark = pytest.mark.podman

IGNORE_TERM = [
    "python3",
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    " open('/session/agent/ready', 'w').close(); time.sleep(3600)",
]


def containers_of(box: Sandbox, session: rows.Session) -> list[Any]:
    return [info for info in box.containers() if info.session_id == session.id]


def test_wake_is_idempotent(
    make_sandbox: SandboxFactory, make_session: SessionFactory, central: CentralStore
) -> None:
    box = make_sandbox()
    session = make_session()
    assert box.wake(session)
    [first] = containers_of(box, session)
    assert box.wake(session)
    assert box.wake(central.get_session(session.id))  # type: ignore[arg-type]
    [again] = containers_of(box, session)
    assert again.id == first.id and again.running
    fresh = central.get_session(session.id)
    assert fresh is not None and fresh.run_id == first.run_id
    assert [info.name for info in box.running()] == [box.container_name(session.id)]


def test_concurrent_wakes_in_threads_start_one_container(
    make_sandbox: SandboxFactory, make_session: SessionFactory, central: CentralStore
) -> None:
    box = make_sandbox()
    session = make_session()
    barrier = threading.Barrier(6)
    results: list[bool] = []

    def wake() -> None:
        barrier.wait()
        results.append(box.wake(session))

    threads = [threading.Thread(target=wake) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 6
    [only] = containers_of(box, session)
    fresh = central.get_session(session.id)
    assert fresh is not None and fresh.run_id == only.run_id  # the run that really started


def wake_in_process(settings_json: bytes, session_json: bytes, barrier: Barrier) -> None:
    settings = msgspec.json.decode(settings_json, type=Settings)
    session = msgspec.json.decode(session_json, type=rows.Session)
    box = Sandbox(settings, command=SLEEP)
    barrier.wait()
    woke = box.wake(session)
    box.close()
    raise SystemExit(0 if woke else 3)


def test_concurrent_wakes_in_processes_start_one_container(
    make_sandbox: SandboxFactory,
    make_session: SessionFactory,
    box_settings: Settings,
    central: CentralStore,
) -> None:
    box = make_sandbox()
    session = make_session()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    args = (msgspec.json.encode(box_settings), msgspec.json.encode(session), barrier)
    processes = [context.Process(target=wake_in_process, args=args) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0, 0, 0]
    [only] = containers_of(box, session)
    fresh = central.get_session(session.id)
    assert fresh is not None and fresh.run_id == only.run_id


def test_a_container_that_ended_is_replaced_by_a_new_run(
    make_sandbox: SandboxFactory, make_session: SessionFactory, central: CentralStore
) -> None:
    box = make_sandbox(command=["true"])
    session = make_session()
    assert box.wake(session)
    wait_until(lambda: bool(box.ended()), timeout_s=30.0, what="the container to exit")
    [ended] = box.ended()
    assert box.running() == []
    assert box.wake(session)
    [replacement] = containers_of(box, session)
    assert replacement.id != ended.id and replacement.run_id != ended.run_id
    fresh = central.get_session(session.id)
    assert fresh is not None and fresh.run_id == replacement.run_id


def test_stop_asks_with_term(
    make_sandbox: SandboxFactory, make_session: SessionFactory, central: CentralStore
) -> None:
    box = make_sandbox()
    session = make_session()
    assert box.wake(session)
    assert box.stop(session.id, timeout_s=30) is StopOutcome.STOPPED
    assert containers_of(box, session) == []
    fresh = central.get_session(session.id)
    assert fresh is not None and fresh.container_status == "stopped"
    assert box.stop(session.id) is StopOutcome.ABSENT


def test_stop_escalates_to_kill(
    make_sandbox: SandboxFactory, make_session: SessionFactory, layout: Layout
) -> None:
    box = make_sandbox(command=IGNORE_TERM)
    session = make_session()
    assert box.wake(session)
    ready = layout.session(session.agent_group_id, session.id).agent_dir / "ready"
    wait_until(ready.exists, timeout_s=30.0, what="the TERM-ignoring process to start")
    assert box.stop(session.id, timeout_s=1) is StopOutcome.KILLED
    assert containers_of(box, session) == []


def add_message(
    layout: Layout, central: CentralStore, session: rows.Session, message_id: str, tries: int = 0
) -> rows.Session:
    """A message claimed by a run that died: the session's recorded run (only its claims are
    leftovers to settle). Returns the session as central.db now has it."""
    paths = layout.session(session.agent_group_id, session.id)
    inbound = InboundStore(paths.inbound_db)
    inbound.insert_message(
        NewInbound(
            id=message_id,
            content=ChatContent(text="do it", sender_id="cli:local"),
            timestamp_ms=1,
            channel_type="cli",
            platform_id="local",
        )
    )
    if tries:
        inbound.reschedule(message_id, tries=tries, process_after_ms=1)
    inbound.close()
    outbound = OutboundStore(paths.outbound_db)
    outbound.claim([message_id], "run-that-died")
    outbound.close()
    central.set_container_status(session.id, ContainerStatus.STARTING, run_id="run-that-died")
    central.set_container_status(session.id, ContainerStatus.STOPPED)
    recorded = central.get_session(session.id)
    assert recorded is not None
    return recorded


def test_wake_settles_the_previous_runs_claims(
    make_sandbox: SandboxFactory,
    make_session: SessionFactory,
    layout: Layout,
    central: CentralStore,
) -> None:
    box = make_sandbox()
    session = make_session()
    session = add_message(layout, central, session, "m1")
    assert box.wake(session)
    paths = layout.session(session.agent_group_id, session.id)
    inbound = InboundStore(paths.inbound_db)
    row = inbound.get_message("m1")
    assert row is not None and row.status == "pending" and row.tries == 1
    assert row.process_after_ms is not None and row.process_after_ms > row.created_at_ms
    assert RunLedger(central).is_settled(session.id, "run-that-died")
    fresh = central.get_session(session.id)
    assert fresh is not None and fresh.run_id != "run-that-died"
    # This run never claimed anything (it only sleeps), so the old claim is still on disk:
    # another wake after a stop must not count the same death twice.
    box.stop(session.id)
    assert box.wake(session)
    row = inbound.get_message("m1")
    assert row is not None and row.tries == 1
    inbound.close()


def test_a_message_that_keeps_killing_its_run_fails(
    make_sandbox: SandboxFactory,
    make_session: SessionFactory,
    layout: Layout,
    central: CentralStore,
    box_settings: Settings,
) -> None:
    box = make_sandbox(settings=msgspec.structs.replace(box_settings, max_tries=3))
    session = make_session()
    session = add_message(layout, central, session, "poison", tries=2)
    assert box.wake(session)
    inbound = InboundStore(layout.session(session.agent_group_id, session.id).inbound_db)
    row = inbound.get_message("poison")
    assert row is not None and (row.status, row.tries) == ("failed", 3)
    note = inbound.get_message(failure_note_id("poison"))
    assert note is not None and note.status == "pending"
    content = decode_inbound_content(note.content)
    assert isinstance(content, ChatContent) and "could not be processed" in content.text
    inbound.close()
    assert [f.message_id for f in RunLedger(central).list_failures(session.id)] == ["poison"]


def test_wake_returns_false_when_podman_cannot_start_it(
    make_sandbox: SandboxFactory,
    make_session: SessionFactory,
    central: CentralStore,
    box_settings: Settings,
) -> None:
    box = make_sandbox(
        settings=msgspec.structs.replace(box_settings, image="localhost/nanoclaw-no-such:image")
    )
    session = make_session()
    assert box.wake(session) is False
    assert containers_of(box, session) == []
    fresh = central.get_session(session.id)
    assert fresh is not None and fresh.container_status == "stopped"
    # The run's token (revoked) is not left in the session's folder.
    agent_dir = box.layout.session(session.agent_group_id, session.id).agent_dir
    assert not (agent_dir / PROXY_TOKEN_FILE).exists()


def test_wake_leaves_the_token_for_the_runner_only(
    make_sandbox: SandboxFactory, make_session: SessionFactory, tokens: Tokens
) -> None:
    """What the runner finds in agent/.proxy-token (SLEEP does not take it): this run's token,
    readable by the container user only."""
    box = make_sandbox()
    session = make_session()
    assert box.wake(session)
    path = box.layout.session(session.agent_group_id, session.id).agent_dir / PROXY_TOKEN_FILE
    info = path.lstat()
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    owner = (os.getuid(), os.getgid()) if box.rootless else (AGENT_UID, AGENT_GID)
    assert (info.st_uid, info.st_gid) == owner
    assert path.read_text() == tokens.last
    code, out, err = box.exec_in(session.id, ["cat", "/session/agent/.proxy-token"])
    assert (code, out) == (0, tokens.last), err  # the container user can read it


def test_wake_waits_for_the_proxy(
    make_sandbox: SandboxFactory, make_session: SessionFactory, central: CentralStore
) -> None:
    """The real model needs the credential proxy's socket; without it, wake says "not now"
    (the message stays pending) instead of starting a run that cannot think."""
    box = make_sandbox()
    session = make_session(provider="anthropic")
    assert box.wake(session) is False
    assert containers_of(box, session) == []
    fresh = central.get_session(session.id)
    assert fresh is not None and fresh.container_status == "stopped" and fresh.run_id is None


def test_allowlisted_extra_mounts(
    make_sandbox: SandboxFactory,
    make_session: SessionFactory,
    central: CentralStore,
    box_settings: Settings,
    tmp_path: Path,
) -> None:
    root = tmp_path / "projects"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "readme.txt").write_text("from the host")
    (root / ".ssh").mkdir()
    (root / ".ssh" / "id_ed25519").write_text("PRIVATE")
    allowlist = tmp_path / "config" / "mount-allowlist.json"
    allowlist.parent.mkdir()
    allowlist.write_text(json.dumps({"allowedRoots": [{"path": str(root)}]}))
    box = make_sandbox(
        settings=msgspec.structs.replace(box_settings, mount_allowlist=str(allowlist))
    )
    session = make_session()
    central.update_container_config(
        session.agent_group_id,
        additional_mounts=json.dumps(
            [
                {"hostPath": str(root / "docs"), "readonly": False},
                {"hostPath": str(root / ".ssh"), "containerPath": "keys"},
                {"hostPath": str(tmp_path), "containerPath": "everything"},
            ]
        ),
    )
    assert box.wake(session)
    code, out, err = box.exec_in(
        session.id,
        [
            "python3",
            "-c",
            "import os\n"
            "print(open('/workspace/extra/docs/readme.txt').read())\n"
            "print(sorted(os.listdir('/workspace/extra')))\n"
            "try:\n"
            "    open('/workspace/extra/docs/new', 'w'); print('WROTE')\n"
            "except OSError as exc:\n"
            "    print(exc.strerror)\n",
        ],
    )
    assert code == 0, err
    assert out.splitlines() == ["from the host", "['docs']", "Read-only file system"]


def test_orphans_and_remove(make_sandbox: SandboxFactory, make_session: SessionFactory) -> None:
    box = make_sandbox()
    keep, orphan = make_session(), make_session()
    assert box.wake(keep) and box.wake(orphan)
    found = box.orphans({keep.id})
    assert [info.session_id for info in found] == [orphan.id]
    assert box.remove(found[0].name)
    assert not box.remove(found[0].name)
    assert [info.session_id for info in box.running()] == [keep.id]


def test_a_restart_request_gives_a_fresh_run_that_sees_the_note(
    make_sandbox: SandboxFactory,
    make_session: SessionFactory,
    central: CentralStore,
    layout: Layout,
    box_settings: Settings,
) -> None:
    """After an approval, delivery writes an on_wake note and a restart request; the sweeper
    (here with the real Sandbox) stops the running container and wakes a fresh run. Other
    groups' containers are left alone."""
    box = make_sandbox()
    session = make_session()
    bystander = make_session()  # its own group
    assert box.wake(session) and box.wake(bystander)
    before = central.get_session(session.id)
    untouched = central.get_session(bystander.id)
    assert before is not None and untouched is not None
    note_time = now_ms()
    inbound = InboundStore(layout.session(session.agent_group_id, session.id).inbound_db)
    inbound.insert_message(
        NewInbound(
            id="restart-note",
            content=system_note("Packages installed: jq"),
            timestamp_ms=note_time,
            on_wake=True,
        )
    )
    inbound.close()
    assert central.request_group_restart(session.agent_group_id, "install_packages") == [session.id]
    report = Sweeper(box_settings, central, box).sweep(now_ms())
    assert report.restarted == [session.id]
    assert report.woken == [session.id]
    after = central.get_session(session.id)
    assert after is not None and after.run_id != before.run_id
    assert [c.session_id for c in box.running()].count(session.id) == 1
    assert central.get_session(bystander.id) == untouched
    assert central.list_restart_requests() == []


def test_group_image_with_packages(
    make_sandbox: SandboxFactory,
    make_session: SessionFactory,
    central: CentralStore,
    layout: Layout,
    podman_service: PodmanService,
) -> None:
    box = make_sandbox()
    session = make_session()
    lines: list[str] = []
    tag = build_recorded_group_image(
        central,
        layout,
        session.agent_group_id,
        agent_image=box.settings.image,
        apt=["jq"],
        pip=["six"],
        out=lines.append,
    )
    try:
        config = central.get_container_config(session.agent_group_id)
        assert config is not None and config.image_tag == tag
        assert (config.packages_apt, config.packages_pip) == ('["jq"]', '["six"]')
        assert any("Successfully tagged" in line for line in lines)
        assert box.wake(session)
        code, out, err = box.exec_in(
            session.id, ["sh", "-c", "jq --version && python3 -c 'import six; print(six.PY3)'"]
        )
        assert code == 0, err
        assert out.split()[-1] == "True"
        code, out, _ = box.exec_in(session.id, ["id", "-u"])
        assert out.strip() == "20000"
    finally:
        box.stop(session.id, timeout_s=5)
        with podman.PodmanClient(base_url=podman_service.url) as client:
            client.images.remove(tag, force=True)
