"""The pure parts of the router: the routing plan (with properties), the command gate,
attachment names and the typing policy."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nanoclaw_common.channels.common import make_event
from nanoclaw_common.ids import is_safe_id
from nanoclaw_common.messages import InboundEvent
from nanoclaw_common.store.rows import MessagingGroup, Wiring
from nanoclaw_router.attachments import inbox_dir_name, safe_filename
from nanoclaw_router.routing import (
    ChatView,
    CommandClass,
    DropReason,
    WiringView,
    classify_command,
    plan_route,
)
from nanoclaw_router.typing_indicator import GRACE_MS, Facts, TypingAction, decide

# -- strategies -----------------------------------------------------------------------------

texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["/help", "/clear", "/CLEAR@bot x", "/compact", "/other", "deploy now", ""]),
)


@st.composite
def wirings(draw: st.DrawFn, index: int) -> WiringView:
    mode = draw(st.sampled_from(["mention", "mention-sticky", "pattern"]))
    pattern = draw(st.sampled_from([None, ".", "deploy", "(broken", "^$"]))
    wiring = Wiring(
        id=f"w{index}",
        messaging_group_id="mg",
        agent_group_id=f"ag{index}",
        engage_mode=mode,
        engage_pattern=pattern if mode == "pattern" else None,
        sender_scope=draw(st.sampled_from(["all", "known"])),
        ignored_message_policy=draw(st.sampled_from(["drop", "accumulate"])),
        session_mode=draw(st.sampled_from(["shared", "per-thread", "agent-shared"])),
        priority=draw(st.integers(0, 5)),
        created_at_ms=1,
    )
    return WiringView(
        wiring=wiring,
        group_exists=draw(st.booleans()),
        sender_known=draw(st.booleans()),
        sender_admin=draw(st.booleans()),
        active_session=draw(st.booleans()),
    )


@st.composite
def situations(draw: st.DrawFn) -> tuple[InboundEvent, ChatView]:
    is_group = draw(st.booleans())
    chat = MessagingGroup(
        id="mg",
        channel_type="chat",
        platform_id="p",
        name=None,
        is_group=int(is_group),
        unknown_sender_policy=draw(st.sampled_from(["strict", "request_approval", "public"])),
        denied_at_ms=None,
        created_at_ms=1,
    )
    count = draw(st.integers(1, 4))
    views = [draw(wirings(i)) for i in range(count)]
    event = make_event(
        channel_type="chat",
        platform_id="p",
        message_id="m1",
        sender_id="chat:u",
        text=draw(texts),
        timestamp_ms=1,
        is_mention=draw(st.booleans()),
        is_group=is_group,
        thread_id=draw(st.sampled_from([None, "t1"])),
    )
    return event, ChatView(chat, views, draw(st.booleans()))


# -- properties of the plan -----------------------------------------------------------------


@settings(max_examples=300)
@given(situations())
def test_every_message_is_stored_or_accounted_for(situation: tuple[InboundEvent, ChatView]) -> None:
    event, view = situation
    plan = plan_route(event, view)
    assert plan.deliveries or plan.drops, "a message vanished without a drop record"
    groups = [d.wiring.agent_group_id for d in plan.deliveries]
    assert len(groups) == len(set(groups)), "one group got two copies"
    by_group = {v.wiring.agent_group_id: v for v in view.wirings}
    for delivery in plan.deliveries:
        source = by_group[delivery.wiring.agent_group_id]
        assert source.group_exists
        # Nobody the gates refuse is ever stored, as a trigger or as context.
        assert view.chat.unknown_sender_policy == "public" or source.sender_known
        if delivery.wiring.sender_scope == "known":
            assert source.sender_known
        command, _ = classify_command(event.text)
        assert command is not CommandClass.FILTER
        if command is CommandClass.ADMIN:
            assert source.sender_admin
        if not delivery.trigger:
            assert delivery.wiring.ignored_message_policy == "accumulate"
            # Context never opens a thread's session (a Slack message is a thread).
            if delivery.session_mode == "per-thread" and event.thread_id is not None:
                assert source.active_session
        if delivery.wiring.engage_pattern == "(broken":
            raise AssertionError("an invalid pattern engaged")
    for denial in plan.denials:
        assert not by_group[denial.wiring.agent_group_id].sender_admin
    if plan.ask_sender_approval is not None:
        assert view.chat.unknown_sender_policy == "request_approval"


@settings(max_examples=200)
@given(situations())
def test_the_plan_follows_wiring_order(situation: tuple[InboundEvent, ChatView]) -> None:
    event, view = situation
    plan = plan_route(event, view)
    order = [v.wiring.agent_group_id for v in view.wirings]
    delivered = [d.wiring.agent_group_id for d in plan.deliveries]
    assert delivered == [g for g in order if g in delivered]


def test_threaded_groups_force_per_thread_except_agent_shared() -> None:
    base = {
        "text": "x",
        "channel_type": "chat",
        "platform_id": "p",
        "message_id": "m",
        "sender_id": "chat:u",
        "timestamp_ms": 1,
    }
    chat = MessagingGroup("mg", "chat", "p", None, 1, "public", None, 1)

    def mode_for(session_mode: str, threads: bool) -> str:
        wiring = Wiring("w", "mg", "ag", "pattern", ".", "all", "drop", session_mode, 0, 1)
        plan = plan_route(make_event(**base), ChatView(chat, [WiringView(wiring)], threads))
        return plan.deliveries[0].session_mode

    assert mode_for("shared", threads=True) == "per-thread"
    assert mode_for("shared", threads=False) == "shared"
    assert mode_for("agent-shared", threads=True) == "agent-shared"


def test_missing_groups_are_recorded() -> None:
    chat = MessagingGroup("mg", "chat", "p", None, 1, "public", None, 1)
    wiring = Wiring("w", "mg", "gone", "pattern", ".", "all", "drop", "shared", 0, 1)
    event = make_event(
        channel_type="chat",
        platform_id="p",
        message_id="m",
        sender_id="chat:u",
        text="x",
        timestamp_ms=1,
    )
    plan = plan_route(event, ChatView(chat, [WiringView(wiring, group_exists=False)]))
    assert [d.reason for d in plan.drops] == [DropReason.MISSING_AGENT_GROUP]


# -- command gate ---------------------------------------------------------------------------


def test_command_classes() -> None:
    assert classify_command("hello /help") == (CommandClass.PASS, "")
    assert classify_command("  /HELP me") == (CommandClass.FILTER, "/help")
    assert classify_command("/start") == (CommandClass.FILTER, "/start")
    assert classify_command("/clear@nano_bot") == (CommandClass.ADMIN, "/clear")
    assert classify_command("/context") == (CommandClass.ADMIN, "/context")
    assert classify_command("/weather tomorrow") == (CommandClass.PASS, "/weather")


# -- attachment names -----------------------------------------------------------------------


@given(st.text(max_size=300), st.integers(0, 19), st.sampled_from([None, "image/png", "x/y"]))
def test_attachment_names_are_always_one_safe_component(
    name: str, index: int, mime: str | None
) -> None:
    safe = safe_filename(name, index, mime, "file")
    assert safe and safe not in (".", "..")
    assert "/" not in safe and "\\" not in safe and "\x00" not in safe
    assert not safe.startswith(".")
    assert len(safe) <= 100


def test_attachment_name_examples() -> None:
    assert safe_filename("../../etc/passwd", 0, None, "file") == "passwd"
    assert safe_filename("C:\\Users\\x\\report.pdf", 0, None, "file") == "report.pdf"
    assert safe_filename("..", 2, "image/png", "image") == "attachment-3.png"
    assert safe_filename("", 0, None, "voice") == "attachment-1.ogg"
    assert safe_filename(".bashrc", 0, None, "file") == "bashrc"
    assert safe_filename("naïve résumé.txt", 0, None, "file") == "naïve résumé.txt"
    assert safe_filename("evil\u202egpj.exe", 0, None, "file") == "evil_gpj.exe"


@given(st.text(min_size=1, max_size=300))
def test_inbox_folders_are_safe(row_id: str) -> None:
    assert is_safe_id(inbox_dir_name(row_id))


# -- typing ---------------------------------------------------------------------------------


def test_typing_policy() -> None:
    alive = Facts(heartbeat_ms=100_000, work_done=False, last_delivery_ms=None)
    dead = Facts(heartbeat_ms=None, work_done=False, last_delivery_ms=None)
    fresh = 6_000
    # At once, then every 4 s.
    assert decide(100_000, 100_000, None, dead, fresh) is TypingAction.FIRE
    assert decide(102_000, 100_000, 100_000, dead, fresh) is TypingAction.WAIT
    assert decide(104_000, 100_000, 100_000, dead, fresh) is TypingAction.FIRE
    # Past the grace window a run without a fresh heartbeat is not working.
    assert decide(100_000 + GRACE_MS, 100_000, 110_000, dead, fresh) is TypingAction.STOP
    assert decide(103_000, 90_000, 90_000, alive, fresh) is TypingAction.FIRE
    assert decide(107_000, 90_000, 103_000, alive, fresh) is TypingAction.STOP
    # Paused right after a delivery; stopped when the work is acked.
    delivered = Facts(heartbeat_ms=100_000, work_done=False, last_delivery_ms=99_000)
    assert decide(100_000, 100_000, None, delivered, fresh) is TypingAction.WAIT
    done = Facts(heartbeat_ms=100_000, work_done=True, last_delivery_ms=None)
    assert decide(100_000, 100_000, None, done, fresh) is TypingAction.STOP


# -- the whole ingest path, with real databases ---------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["c1", "c2", "unknown"]),
            st.sampled_from(["chat:member", "chat:stranger", "chat:admin"]),
            texts,
            st.booleans(),
            st.sampled_from([None, "t1"]),
            st.sampled_from(["m1", "m2", "m3", "m4"]),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_ingest_never_fails_and_never_duplicates(
    events: list[tuple[str, str, str, bool, str | None, str]],
) -> None:
    import tempfile
    from pathlib import Path

    from nanoclaw_common.paths import Layout
    from nanoclaw_common.settings import Settings
    from nanoclaw_common.store import CentralStore
    from tests.unit.router.conftest import Harness

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=tmp, install_id="prop")
        layout = Layout(Path(tmp))
        layout.ensure()
        central = CentralStore.open(layout.central_db)
        harness = Harness(settings, central, layout)
        try:
            group, other = harness.group("A"), harness.group("B")
            harness.user("chat:member", member_of=group)
            harness.user("chat:admin", role="admin", scope=group.id)
            harness.owner()
            c1 = harness.chat_row("c1", policy="strict")
            harness.wire(c1, group, engage_mode="mention", ignored_message_policy="accumulate")
            harness.wire(c1, other, engage_mode="pattern", engage_pattern="deploy", priority=3)
            c2 = harness.chat_row("c2", policy="request_approval")
            harness.wire(c2, group, engage_mode="mention-sticky", session_mode="per-thread")
            for chat, sender, text, mention, thread, message_id in events:
                harness.send(
                    text,
                    chat=chat,
                    sender=sender,
                    mention=mention,
                    thread=thread,
                    message_id=f"{chat}-{message_id}",
                )
            harness.flush()
            rows = [row for s in harness.sessions() for row in harness.rows(s)]
            ids = [row.id for row in rows]
            assert len(ids) == len(set(ids))
            for session in harness.sessions():
                seqs = [row.seq for row in harness.rows(session)]
                assert seqs == sorted(seqs) and all(seq % 2 == 0 for seq in seqs)
            # A stranger in the strict chat never reaches a session.
            assert not any(
                '"sender_id":"chat:stranger"' in row.content and row.platform_id == "c1"
                for row in rows
            )
        finally:
            harness.close()
            central.close()
