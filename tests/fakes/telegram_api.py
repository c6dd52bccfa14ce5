"""A fake Telegram Bot API server: the HTTP protocol python-telegram-bot speaks.

``POST /bot<token>/<method>`` with form-encoded or multipart parameters (JSON-encoded values
for non-strings, as PTB sends them) and ``{"ok": …, "result": …}`` answers; long-polling
``getUpdates`` with Telegram's confirmation rule (an offset deletes every update below it);
``GET /file/bot<token>/<path>`` for downloads. Failures are injected per method.

Every message the bot sends is recorded per chat with its text and the time it was accepted
(``sent()``). A test can hold one ``sendMessage``/``sendDocument`` (``hold_send``) before the
fake accepts it (released after its client died: never received, as a request that did not
arrive) or after (accepted, the answer held back: the client may die before it learns so).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.holds import Hold, Holds, Predicate
from tests.fakes.server_thread import ServerThread

BOT_ID = 777000
BOT_USERNAME = "nano_bot"
HOLDABLE = frozenset({"sendMessage", "sendDocument"})
BEFORE_ACCEPT = "before_accept"
AFTER_ACCEPT = "after_accept"


@dataclass
class Sent:
    method: str
    chat_id: str
    params: dict[str, Any]
    message_id: int | None = None
    document: bytes | None = None
    filename: str | None = None
    at: float = field(default_factory=time.time)  # when the fake accepted it
    held_s: float = 0.0  # how long its answer was held back (``hold_send`` after accepting)

    @property
    def text(self) -> str:
        return str(self.params.get("text", ""))


@dataclass
class Failure:
    status: int
    description: str
    retry_after: int | None = None
    count: int = 1


@dataclass
class State:
    token: str
    updates: list[dict[str, Any]] = field(default_factory=list)
    next_update_id: int = 1000
    confirmed_offset: int = 0
    offsets_seen: list[int | None] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # file_id -> (path, data)
    chat_types: dict[str, str] = field(default_factory=dict)
    message_ids: dict[str, itertools.count[int]] = field(default_factory=dict)
    failures: dict[str, list[Failure]] = field(default_factory=dict)
    answered_callbacks: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    polls_in_flight: int = 0
    closing: bool = False
    webhook: str | None = None
    webhook_deletions: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Condition | None = None


def _value(raw: Any) -> Any:
    """PTB sends non-string parameters JSON-encoded in form fields."""
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


class FakeTelegram:
    """Thread-hosted fake. Test-facing methods are synchronous and thread-safe."""

    def __init__(self, token: str = "123456:TEST-token") -> None:
        self.state = State(token=token)
        self.server = ServerThread(self._app)
        self.holds = Holds()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeTelegram:
        self.server.start()
        self.server.run(self._init())
        return self

    async def _init(self) -> None:
        self.state.changed = asyncio.Condition()

    def stop(self) -> None:
        self.server.run(self._release_polls())
        self.server.stop()

    async def _release_polls(self) -> None:
        """End every long poll now, so shutting down does not wait out their timeouts."""
        self.state.closing = True
        assert self.state.changed is not None
        async with self.state.changed:
            self.state.changed.notify_all()

    @property
    def base_url(self) -> str:
        return self.server.url

    @property
    def token(self) -> str:
        return self.state.token

    # -- test API ----------------------------------------------------------------------------

    def push_update(self, body: dict[str, Any]) -> int:
        """Queue an update; ``body`` is everything but ``update_id``. Returns the id."""
        return self.server.run(self._push(body))

    def push_raw(self, raw: Any) -> None:
        """Queue anything, even a malformed update (its id is taken from it if present)."""
        self.server.run(self._push_raw(raw))

    def push_message(
        self,
        chat_id: int,
        text: str | None = None,
        *,
        user_id: int = 42,
        first_name: str = "Ada",
        chat_type: str | None = None,
        title: str = "",
        entities: list[dict[str, Any]] | None = None,
        thread_id: int | None = None,
        reply_to: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> tuple[int, int]:
        """A user message. Returns (update id, message id)."""
        kind = chat_type or ("private" if chat_id > 0 else "supergroup")
        message_id = self.server.call(self._next_message_id, str(chat_id))
        chat: dict[str, Any] = {"id": chat_id, "type": kind}
        if kind == "private":
            chat["first_name"] = first_name
        else:
            chat["title"] = title or f"group {chat_id}"
            if thread_id is not None:
                chat["is_forum"] = True
        message: dict[str, Any] = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": chat,
            "from": {"id": user_id, "is_bot": False, "first_name": first_name},
        }
        if text is not None:
            message["text"] = text
        if entities:
            message["entities"] = entities
        if thread_id is not None:
            message["message_thread_id"] = thread_id
            message["is_topic_message"] = True
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        message.update(extra or {})
        self.server.call(self.state.chat_types.__setitem__, str(chat_id), kind)
        return self.push_update({"message": message}), message_id

    def push_callback(self, chat_id: int, message_id: int, data: str, *, user_id: int = 42) -> int:
        kind = self.state.chat_types.get(str(chat_id), "private" if chat_id > 0 else "supergroup")
        return self.push_update(
            {
                "callback_query": {
                    "id": f"cb{time.monotonic_ns()}",
                    "from": {"id": user_id, "is_bot": False, "first_name": "Ada"},
                    "chat_instance": "ci",
                    "data": data,
                    "message": {
                        "message_id": message_id,
                        "date": int(time.time()),
                        "chat": {"id": chat_id, "type": kind},
                    },
                }
            }
        )

    def add_file(self, file_id: str, data: bytes, path: str = "") -> None:
        self.server.call(self.state.files.__setitem__, file_id, (path or f"files/{file_id}", data))

    def fail(
        self,
        method: str,
        status: int,
        description: str,
        *,
        retry_after: int | None = None,
        count: int = 1,
    ) -> None:
        failure = Failure(status, description, retry_after, count)
        self.server.call(lambda: self.state.failures.setdefault(method, []).append(failure))

    def hold_send(self, match: Predicate, stage: str = AFTER_ACCEPT) -> Hold:
        """Hold the next ``sendMessage``/``sendDocument`` whose parameters (plus
        ``method``) ``match``: ``before_accept`` (released: recorded only if its client is
        still connected) or ``after_accept`` (recorded at once, its answer held). The
        hold's ``outcome`` is "accepted" or "dropped"; ``detail`` has chat and text."""
        return self.holds.arm(match, stage)

    def set_webhook(self, url: str) -> None:
        self.server.call(setattr, self.state, "webhook", url)

    def webhook_deletions(self) -> list[dict[str, Any]]:
        return self.server.call(lambda: list(self.state.webhook_deletions))

    def sent(self, method: str | None = None) -> list[Sent]:
        return self.server.call(
            lambda: [s for s in self.state.sent if method is None or s.method == method]
        )

    def pending_updates(self) -> int:
        return self.server.call(lambda: len(self.state.updates))

    def offsets_seen(self) -> list[int | None]:
        return self.server.call(lambda: list(self.state.offsets_seen))

    def answered_callbacks(self) -> list[str]:
        return self.server.call(lambda: list(self.state.answered_callbacks))

    # -- server internals --------------------------------------------------------------------

    def _next_message_id(self, chat_id: str) -> int:
        counter = self.state.message_ids.setdefault(chat_id, itertools.count(1))
        return next(counter)

    async def _push(self, body: dict[str, Any]) -> int:
        update_id = self.state.next_update_id
        self.state.next_update_id += 1
        await self._push_raw({"update_id": update_id, **body})
        return update_id

    async def _push_raw(self, raw: Any) -> None:
        if isinstance(raw, dict) and isinstance(raw.get("update_id"), int):
            self.state.next_update_id = max(self.state.next_update_id, raw["update_id"] + 1)
        self.state.updates.append(raw)
        assert self.state.changed is not None
        async with self.state.changed:
            self.state.changed.notify_all()

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=60_000_000)
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.*}", self._file)
        return app

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            params.update(await request.json())
            return params
        form = await request.post()
        for key, value in form.items():
            if isinstance(value, web.FileField):
                params[key] = (value.filename, value.file.read())
            else:
                params[key] = _value(value)
        return params

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.state.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        self.state.requests.append(method)
        params = await self._params(request)
        queued = self.state.failures.get(method)
        if queued:
            failure = queued[0]
            failure.count -= 1
            if failure.count <= 0:
                queued.pop(0)
            return _error(failure.status, failure.description, failure.retry_after)
        handler = getattr(self, "_m_" + _snake(method), None)
        if handler is None:
            return _error(404, f"Not Found: method {method} not found")
        probe = {"method": method, **params}
        detail = {"chat_id": str(params.get("chat_id")), "text": str(params.get("text", ""))}
        before = self.holds.take(BEFORE_ACCEPT, probe) if method in HOLDABLE else None
        if before is not None:
            await before.hold(detail)
            if request.transport is None or request.transport.is_closing():
                before.finish("dropped")  # the client died first: it never got here
                return _error(500, "Internal Server Error: client gone")
            before.finish("accepted")
        result = await handler(params)
        if isinstance(result, web.Response):
            return result
        after = self.holds.take(AFTER_ACCEPT, probe) if method in HOLDABLE else None
        if after is not None:
            await after.hold(detail)
            for record in self.state.sent:
                if record.params is params:
                    record.held_s = after.released_at - after.arrived_at
            after.finish("accepted")
        return web.json_response({"ok": True, "result": result})

    async def _file(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.state.token:
            return web.Response(status=401)
        path = request.match_info["path"]
        for stored_path, data in self.state.files.values():
            if stored_path == path:
                return web.Response(body=data)
        return web.Response(status=404)

    def _bot_user(self) -> dict[str, Any]:
        return {"id": BOT_ID, "is_bot": True, "first_name": "Nano", "username": BOT_USERNAME}

    def _chat(self, chat_id: str) -> dict[str, Any]:
        default = "supergroup" if chat_id.startswith("-") else "private"
        numeric: int | str = int(chat_id) if chat_id.lstrip("-").isdigit() else chat_id
        return {"id": numeric, "type": self.state.chat_types.get(chat_id, default)}

    def _record(self, method: str, params: dict[str, Any], **extra: Any) -> dict[str, Any]:
        chat_id = str(params["chat_id"])
        message_id = self._next_message_id(chat_id)
        self.state.sent.append(Sent(method, chat_id, params, message_id, **extra))
        message: dict[str, Any] = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": self._chat(chat_id),
            "from": self._bot_user(),
        }
        if "text" in params:
            message["text"] = str(params["text"])
        return message

    # -- methods -----------------------------------------------------------------------------

    async def _m_get_me(self, params: dict[str, Any]) -> Any:
        return self._bot_user()

    async def _m_delete_webhook(self, params: dict[str, Any]) -> Any:
        self.state.webhook_deletions.append(params)
        self.state.webhook = None
        if params.get("drop_pending_updates"):
            self.state.updates.clear()  # what we must never ask for
        return True

    async def _m_get_updates(self, params: dict[str, Any]) -> Any:
        if self.state.webhook is not None:
            return _error(409, "Conflict: can't use getUpdates method while webhook is active")
        offset = params.get("offset")
        self.state.offsets_seen.append(offset)
        if isinstance(offset, int):
            # Telegram's rule: naming an offset confirms (deletes) every update below it.
            self.state.confirmed_offset = max(self.state.confirmed_offset, offset)
            self.state.updates = [
                u
                for u in self.state.updates
                if not (isinstance(u, dict) and isinstance(u.get("update_id"), int))
                or u["update_id"] >= self.state.confirmed_offset
            ]
        limit = int(params.get("limit") or 100)
        timeout = float(params.get("timeout") or 0)
        changed = self.state.changed
        assert changed is not None
        self.state.polls_in_flight += 1
        try:
            async with changed:
                if not self.state.updates and timeout > 0 and not self.state.closing:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), timeout)
        finally:
            self.state.polls_in_flight -= 1
        batch = self.state.updates[:limit]
        # Junk without an update id cannot be confirmed by an offset: hand it out once.
        self.state.updates = [
            u
            for u in self.state.updates
            if u not in batch or (isinstance(u, dict) and isinstance(u.get("update_id"), int))
        ]
        return batch

    async def _m_send_message(self, params: dict[str, Any]) -> Any:
        if not str(params.get("text", "")).strip():
            return _error(400, "Bad Request: message text is empty")
        if len(str(params["text"])) > 4096:
            return _error(400, "Bad Request: message is too long")
        if str(params["chat_id"]) == "404":
            return _error(400, "Bad Request: chat not found")
        return self._record("sendMessage", params)

    async def _m_send_document(self, params: dict[str, Any]) -> Any:
        document = params.get("document")
        filename, data = document if isinstance(document, tuple) else (None, None)
        return self._record("sendDocument", params, document=data, filename=filename)

    async def _m_edit_message_text(self, params: dict[str, Any]) -> Any:
        self.state.sent.append(Sent("editMessageText", str(params["chat_id"]), params))
        return {
            "message_id": int(params["message_id"]),
            "date": int(time.time()),
            "chat": self._chat(str(params["chat_id"])),
            "text": str(params["text"]),
        }

    async def _m_set_message_reaction(self, params: dict[str, Any]) -> Any:
        self.state.sent.append(Sent("setMessageReaction", str(params["chat_id"]), params))
        return True

    async def _m_send_chat_action(self, params: dict[str, Any]) -> Any:
        self.state.sent.append(Sent("sendChatAction", str(params["chat_id"]), params))
        return True

    async def _m_answer_callback_query(self, params: dict[str, Any]) -> Any:
        self.state.answered_callbacks.append(str(params["callback_query_id"]))
        return True

    async def _m_get_file(self, params: dict[str, Any]) -> Any:
        file_id = str(params["file_id"])
        if file_id not in self.state.files:
            return _error(400, "Bad Request: invalid file_id")
        path, data = self.state.files[file_id]
        if len(data) > 20_000_000:
            return _error(400, "Bad Request: file is too big")
        return {
            "file_id": file_id,
            "file_unique_id": f"u{file_id}",
            "file_size": len(data),
            "file_path": path,
        }


def _error(status: int, description: str, retry_after: int | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return web.json_response(body, status=status)


def _snake(name: str) -> str:
    """``getUpdates`` → ``get_updates`` (Telegram method names are camelCase)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
