"""``nanoclaw chat --message``: when is the turn over? Only this message's replies count, and
the watch reads each outbound row once, however often it is asked."""

from __future__ import annotations

import asyncio

from nanoclaw_cli.chat import TurnWatch
from nanoclaw_common.channels.cli import CHANNEL, PLATFORM_ID
from nanoclaw_common.clock import now_ms
from nanoclaw_common.messages import ChatContent, SendText
from nanoclaw_common.paths import Layout
from nanoclaw_common.sessions import ensure_session_files
from nanoclaw_common.store import (
    CentralStore,
    InboundStore,
    NewInbound,
    NewOutbound,
    OutboundStore,
)
from nanoclaw_common.store.async_central import AsyncCentral

RUN = "run-1"


def inbound_row(row_id: str, channel: str, platform: str, text: str) -> NewInbound:
    return NewInbound(
        id=row_id,
        content=ChatContent(text=text, sender_id=f"{channel}:u", sender_name="u"),
        timestamp_ms=now_ms(),
        channel_type=channel,
        platform_id=platform,
    )


def reply(text: str, channel: str, platform: str, in_reply_to: str) -> NewOutbound:
    return NewOutbound(
        content=SendText(text=text),
        channel_type=channel,
        platform_id=platform,
        in_reply_to=in_reply_to,
    )


def deliver(inbound: InboundStore, message_out_id: str, seq: int, status: str) -> None:
    inbound.begin_attempt(message_out_id, record=[(message_out_id, seq)])
    inbound.finish_delivery(message_out_id, status)


def test_only_this_messages_replies_count(central: CentralStore, layout: Layout) -> None:
    """An agent-shared session serves the terminal and a Telegram chat. A reply to the
    Telegram chat, a reply to an earlier terminal message and a reply written before this
    message are stuck (never delivered); none of them holds this turn up."""
    group = central.create_agent_group("Main", central.unique_folder("Main"))
    terminal = central.create_messaging_group(CHANNEL, PLATFORM_ID, unknown_sender_policy="public")
    telegram = central.create_messaging_group("telegram", "-100", unknown_sender_policy="public")
    for chat in (terminal, telegram):
        central.create_wiring(
            chat.id,
            group.id,
            engage_mode="pattern",
            engage_pattern=".",
            session_mode="agent-shared",
        )
    session, _ = central.resolve_session(group.id, None, None, "agent-shared")
    paths = ensure_session_files(layout, session)
    inbound = InboundStore(paths.inbound_db)
    outbound = OutboundStore(paths.outbound_db)
    earlier, ours = f"cli-earlier:{group.id}", f"cli-now:{group.id}"
    watch = TurnWatch(AsyncCentral.inline(central), layout, "cli-now")
    try:
        inbound.insert_message(inbound_row(earlier, CHANNEL, PLATFORM_ID, "earlier"))
        stuck_before = outbound.insert_message(
            reply("to the earlier one", CHANNEL, PLATFORM_ID, earlier),
            run_id=RUN,
            min_seq=inbound.max_seq(),
        )
        inbound.insert_message(inbound_row(f"t1:{group.id}", "telegram", "-100", "hi"))
        inbound.insert_message(inbound_row(ours, CHANNEL, PLATFORM_ID, "now"))
        assert not over(watch)  # not answered yet
        for text, channel, platform, answered in (
            ("to telegram", "telegram", "-100", f"t1:{group.id}"),
            ("late, to the earlier one", CHANNEL, PLATFORM_ID, earlier),
        ):
            outbound.insert_message(
                reply(text, channel, platform, answered), run_id=RUN, min_seq=inbound.max_seq()
            )
        mine = outbound.insert_message(
            reply("to this one", CHANNEL, PLATFORM_ID, ours), run_id=RUN, min_seq=inbound.max_seq()
        )
        outbound.claim([ours], RUN)
        assert not over(watch)  # claimed, not settled
        outbound.complete([ours], RUN)
        assert not over(watch)  # settled, but its reply is not delivered yet
        deliver(inbound, mine.id, mine.seq, "retry")
        assert not over(watch)  # a retry is not final
        deliver(inbound, mine.id, mine.seq, "delivered")
        for _ in range(20):
            assert over(watch)
        assert inbound.get_delivery(stuck_before.id) is None  # still stuck, still ignored
        # Each outbound row was read once, not once per check.
        assert watch.rows_read == 4
        # Written after the turn was seen over: a later turn's, not read any more.
        outbound.insert_message(
            reply("later", CHANNEL, PLATFORM_ID, ours), run_id=RUN, min_seq=inbound.max_seq()
        )
        assert over(watch) and watch.rows_read == 4
    finally:
        watch.close()
        inbound.close()
        outbound.close()


def test_a_failed_message_with_a_failed_reply_is_over(
    central: CentralStore, layout: Layout
) -> None:
    group = central.create_agent_group("Main", central.unique_folder("Main"))
    terminal = central.create_messaging_group(CHANNEL, PLATFORM_ID, unknown_sender_policy="public")
    central.create_wiring(terminal.id, group.id, engage_mode="pattern", engage_pattern=".")
    session, _ = central.resolve_session(group.id, terminal.id, None, "shared")
    paths = ensure_session_files(layout, session)
    inbound = InboundStore(paths.inbound_db)
    outbound = OutboundStore(paths.outbound_db)
    row_id = f"cli-x:{group.id}"
    watch = TurnWatch(AsyncCentral.inline(central), layout, "cli-x")
    try:
        assert not over(watch)  # no row yet: nothing to wait for is not "over"
        inbound.insert_message(inbound_row(row_id, CHANNEL, PLATFORM_ID, "x"))
        written = outbound.insert_message(
            reply("sorry", CHANNEL, PLATFORM_ID, row_id), run_id=RUN, min_seq=inbound.max_seq()
        )
        outbound.fail([row_id], RUN)
        assert not over(watch)
        deliver(inbound, written.id, written.seq, "failed")
        assert over(watch)
    finally:
        watch.close()
        inbound.close()
        outbound.close()


def over(watch: TurnWatch) -> bool:
    return asyncio.run(watch.over())
