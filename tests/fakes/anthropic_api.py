"""A local fake of the Anthropic Messages API (aiohttp), scriptable per test.

It speaks the real wire format, so the real ``anthropic`` SDK (in the agent runner, through
the credential proxy) runs against it unchanged: ``POST /v1/messages`` with tool_use /
tool_result content, non-streaming JSON or SSE streaming (``message_start``,
``content_block_*`` with ``text_delta`` / ``input_json_delta``, ``message_delta``,
``message_stop``), ``POST /v1/messages/count_tokens``, and Anthropic-shaped errors.

It also checks requests the way the real API does, so a runner that builds a broken history
fails here as it would in production: the ``x-api-key`` must be the real key, every
``tool_use`` must be answered by a ``tool_result`` in the next user message (results first),
every ``tool_result`` must answer a ``tool_use`` of the message before, tool blocks need a
``tools`` list, and at most four ``cache_control`` breakpoints. Like the real API, every
response names the account (``anthropic-organization-id``) and the request (``request-id``).

Replies are queued with ``reply(...)``: a response dict (``content``, optional
``stop_reason``, ``usage`` and ``delay_s``, how long the model takes), a function of the
request body returning one, or an ``ApiError`` (with optional headers, e.g.
``retry-after``). With the queue empty, ``responder`` (a function of the body) answers, if
set: a model that answers whatever it is asked. Every request is recorded in ``requests``.
``hold_request(match)`` keeps the next matching request waiting until the test releases it
(the chaos suite kills the proxy or the agent's container meanwhile).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

from aiohttp import web

from tests.fakes.holds import Hold, Holds, Predicate


@dataclass(frozen=True)
class ApiError:
    status: int
    type: str
    message: str
    headers: tuple[tuple[str, str], ...] = ()  # e.g. (("retry-after", "1"),)


ORGANIZATION_ID = "5f0c8e9a-fake-org-0000-account"

Reply = Union[dict[str, Any], Callable[[dict[str, Any]], dict[str, Any]], ApiError]  # noqa: UP007


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: dict[str, Any]
    at: float = 0.0  # time.monotonic() when it arrived


def text(value: str) -> dict[str, Any]:
    """A reply with one text block."""
    return {"content": [{"type": "text", "text": value}]}


def tool_use(name: str, arguments: dict[str, Any], use_id: str | None = None) -> dict[str, Any]:
    """A reply calling one tool."""
    return {
        "content": [
            {"type": "tool_use", "id": use_id or f"toolu_{name}", "name": name, "input": arguments}
        ]
    }


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content) if isinstance(content, list) else []


def validate(body: dict[str, Any]) -> str | None:
    """The real API's checks that a client can get wrong; None when the request is fine."""
    if not isinstance(body.get("model"), str) or not isinstance(body.get("max_tokens"), int):
        return "model and max_tokens are required"
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "messages: at least one message is required"
    if msgs[0].get("role") != "user":
        return "messages: first message must use the user role"
    uses_tools = False
    for index, message in enumerate(msgs):
        if message.get("role") not in ("user", "assistant"):
            return f"messages.{index}.role: unexpected value"
        blocks = _blocks(message.get("content"))
        kinds = [b.get("type") for b in blocks]
        uses_tools |= "tool_use" in kinds or "tool_result" in kinds
        if message["role"] == "assistant":
            ids = [str(b.get("id")) for b in blocks if b.get("type") == "tool_use"]
            if ids:
                following = msgs[index + 1] if index + 1 < len(msgs) else None
                if following is None or following.get("role") != "user":
                    return (
                        f"messages.{index}: tool_use ids were found without tool_result blocks "
                        f"immediately after: {', '.join(ids)}"
                    )
                answered = {
                    str(b.get("tool_use_id"))
                    for b in _blocks(following.get("content"))
                    if b.get("type") == "tool_result"
                }
                missing = [i for i in ids if i not in answered]
                if missing:
                    return (
                        f"messages.{index + 1}: tool_use ids were found without tool_result "
                        f"blocks immediately after: {', '.join(missing)}"
                    )
        else:
            results = [b for b in blocks if b.get("type") == "tool_result"]
            if results:
                if kinds[: len(results)] != ["tool_result"] * len(results):
                    return f"messages.{index}: tool_result blocks must come first"
                previous = msgs[index - 1] if index else {}
                offered = {
                    str(b.get("id"))
                    for b in _blocks(previous.get("content"))
                    if b.get("type") == "tool_use"
                }
                for result in results:
                    if str(result.get("tool_use_id")) not in offered:
                        return (
                            f"messages.{index}: unexpected tool_use_id found in tool_result "
                            f"blocks: {result.get('tool_use_id')}. Each tool_result block must "
                            "have a corresponding tool_use block in the previous message."
                        )
    if uses_tools and not body.get("tools"):
        return "Requests which include tool_use or tool_result blocks must define tools."
    breakpoints = json.dumps(body).count('"cache_control"')
    if breakpoints > 4:
        return f"A maximum of 4 blocks with cache_control may be provided. Found {breakpoints}."
    return None


