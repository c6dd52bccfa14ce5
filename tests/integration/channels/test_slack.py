"""Slack: slack-sdk against the fake (Web API, Socket Mode websocket, Events API)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import pytest

from nanoclaw_common.channels.base import INVALID_INPUT, OutgoingFile
from nanoclaw_common.channels.common import button_data
from nanoclaw_common.channels.slack import SlackAdapter
from nanoclaw_common.errors import PermanentFailure, RetryLater
from nanoclaw_common.messages import (
    AskQuestion,
    Card,
    CardAction,
    ChatContent,
    QuestionOption,
    SendCard,
    decode_inbound_content,
    encode_text,
)
from nanoclaw_common.store import InboundReader
from nanoclaw_common.store.rows import PendingQuestion
from nanoclaw_router.app import Router
from tests.fakes.slack_api import (
    APP_TOKEN,
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    event_body,
    interaction_body,
    post_event,
    sign,
)
from tests.integration.channels.conftest import Delays, FlakySink, Live
from tests.integration.router.conftest import free_port
from tests.waiting import wait_until_async


def socket_adapter(fake: FakeSlack) -> SlackAdapter:
    return SlackAdapter(BOT_TOKEN, fake.api_url, app_token=APP_TOKEN)


def events_adapter(fake: FakeSlack) -> SlackAdapter:
    return SlackAdapter(
        BOT_TOKEN, fake.api_url, signing_secret=SIGNING_SECRET, events_port=free_port()
    )


def texts(live: Live) -> list[str]:
    found = []
    for row in live.rows():
        content = decode_inbound_content(row.content)
        if isinstance(content, ChatContent):
            found.append(content.text)
    return found


# -- Socket Mode ----------------------------------------------------------------------------


def test_socket_mode_messages_threads_dms_and_files(live: Live, slack: FakeSlack) -> None:
    group = live.group()
    live.wire("slack", "C1", group, engage_mode="mention", session_mode="per-thread")
    live.wire("slack", "DU7", group, is_group=False)
    url = slack.add_file("F1", b"csv,data")
    slack.add_user("U7", "Grace")

    async def scenario(router: Router) -> None:
        await wait_until_async(lambda: slack.connections() == 1, timeout_s=10.0, what="socket mode")
        mention = slack.message_event("C1", "<@UBOT> summarize", user="U7")
        slack.push_socket_event(mention)
        # Slack also sends app_mention for the same message: one row, not two.
        slack.push_socket_event({**mention, "type": "app_mention"})
        slack.push_socket_event(
            slack.message_event("C1", "in the thread <@UBOT>", user="U7", thread_ts=mention["ts"])
        )
        slack.push_socket_event(slack.message_event("C1", "no mention here", user="U7"))
        slack.push_socket_event(
            slack.message_event(
                "DU7",
                "here is a file",
                user="U7",
                channel_type="im",
                subtype="file_share",
                files=[
                    {
                        "id": "F1",
                        "name": "data.csv",
                        "mimetype": "text/csv",
                        "size": 8,
                        "url_private_download": url,
                    }
                ],
            )
        )
        slack.push_socket_event(slack.message_event("C1", "from myself", user="UBOT"))
        slack.push_socket_event(slack.message_event("C1", "edited", subtype="message_changed"))
        await wait_until_async(lambda: len(live.rows()) == 3, timeout_s=10.0, what="three rows")
        await wait_until_async(
            lambda: slack.unacked() == [], timeout_s=10.0, what="every envelope acked"
        )

    live.run({"slack": socket_adapter(slack)}, scenario)
    assert sorted(texts(live)) == ["<@UBOT> summarize", "here is a file", "in the thread <@UBOT>"]
    # The top-level mention opened its own thread; the reply in it joined the same session.
    channel = next(s for s in live.sessions() if s.thread_id is not None)
    rows = live.rows(channel)
    assert [r.thread_id for r in rows] == [channel.thread_id] * 2
    assert rows[0].id.startswith(f"C1_{channel.thread_id}:")
    dm = next(s for s in live.sessions() if s.thread_id is None)
    assert [r.thread_id for r in live.rows(dm)] == [None]
    assert len(live.sessions()) == 2
    # The app_mention copy of the mention was not routed a second time, and the channel
    # message without a mention was counted once.
    assert {d.reason: d.message_count for d in live.central.list_drops()} == {"no_agent_engaged": 1}
    dm_row = next(r for r in live.rows() if r.platform_id == "DU7")
    content = decode_inbound_content(dm_row.content)
    assert isinstance(content, ChatContent) and content.sender_name == "Grace"
    [attachment] = content.attachments
    session = next(
        s
        for s in live.sessions()
        if s.messaging_group_id
        and s.thread_id is None
        and any(r.platform_id == "DU7" for r in live.rows(s))
    )
    root = live.layout.session(session.agent_group_id, session.id).root
    assert (root / (attachment.local_path or "")).read_bytes() == b"csv,data"


def test_socket_mode_bad_frames_are_recorded_and_acked(live: Live, slack: FakeSlack) -> None:
    group = live.group()
    live.wire("slack", "C1", group)

    async def scenario(router: Router) -> None:
        await wait_until_async(
            lambda: slack.connections() == 1, timeout_s=10.0, what="one Socket Mode connection"
        )
        slack.push_envelope("events_api", {"type": "event_callback", "event": "not an object"})
        slack.push_envelope(
            "events_api", {"type": "event_callback", "event": {"type": "reaction_added"}}
        )
        slack.push_envelope("slash_commands", {"command": "/x"})
        slack.push_envelope(
            "interactive",
            {"type": "block_actions", "user": {"id": "U1"}, "actions": [{"value": "no-bar"}]},
        )
        slack.push_raw_frame("{not json")
        slack.push_socket_event(slack.message_event("C1", "still here"))
        await wait_until_async(
            lambda: texts(live) == ["still here"], timeout_s=10.0, what="the row 'still here'"
        )
        await wait_until_async(
            lambda: slack.unacked() == [], timeout_s=10.0, what="every envelope acked"
        )

    live.run({"slack": socket_adapter(slack)}, scenario)
    invalid = sum(d.message_count for d in live.central.list_drops() if d.reason == "invalid_input")
    # One per bad envelope. The frame that is not JSON never reaches us: slack-sdk parses
    # every frame before calling listeners, and logs and skips what it cannot parse.
    assert invalid == 4


def test_block_actions_answer_questions(live: Live, slack: FakeSlack) -> None:
    group = live.group()
    live.wire("slack", "C1", group)

    async def scenario(router: Router) -> None:
        await wait_until_async(
            lambda: slack.connections() == 1, timeout_s=10.0, what="one Socket Mode connection"
        )
        slack.push_socket_event(slack.message_event("C1", "question please", user="U5"))
        await wait_until_async(lambda: len(live.rows()) == 1, timeout_s=10.0, what="1 inbound row")
        [session] = live.sessions()
        live.central.create_pending_question(
            PendingQuestion(
                question_id="q-sl",
                session_id=session.id,
                message_out_id="out-1",
                channel_type="slack",
                platform_id="C1",
                thread_id=None,
                platform_message_id=None,
                target_user_id="slack:U5",
                title="Pick one",
                options_json=encode_text(
                    [QuestionOption(label="A", value="a"), QuestionOption(label="B", value="b")]
                ),
                created_at_ms=1,
                expires_at_ms=None,
            )
        )
        payload = {
            "type": "block_actions",
            "user": {"id": "U5"},
            "channel": {"id": "C1"},
            "message": {"ts": "1700000000.000900"},
            "actions": [{"action_id": "option_1", "value": button_data("q-sl", 1)}],
        }
        slack.push_envelope("interactive", payload)
        await wait_until_async(lambda: len(live.rows()) == 2, timeout_s=10.0, what="2 inbound rows")
        await wait_until_async(
            lambda: slack.calls("chat.update"), timeout_s=10.0, what="a chat.update call"
        )

    live.run({"slack": socket_adapter(slack)}, scenario)
    answer = live.rows()[-1]
    assert json.loads(answer.content)["selected_option"] == "b"
    [update] = slack.calls("chat.update")
    assert update.params["ts"] == "1700000000.000900"


# -- Events API -----------------------------------------------------------------------------


def test_events_api_checks_signatures_and_timestamps(live: Live, slack: FakeSlack) -> None:
    group = live.group()
    live.wire("slack", "C2", group)
    adapter = events_adapter(slack)

    async def scenario(router: Router) -> None:
        await wait_until_async(lambda: adapter.bound_port, timeout_s=10.0, what="the events server")
        url = f"http://127.0.0.1:{adapter.bound_port}/slack/events"

        def post(body: bytes, **kwargs: str) -> tuple[int, bytes]:
            return post_event(url, body, **kwargs)

        good = event_body(slack.message_event("C2", "signed and fresh"))
        forged = event_body(slack.message_event("C2", "forged"))
        stale = event_body(slack.message_event("C2", "replayed"))
        results = await asyncio.to_thread(
            lambda: [
                post(good),
                post(forged, signature="v0=" + "0" * 64),
                post(stale, timestamp=str(int(time.time()) - 600)),
                post(good, timestamp="not-a-number"),
                post(json.dumps({"type": "url_verification", "challenge": "abc"}).encode()),
                post(b"{not json"),
                post(good),  # Slack's retry of the first one: acknowledged, deduplicated
            ]
        )
        statuses = [status for status, _ in results]
        assert statuses == [200, 401, 401, 401, 200, 400, 200]
        assert json.loads(results[4][1]) == {"challenge": "abc"}
        await wait_until_async(lambda: len(live.rows()) == 1, timeout_s=10.0, what="1 inbound row")

    live.run({"slack": adapter}, scenario)
    assert texts(live) == ["signed and fresh"]
    # The three refused requests are counted on one row; the signed-but-malformed body on
    # its own.
    drops = {(d.platform_id, d.reason): d.message_count for d in live.central.list_drops()}
    assert drops == {("events-api", "invalid_input"): 3, ("unknown", "invalid_input"): 1}


def test_events_api_interactivity(live: Live, slack: FakeSlack) -> None:
    group = live.group()
    live.wire("slack", "C2", group)
    adapter = events_adapter(slack)

    async def scenario(router: Router) -> None:
        await wait_until_async(
            lambda: adapter.bound_port, timeout_s=10.0, what="the webhook server to listen"
        )
        url = f"http://127.0.0.1:{adapter.bound_port}/slack/events"
        status, _ = await asyncio.to_thread(
            post_event, url, event_body(slack.message_event("C2", "hi", user="U3"))
        )
        assert status == 200
        [session] = live.sessions()
        live.central.create_pending_question(
            PendingQuestion(
                question_id="q-ev",
                session_id=session.id,
                message_out_id="o",
                channel_type="slack",
                platform_id="C2",
                thread_id=None,
                platform_message_id=None,
                target_user_id=None,
                title="",
                options_json=encode_text([QuestionOption(label="Go", value="go")]),
                created_at_ms=1,
                expires_at_ms=None,
            )
        )
        body = interaction_body(
            {
                "type": "block_actions",
                "user": {"id": "U3"},
                "channel": {"id": "C2"},
                "actions": [{"value": button_data("q-ev", 0)}],
            }
        )
        status, _ = await asyncio.to_thread(
            post_event, url, body, content_type="application/x-www-form-urlencoded"
        )
        assert status == 200
        await wait_until_async(lambda: len(live.rows()) == 2, timeout_s=10.0, what="2 inbound rows")

    live.run({"slack": adapter}, scenario)
    assert json.loads(live.rows()[-1].content)["question_id"] == "q-ev"


def test_events_api_failure_to_commit_is_a_500(slack: FakeSlack) -> None:
    """The 200 is the acknowledgement: it must not go out before the commit."""

    class BrokenSink:
        async def on_event(self, event: object) -> None:
            raise OSError("database is locked")

        async def on_action(self, action: object) -> None:
            raise OSError("database is locked")

        async def on_invalid(
            self, channel_type: str, platform_id: str, reason: str, *, code: str = INVALID_INPUT
        ) -> None:
            return None

    async def main() -> None:
        adapter = events_adapter(slack)
        await adapter.start()
        adapter._bot_user_id = "UBOT"
        await adapter._serve_events(BrokenSink())
        url = f"http://127.0.0.1:{adapter.bound_port}/slack/events"
        status, _ = await asyncio.to_thread(
            post_event, url, event_body(slack.message_event("C2", "x"))
        )
        assert status == 500
        await adapter.close()

    asyncio.run(main())


# -- outbound -------------------------------------------------------------------------------


def test_outbound_operations(slack: FakeSlack, tmp_path: Path) -> None:
    chart = tmp_path / "chart.png"
    chart.write_bytes(b"\x89PNG chart")

    async def main() -> None:
        adapter = socket_adapter(slack)
        await adapter.start()
        try:
            first = await adapter.send_text("C1", "1700.1", "hi", [OutgoingFile("c.png", chart)])
            assert first is not None and first.startswith("C1_")
            await adapter.edit_text("C1", None, first, "hi (edited)")
            await adapter.add_reaction("C1", None, first, "👍")
            await adapter.add_reaction("C1", None, "1700.5", ":rocket:")
            question = await adapter.send_question(
                "C1",
                None,
                AskQuestion(
                    question_id="q1",
                    title="Pick",
                    question="Which?",
                    options=[
                        QuestionOption(label="One", value="1"),
                        QuestionOption(label="Two", value="2"),
                    ],
                ),
            )
            assert question is not None
            await adapter.send_card(
                "C1",
                None,
                SendCard(
                    card=Card(
                        title="Report",
                        description="All green",
                        actions=[
                            CardAction(label="Open", url="https://x.example", style="primary")
                        ],
                    )
                ),
            )
            assert await adapter.open_dm("U9") == "DU9"
            await adapter.set_typing("C1", None)  # no API for it: does nothing, raises nothing
        finally:
            await adapter.close()

    asyncio.run(main())
    posts = slack.calls("chat.postMessage")
    assert posts[0].params["thread_ts"] == "1700.1"
    [update] = slack.calls("chat.update")
    assert update.params["text"] == "hi (edited)"
    names = [c.params["name"] for c in slack.calls("reactions.add")]
    assert names == ["thumbsup", "rocket"]
    buttons = posts[1].params["blocks"][1]["elements"]
    assert [b["value"] for b in buttons] == ["q1|0", "q1|1"]
    card_blocks = posts[2].params["blocks"]
    assert (
        card_blocks[0]["type"] == "header" and card_blocks[-1]["elements"][0]["style"] == "primary"
    )
    assert list(slack.uploads().values()) == [b"\x89PNG chart"]
    [complete] = slack.calls("files.completeUploadExternal")
    assert complete.params["channel_id"] == "C1"


@pytest.mark.parametrize(
    ("status", "error", "expected", "delay"),
    [
        (200, "channel_not_found", PermanentFailure, None),
        (429, "ratelimited", RetryLater, 12.0),
        (500, "internal_error", RetryLater, None),
    ],
)
def test_outbound_errors_are_classified(
    slack: FakeSlack, status: int, error: str, expected: type[Exception], delay: float | None
) -> None:
    slack.fail("chat.postMessage", status, error, retry_after=12 if status == 429 else None)

    async def main() -> None:
        adapter = socket_adapter(slack)
        await adapter.start()
        try:
            with pytest.raises(expected) as caught:
                await adapter.send_text("C1", None, "hi")
            if delay is not None:
                assert isinstance(caught.value, RetryLater) and caught.value.delay_s == delay
        finally:
            await adapter.close()

    asyncio.run(main())


def test_sign_helper_matches_the_sdk() -> None:
    from slack_sdk.signature import SignatureVerifier

    body, stamp = b"{}", str(int(time.time()))
    assert SignatureVerifier(SIGNING_SECRET).is_valid(body, stamp, sign(body, stamp))
    assert urllib.request  # the Events API sender in the fake uses the stdlib client


def test_files_are_fetched_only_from_slack_hosts(slack: FakeSlack) -> None:
    from nanoclaw_common.channels import slack_payloads as sp

    async def main() -> None:
        adapter = socket_adapter(slack)
        await adapter.start()
        try:
            files = [
                sp.SlackFile(id="F9", name="x.txt", url_private_download="http://evil.example/x"),
                sp.SlackFile(
                    id="F1", name="ok.txt", url_private_download=slack.add_file("F1", b"ok")
                ),
            ]
            found, notes = await adapter._download(files)
        finally:
            await adapter.close()
        assert [f["name"] for f in found] == ["ok.txt"]
        assert notes == ["[attachment x.txt not downloaded: unexpected file host]"]

    asyncio.run(main())


# -- threads --------------------------------------------------------------------------------


def test_each_top_level_message_is_its_own_thread(live: Live, slack: FakeSlack) -> None:
    """In a channel a top-level message starts a thread: the agent's session is that
    thread's, its replies go into the thread, and the thread's follow-ups reach the same
    session (mention-sticky: no mention needed once the agent is in the thread). Another
    top-level message is another thread, so a mention never sticks to the whole channel.
    A DM is one conversation without threads."""
    group = live.group()
    live.wire("slack", "C1", group, engage_mode="mention-sticky")
    live.wire("slack", "DU7", group, is_group=False)

    async def scenario(router: Router) -> None:
        await wait_until_async(
            lambda: slack.connections() == 1, timeout_s=10.0, what="one Socket Mode connection"
        )
        root = slack.message_event("C1", "<@UBOT> plan the launch", user="U7")
        slack.push_socket_event(root)
        slack.push_socket_event(
            slack.message_event("C1", "and the budget", user="U8", thread_ts=root["ts"])
        )
        slack.push_socket_event(slack.message_event("C1", "lunch anyone?", user="U7"))
        slack.push_socket_event(
            slack.message_event("C1", "/clear", user="U9", thread_ts=root["ts"])
        )
        slack.push_socket_event(slack.message_event("DU7", "hi", user="U7", channel_type="im"))
        slack.push_socket_event(slack.message_event("DU7", "again", user="U7", channel_type="im"))
        await wait_until_async(lambda: len(live.rows()) == 4, timeout_s=10.0, what="four rows")
        await wait_until_async(
            lambda: slack.unacked() == [], timeout_s=10.0, what="every envelope acked"
        )
        await wait_until_async(
            lambda: slack.calls("chat.postMessage"), timeout_s=10.0, what="the denial"
        )
        live.root_ts = root["ts"]  # type: ignore[attr-defined]

    live.run({"slack": socket_adapter(slack)}, scenario)
    root_ts = live.root_ts  # type: ignore[attr-defined]
    [thread] = [s for s in live.sessions() if s.thread_id is not None]
    assert thread.thread_id == root_ts
    assert [(r.thread_id, r.trigger) for r in live.rows(thread)] == [(root_ts, 1), (root_ts, 1)]
    # The agent answers where the session routes: the thread.
    paths = live.layout.session(group.id, thread.id)
    reader = InboundReader(paths.inbound_db)
    try:
        assert (reader.routing().platform_id, reader.routing().thread_id) == ("C1", root_ts)
    finally:
        reader.close()
    [dm] = [s for s in live.sessions() if s.thread_id is None]
    assert [r.thread_id for r in live.rows(dm)] == [None, None]
    # "lunch anyone?" is a top-level message, a thread of its own where nobody mentioned
    # the agent: not engaged. The "/clear" in the agent's thread engages (sticky) and is
    # denied to a non-admin; the denial goes into the thread.
    drops = {d.reason: d.message_count for d in live.central.list_drops()}
    assert drops == {"no_agent_engaged": 1, "command_denied": 1}
    [denial] = slack.calls("chat.postMessage")
    assert denial.params["channel"] == "C1" and "Permission denied" in denial.params["text"]
    assert denial.params["thread_ts"] == root_ts


def test_a_command_after_a_mention_is_still_a_command(live: Live, slack: FakeSlack) -> None:
    """In a channel people write ``@bot /clear``: the command gate sees ``/clear`` (and
    denies it to a non-admin); a mention with ordinary text keeps its text whole."""
    group = live.group()
    live.wire("slack", "C1", group, engage_mode="mention")

    async def scenario(router: Router) -> None:
        await wait_until_async(
            lambda: slack.connections() == 1, timeout_s=10.0, what="one Socket Mode connection"
        )
        slack.push_socket_event(slack.message_event("C1", "<@UBOT>  /clear", user="U9"))
        slack.push_socket_event(slack.message_event("C1", "<@UBOT> what is /clear?", user="U9"))
        await wait_until_async(
            lambda: slack.unacked() == [], timeout_s=10.0, what="every envelope acked"
        )
        await wait_until_async(
            lambda: slack.calls("chat.postMessage"), timeout_s=10.0, what="the denial"
        )
        await wait_until_async(
            lambda: len(live.rows()) == 1, timeout_s=10.0, what="the question's row"
        )

    live.run({"slack": socket_adapter(slack)}, scenario)
    drops = {d.reason: d.message_count for d in live.central.list_drops()}
    assert drops == {"command_denied": 1}
    [denial] = slack.calls("chat.postMessage")
    assert "Permission denied: /clear" in denial.params["text"]
    assert texts(live) == ["<@UBOT> what is /clear?"]


def test_context_never_opens_a_thread_session(live: Live, slack: FakeSlack) -> None:
    """``accumulate`` keeps unmentioned messages as context, but only for a thread the
    agent is in: top-level chatter (each message a thread of its own) is not stored."""
    group = live.group()
    live.wire("slack", "C1", group, engage_mode="mention", ignored_message_policy="accumulate")

    async def scenario(router: Router) -> None:
        await wait_until_async(
            lambda: slack.connections() == 1, timeout_s=10.0, what="one Socket Mode connection"
        )
        root = slack.message_event("C1", "<@UBOT> hello", user="U7")
        slack.push_socket_event(root)
        await wait_until_async(lambda: len(live.rows()) == 1, timeout_s=10.0, what="1 inbound row")
        slack.push_socket_event(
            slack.message_event("C1", "side remark", user="U8", thread_ts=root["ts"])
        )
        slack.push_socket_event(slack.message_event("C1", "unrelated chatter", user="U8"))
        await wait_until_async(
            lambda: slack.unacked() == [], timeout_s=10.0, what="every envelope acked"
        )
        await wait_until_async(
            lambda: len(live.rows()) == 2, timeout_s=10.0, what="the context row"
        )

    live.run({"slack": socket_adapter(slack)}, scenario)
    [session] = live.sessions()
    assert [(r.trigger, r.thread_id == session.thread_id) for r in live.rows(session)] == [
        (1, True),
        (0, True),
    ]
    assert {d.reason: d.message_count for d in live.central.list_drops()} == {"no_agent_engaged": 1}


def test_a_mention_delivered_twice_is_routed_once(live: Live, slack: FakeSlack) -> None:
    """Slack sends ``message`` and ``app_mention`` for one mention. A stranger's mention in
    a strict channel is one drop, not two."""
    group = live.group()
    live.wire("slack", "C1", group, engage_mode="mention", policy="strict")

    async def scenario(router: Router) -> None:
        await wait_until_async(
            lambda: slack.connections() == 1, timeout_s=10.0, what="one Socket Mode connection"
        )
        mention = slack.message_event("C1", "<@UBOT> let me in", user="UX")
        slack.push_socket_event(mention)
        slack.push_socket_event({**mention, "type": "app_mention"})
        await wait_until_async(
            lambda: len(slack.acked()) == 2, timeout_s=10.0, what="both copies acked"
        )

    live.run({"slack": socket_adapter(slack)}, scenario)
    drops = {d.reason: d.message_count for d in live.central.list_drops()}
    assert drops == {"unknown_sender_strict": 1}
    assert live.rows() == []


# -- commit failures ------------------------------------------------------------------------


def test_socket_mode_retries_a_failed_commit_and_acks_only_after_it(
    live: Live, slack: FakeSlack
) -> None:
    group = live.group()
    live.wire("slack", "C1", group)
    delays = Delays()
    adapter = SlackAdapter(BOT_TOKEN, slack.api_url, app_token=APP_TOKEN, sleep=delays)
    acked_while_failing: list[list[str]] = []

    async def scenario(router: Router) -> None:
        await adapter.start()
        sink = FlakySink(router, 7, on_refuse=lambda: acked_while_failing.append(slack.acked()))
        inbound = asyncio.create_task(adapter.run_inbound(sink))
        try:
            await wait_until_async(
                lambda: slack.connections() == 1, timeout_s=10.0, what="one Socket Mode connection"
            )
            envelope = slack.push_socket_event(slack.message_event("C1", "hold on"))
            await wait_until_async(
                lambda: len(live.rows()) == 1, timeout_s=10.0, what="the retried message"
            )
            await wait_until_async(
                lambda: slack.acked() == [envelope], timeout_s=10.0, what="one ack"
            )
        finally:
            inbound.cancel()
            await asyncio.gather(inbound, return_exceptions=True)
            await adapter.close()

    live.run({}, scenario)
    assert acked_while_failing == [[]] * 7  # never acknowledged before the commit
    assert delays.seen == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert texts(live) == ["hold on"]
    assert live.central.list_drops() == []


# -- files ----------------------------------------------------------------------------------


def test_files_are_capped_per_message_while_downloading(slack: FakeSlack) -> None:
    from nanoclaw_common.channels import slack_payloads as sp

    big = bytes(range(256)) * 2_000  # 512,000 bytes: many chunks on the wire

    async def main() -> None:
        adapter = SlackAdapter(BOT_TOKEN, slack.api_url, max_message_bytes=big_budget)
        await adapter.start()
        try:
            files = [
                sp.SlackFile(id="F1", name="a.txt", url_private=slack.add_file("F1", b"a" * 600)),
                # Declares a size over what is left: not downloaded at all.
                sp.SlackFile(
                    id="F2", name="b.txt", size=600, url_private=slack.add_file("F2", b"b" * 600)
                ),
                # Declares nothing and is too big for what is left: reading stops there.
                sp.SlackFile(id="F3", name="c.txt", url_private=slack.add_file("F3", b"c" * 600)),
                sp.SlackFile(id="F4", name="d.txt", url_private=slack.add_file("F4", b"d" * 300)),
            ]
            found, notes = await adapter._download(files)
            assert [f["name"] for f in found] == ["a.txt", "d.txt"]
            assert notes == [
                "[attachment b.txt not downloaded: the message is too large]",
                "[attachment c.txt not downloaded: over the size limit]",
            ]
            adapter.max_message_bytes = len(big)
            [whole], _ = await adapter._download(
                [sp.SlackFile(id="F5", name="big.bin", url_private=slack.add_file("F5", big))]
            )
            assert whole["data"] == big  # read to the end, not whatever was buffered
        finally:
            await adapter.close()

    big_budget = 1000
    asyncio.run(main())


def test_a_file_host_error_is_retryable_a_refusal_is_a_note(slack: FakeSlack) -> None:
    from nanoclaw_common.channels import slack_payloads as sp

    async def main() -> None:
        adapter = socket_adapter(slack)
        await adapter.start()
        try:
            url = slack.add_file("F1", b"ok")
            for status in (503, 429):
                slack.fail_file("F1", status)
                with pytest.raises(RetryLater):
                    await adapter._download([sp.SlackFile(id="F1", name="x.txt", url_private=url)])
            slack.fail_file("F1", 403)
            found, notes = await adapter._download(
                [sp.SlackFile(id="F1", name="x.txt", url_private=url)]
            )
            assert found == [] and notes == ["[attachment x.txt not downloaded: HTTP 403]"]
        finally:
            await adapter.close()

    asyncio.run(main())


def test_events_api_non_ascii_signature_is_a_clean_401(live: Live, slack: FakeSlack) -> None:
    group = live.group()
    live.wire("slack", "C2", group)
    adapter = events_adapter(slack)

    async def scenario(router: Router) -> None:
        await wait_until_async(lambda: adapter.bound_port, timeout_s=10.0, what="the events server")
        url = f"http://127.0.0.1:{adapter.bound_port}/slack/events"
        body = event_body(slack.message_event("C2", "x"))
        status, _ = await asyncio.to_thread(post_event, url, body, signature="v0=" + "é" * 64)
        assert status == 401

    live.run({"slack": adapter}, scenario)
    [drop] = live.central.list_drops()
    assert (drop.platform_id, drop.reason) == ("events-api", "invalid_input")
    assert live.rows() == []
