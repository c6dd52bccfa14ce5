"""A fake Slack: the Web API, Socket Mode (websocket) and an Events API sender.

- Web API: ``POST /api/<method>`` with a bearer token, JSON or form bodies, Slack's
  ``{"ok": …}`` answers, ``429`` + ``Retry-After`` on injected rate limits.
- Socket Mode: ``apps.connections.open`` (app token) returns ``ws://…/socket``; the socket
  sends ``hello``, then envelopes. An envelope stays unacknowledged until the client sends
  ``{"envelope_id": …}``; unacknowledged ones are re-sent (``retry_attempt`` + 1) when a
  client connects again, as Slack does.
- Events API: ``post_event`` signs a body with the signing secret (``v0`` HMAC) and POSTs it
  to the app's URL, like Slack's servers.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.server_thread import ServerThread

BOT_TOKEN = "xoxb-test-bot"
APP_TOKEN = "xapp-test-app"
SIGNING_SECRET = "test-signing-secret-123"
BOT_USER = "UBOT"


@dataclass
class Call:
    method: str
    params: dict[str, Any]


@dataclass
class Envelope:
    envelope_id: str
    type: str
    payload: Any
    attempts: int = 0


@dataclass
class State:
    calls: list[Call] = field(default_factory=list)
    ts_counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    failures: dict[str, list[tuple[int, str, int | None]]] = field(default_factory=dict)
    envelopes: list[Envelope] = field(default_factory=list)  # unacknowledged, in order
    acked: list[str] = field(default_factory=list)
    sockets: list[web.WebSocketResponse] = field(default_factory=list)
    connections: int = 0
    uploads: dict[str, bytes] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    file_failures: dict[str, list[int]] = field(default_factory=dict)  # file id -> statuses
    users: dict[str, str] = field(default_factory=dict)
    channels: dict[str, str] = field(default_factory=dict)
    raw_frames: list[str] = field(default_factory=list)


class FakeSlack:
    def __init__(self) -> None:
        self.state = State()
        self.server = ServerThread(self._app)
        self._envelope_ids = itertools.count(1)

    def start(self) -> FakeSlack:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.run(self._close_sockets())
        self.server.stop()

    async def _close_sockets(self) -> None:
        for ws in list(self.state.sockets):
            await ws.close()

    @property
    def api_url(self) -> str:
        return f"{self.server.url}/api/"

    # -- test API ----------------------------------------------------------------------------

    def calls(self, method: str | None = None) -> list[Call]:
        return self.server.call(
            lambda: [c for c in self.state.calls if method is None or c.method == method]
        )

    def fail(self, method: str, status: int, error: str, retry_after: int | None = None) -> None:
        self.server.call(
            lambda: self.state.failures.setdefault(method, []).append((status, error, retry_after))
        )

    def add_user(self, user_id: str, name: str) -> None:
        self.server.call(self.state.users.__setitem__, user_id, name)

    def add_channel(self, channel_id: str, name: str) -> None:
        self.server.call(self.state.channels.__setitem__, channel_id, name)

    def add_file(self, file_id: str, data: bytes) -> str:
        self.server.call(self.state.files.__setitem__, file_id, data)
        return f"{self.server.url}/files/{file_id}"

    def fail_file(self, file_id: str, *statuses: int) -> None:
        """The next downloads of ``file_id`` answer these HTTP statuses, in order."""
        self.server.call(lambda: self.state.file_failures.setdefault(file_id, []).extend(statuses))

    def uploads(self) -> dict[str, bytes]:
        return self.server.call(lambda: dict(self.state.uploads))

    def connections(self) -> int:
        return self.server.call(lambda: self.state.connections)

    def unacked(self) -> list[str]:
        return self.server.call(lambda: [e.envelope_id for e in self.state.envelopes])

    def acked(self) -> list[str]:
        return self.server.call(lambda: list(self.state.acked))

    def push_socket_event(self, event: dict[str, Any]) -> str:
        """An ``events_api`` envelope carrying ``event``; returns its envelope id."""
        callback = {
            "type": "event_callback",
            "team_id": "T1",
            "api_app_id": "A1",
            "event_id": f"Ev{time.monotonic_ns()}",
            "event_time": int(time.time()),
            "event": event,
        }
        return self.push_envelope("events_api", callback)

    def push_envelope(self, kind: str, payload: Any) -> str:
        envelope_id = f"env-{next(self._envelope_ids)}"
        self.server.run(self._enqueue(Envelope(envelope_id, kind, payload)))
        return envelope_id

    def push_raw_frame(self, text: str) -> None:
        self.server.run(self._send_raw(text))

    def message_event(
        self,
        channel: str,
        text: str,
        *,
        user: str = "U1",
        ts: str | None = None,
        thread_ts: str | None = None,
        channel_type: str = "channel",
        **extra: Any,
    ) -> dict[str, Any]:
        event: dict[str, Any] = {
            "type": "message",
            "channel": channel,
            "user": user,
            "text": text,
            "ts": ts or f"{int(time.time())}.{next(self.state.ts_counter):06d}",
            "channel_type": channel_type,
        }
        if thread_ts is not None:
            event["thread_ts"] = thread_ts
        event.update(extra)
        return event

    # -- server ------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=60_000_000)
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/socket", self._socket)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_get("/files/{file_id}", self._download)
        return app

    async def _enqueue(self, envelope: Envelope) -> None:
        self.state.envelopes.append(envelope)
        for ws in list(self.state.sockets):
            await self._send(ws, envelope)

    async def _send(self, ws: web.WebSocketResponse, envelope: Envelope) -> None:
        frame = {
            "envelope_id": envelope.envelope_id,
            "type": envelope.type,
            "payload": envelope.payload,
            "accepts_response_payload": False,
            "retry_attempt": envelope.attempts,
            "retry_reason": "timeout" if envelope.attempts else "",
        }
        envelope.attempts += 1
        if not ws.closed:
            await ws.send_str(json.dumps(frame))

    async def _send_raw(self, text: str) -> None:
        for ws in list(self.state.sockets):
            if not ws.closed:
                await ws.send_str(text)

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.state.connections += 1
        self.state.sockets.append(ws)
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": 1,
                    "debug_info": {"host": "fake", "approximate_connection_time": 3600},
                    "connection_info": {"app_id": "A1"},
                }
            )
        )
        for envelope in list(self.state.envelopes):  # Slack re-sends what was never acked
            await self._send(ws, envelope)
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self.state.raw_frames.append(message.data)
                    try:
                        body = json.loads(message.data)
                    except ValueError:
                        continue
                    envelope_id = body.get("envelope_id")
                    if envelope_id:
                        self.state.acked.append(envelope_id)
                        self.state.envelopes = [
                            e for e in self.state.envelopes if e.envelope_id != envelope_id
                        ]
        finally:
            self.state.sockets.remove(ws)
        return ws

    async def _upload(self, request: web.Request) -> web.Response:
        self.state.uploads[request.match_info["file_id"]] = await request.read()
        return web.Response(text="OK - 0")

    async def _download(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {BOT_TOKEN}":
            return web.Response(status=403)
        file_id = request.match_info["file_id"]
        failures = self.state.file_failures.get(file_id)
        if failures:
            return web.Response(status=failures.pop(0))
        data = self.state.files.get(file_id)
        return web.Response(status=404) if data is None else web.Response(body=data)

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            params.update(await request.json())
        else:
            form = await request.post()
            params.update({k: v for k, v in form.items() if isinstance(v, str)})
        return params

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await self._params(request)
        token = (request.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        token = token or str(params.get("token") or "")
        wanted = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if token != wanted:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        self.state.calls.append(Call(method, params))
        queued = self.state.failures.get(method)
        if queued:
            status, error, retry_after = queued.pop(0)
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            return web.json_response({"ok": False, "error": error}, status=status, headers=headers)
        handler = getattr(self, "_m_" + _snake(method.replace(".", "_")), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        result = handler(params, request)
        return web.json_response({"ok": True, **result})

    def _ts(self) -> str:
        return f"{int(time.time())}.{next(self.state.ts_counter):06d}"

    # -- methods -----------------------------------------------------------------------------

    def _m_auth_test(self, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        return {"user_id": BOT_USER, "bot_id": "BBOT", "team_id": "T1", "user": "nanobot"}

    def _m_apps_connections_open(
        self, params: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        return {"url": f"ws://127.0.0.1:{self.server.port}/socket"}

    def _m_chat_post_message(self, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        ts = self._ts()
        return {
            "channel": params["channel"],
            "ts": ts,
            "message": {"text": params.get("text"), "ts": ts},
        }

    def _m_chat_update(self, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        return {"channel": params["channel"], "ts": params["ts"], "text": params.get("text")}

    def _m_reactions_add(self, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        return {}

    def _m_conversations_open(self, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        return {"channel": {"id": f"D{params['users']}"}}

    def _m_conversations_info(self, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        channel = str(params["channel"])
        return {"channel": {"id": channel, "name": self.state.channels.get(channel, "general")}}

    def _m_users_info(self, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        user = str(params["user"])
        name = self.state.users.get(user, f"user-{user}")
        return {"user": {"id": user, "name": name, "profile": {"display_name": name}}}

    def _m_files_get_upload_u_r_l_external(
        self, params: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        file_id = f"F{next(self.state.ts_counter)}"
        return {"upload_url": f"{self.server.url}/upload/{file_id}", "file_id": file_id}

    def _m_files_complete_upload_external(
        self, params: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        files = params["files"]
        parsed = json.loads(files) if isinstance(files, str) else files
        return {"files": [{"id": f["id"], "title": f.get("title", "")} for f in parsed]}


def sign(body: bytes, timestamp: str, secret: str = SIGNING_SECRET) -> str:
    base = f"v0:{timestamp}:".encode() + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def post_event(
    url: str,
    body: bytes,
    *,
    timestamp: str | None = None,
    signature: str | None = None,
    content_type: str = "application/json",
    secret: str = SIGNING_SECRET,
) -> tuple[int, bytes]:
    """POST like Slack's Events API: signed body, the status and body of the answer."""
    stamp = timestamp or str(int(time.time()))
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature or sign(body, stamp, secret),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def event_body(event: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "token": "legacy",
            "team_id": "T1",
            "api_app_id": "A1",
            "type": "event_callback",
            "event_id": f"Ev{time.monotonic_ns()}",
            "event_time": int(time.time()),
            "event": event,
        }
    ).encode()


def interaction_body(payload: dict[str, Any]) -> bytes:
    return urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()


def _snake(name: str) -> str:
    """``chat_postMessage`` → ``chat_post_message``."""
    return re.sub(r"(?<!^)(?<!_)(?=[A-Z])", "_", name).lower()