@dataclass
class FakeAnthropic:
    api_key: str = "sk-ant-test-real-key-0123456789"
    requests: list[Recorded] = field(default_factory=list)
    replies: deque[Reply] = field(default_factory=deque)
    # When set, a streamed reply pauses after message_start until the event is set: a test
    # can prove the proxy passes chunks on as they come.
    stream_gate: threading.Event | None = None
    responder: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    holds: Holds = field(default_factory=Holds)

    def __post_init__(self) -> None:
        self._lock = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- scripting and inspection (any thread) --------------------------------------------

    def reply(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)

    def hold_request(self, match: Predicate) -> Hold:
        """Hold the next Messages request whose body ``match``es until ``release()``; its
        ``outcome`` is "answered" or "client gone" (the caller hung up meanwhile)."""
        return self.holds.arm(match)

    def clear_replies(self) -> None:
        """Drop the scripted replies nobody asked for (a test's leftovers)."""
        with self._lock:
            self.replies.clear()

    def message_requests(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path == "/v1/messages"]

    def wait_for_requests(self, count: int, timeout_s: float = 20.0) -> list[Recorded]:
        """Block until ``count`` Messages requests arrived (an event, not a sleep)."""
        with self._lock:
            self._lock.wait_for(
                lambda: len([r for r in self.requests if r.path == "/v1/messages"]) >= count,
                timeout_s,
            )
        found = self.message_requests()
        if len(found) < count:
            raise AssertionError(f"expected {count} model requests, got {len(found)}")
        return found

    # -- the HTTP side --------------------------------------------------------------------

    def _error(self, status: int, kind: str, message: str) -> web.Response:
        return web.json_response(
            {"type": "error", "error": {"type": kind, "message": message}}, status=status
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json() if request.can_read_body else {}
        except json.JSONDecodeError:
            return self._error(400, "invalid_request_error", "body is not JSON")
        with self._lock:
            self.requests.append(
                Recorded(
                    request.method,
                    request.path,
                    {k.lower(): v for k, v in request.headers.items()},
                    body,
                    time.monotonic(),
                )
            )
            self._lock.notify_all()
        if request.headers.get("x-api-key") != self.api_key:
            return self._error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return self._error(400, "invalid_request_error", "anthropic-version header required")
        if request.path == "/v1/messages/count_tokens":
            return web.json_response({"input_tokens": len(json.dumps(body)) // 4})
        if request.path != "/v1/messages" or request.method != "POST":
            return self._error(404, "not_found_error", f"{request.method} {request.path}")
        problem = validate(body)
        if problem is not None:
            return self._error(400, "invalid_request_error", problem)
        hold = self.holds.take("", body)
        if hold is not None:
            await hold.hold({"path": request.path})
            if request.transport is None or request.transport.is_closing():
                hold.finish("client gone")
                return self._error(500, "api_error", "fake: the client hung up")
            hold.finish("answered")
        with self._lock:
            reply = self.replies.popleft() if self.replies else self.responder
        if reply is None:
            return self._error(500, "api_error", "fake: no scripted reply left")
        if isinstance(reply, ApiError):
            error = self._error(reply.status, reply.type, reply.message)
            error.headers.update(dict(reply.headers))
            return error
        answer = dict(reply(body) if callable(reply) else reply)
        # "delay_s": the model takes this long to answer (other requests go on meanwhile).
        delay_s = float(answer.pop("delay_s", 0))
        if delay_s:
            await asyncio.sleep(delay_s)
        shaped = self._message(answer, body)
        if body.get("stream"):
            return await self._stream(request, shaped)
        return web.json_response(shaped)

    def _message(self, reply: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        content = reply.get("content", [])
        calls_tool = any(b.get("type") == "tool_use" for b in content)
        usage = {
            "input_tokens": len(json.dumps(body.get("messages", []))) // 4,
            "output_tokens": max(1, len(json.dumps(content)) // 4),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        usage.update(reply.get("usage", {}))
        with self._lock:
            number = len(self.requests)
        return {
            "id": f"msg_fake_{number}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": content,
            "stop_reason": reply.get("stop_reason") or ("tool_use" if calls_tool else "end_turn"),
            "stop_sequence": None,
            "usage": usage,
        }

    async def _stream(self, request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)

        async def send(event: str, data: dict[str, Any]) -> None:
            await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())

        usage = message["usage"]
        start = {**message, "content": [], "stop_reason": None}
        start["usage"] = {**usage, "output_tokens": 1}
        await send("message_start", {"type": "message_start", "message": start})
        if self.stream_gate is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.stream_gate.wait, 20)
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                await send(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
                await send(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": block["text"]},
                    },
                )
            else:
                await send(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {**block, "input": {}},
                    },
                )
                await send(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {
                            "type": "input_json_delta",
                            "partial_json": json.dumps(block.get("input", {})),
                        },
                    },
                )
            await send("content_block_stop", {"type": "content_block_stop", "index": index})
        await send(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
        await send("message_stop", {"type": "message_stop"})
        await response.write_eof()
        return response

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeAnthropic:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, daemon=True)
        self._thread.start()

        async def identify(_request: web.Request, response: web.StreamResponse) -> None:
            # As the real API does: whose account this is, and which request.
            response.headers["anthropic-organization-id"] = ORGANIZATION_ID
            response.headers.setdefault("request-id", f"req_fake_{len(self.requests)}")

        async def boot() -> None:
            app = web.Application()
            app.on_response_prepare.append(identify)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = int(self._runner.addresses[0][1])

        asyncio.run_coroutine_threadsafe(boot(), loop).result(10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop.close()
        self._loop = None
