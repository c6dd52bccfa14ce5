"""The real model: the ``anthropic`` SDK, talking to the credential proxy over its Unix socket.

The container never holds an API key: the SDK's key is the per-run proxy token, which the
proxy swaps for the real key. The SDK costs about a second and ~60 MB to import, so it is
imported on the first call, not at start-up (the pickup path never waits for it).

We ask for the raw response and decode its JSON ourselves: the conversation keeps the API's
exact wire format, and no pydantic model is built per call.

Failures are sorted (``classify``), and the SDK's own retries are off so that this is the
one place that decides:
- our plumbing: the proxy not answering (a restart takes about half a second, a crash
  about as long, a graceful restart none), its session-token refusal (this run is being
  replaced), its "could not reach the model API": waited out with capped backoff;
- the API busy: 429 rate limits, 529 / ``overloaded_error``, 5xx: retried after the
  answer's ``retry-after`` (or a backoff);
- everything else is a permanent refusal, and the only kind the user is shown, in words a
  person can act on (``refusal_text``).
A transient failure that lasts past ``wait_s`` raises ``ModelUnavailable``: the runner
gives the message back to the host's retry path instead of failing it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import msgspec
from loguru import logger

from agent_runner.model import (
    ModelError,
    ModelRequest,
    ModelResponse,
    ModelUnavailable,
    decode_response,
)

if TYPE_CHECKING:
    import anthropic

log = logger.bind(component="model")

REQUEST_TIMEOUT_S: Final = 600.0
FIRST_RETRY_S: Final = 0.05
MAX_PLUMBING_RETRY_S: Final = 1.0  # the proxy is local: look again often
MAX_BUSY_RETRY_S: Final = 60.0
MAX_RETRY_AFTER_S: Final = 600.0
TRANSIENT_STATUS: Final = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


class Outcome(msgspec.Struct, frozen=True):
    transient: bool
    reason: str  # for the log (transient) or the user (permanent)
    retry_after_s: float | None = None
    context_overflow: bool = False
    busy: bool = False  # the API (or the way to it) is busy: back off further than for ours


def _api_message(body: object, fallback: str) -> str:
    """The ``error.message`` of an Anthropic-shaped error body."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return fallback


def _error_type(body: object) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("type", ""))
    return ""


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The answer's ``retry-after`` (seconds, or ``retry-after-ms``), bounded."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue  # an HTTP date: fall back to our own backoff
        if seconds >= 0:
            return min(seconds, MAX_RETRY_AFTER_S)
    return None


def classify(status: int, headers: Mapping[str, str], body: object, fallback: str) -> Outcome:
    """Sort an error answer: ours or the API's, transient or permanent (module docstring)."""
    message = _api_message(body, fallback)
    kind = _error_type(body)
    ours = message.startswith("NanoClaw")
    should_retry = (headers.get("x-should-retry") or "").lower()
    if should_retry == "false":
        return Outcome(False, refusal_text(status, kind, message, ours=ours))
    if ours and status == 401:
        # This run's token is not (or no longer) valid: the host is replacing the container.
        return Outcome(True, f"the proxy refused this run's token ({message})")
    if (
        status in TRANSIENT_STATUS
        or kind in ("overloaded_error", "api_error")
        or (should_retry == "true")
    ):
        return Outcome(
            True, f"{status} {kind or 'error'}: {message}", retry_after_s(headers), busy=True
        )
    overflow = status == 400 and "too long" in message.lower()
    return Outcome(False, refusal_text(status, kind, message, ours=ours), context_overflow=overflow)


def refusal_text(status: int, kind: str, message: str, *, ours: bool) -> str:
    """What the user reads about a permanent refusal."""
    if ours:
        return message  # the proxy's own refusals say what happened and who can fix it
    if status == 401:
        return (
            "The model API did not accept NanoClaw's API key. The owner needs to set a valid "
            "ANTHROPIC_API_KEY for the proxy and restart it (nanoclaw ctl restart proxy)."
        )
    if status == 403:
        return (
            f"The model API refused this request for lack of permission ({message}). The owner "
            "should check the API account's access to this model and feature."
        )
    if status == 404:
        return (
            f"The model API does not know what was asked for ({message}). The owner should "
            "check the model this agent group is set to use."
        )
    if status == 413:
        return "The request was too large for the model API. Try a shorter request or file."
    return f"The model API refused the request ({status} {kind or 'error'}): {message}"


class AnthropicProvider:
    def __init__(
        self,
        *,
        socket_path: Path,
        token: str,
        model: str,
        wait_s: float = 300.0,
        wait: Callable[[float], bool] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``wait_s``: how long transient failures are retried. ``wait(seconds)`` sleeps
        and returns True when the runner is stopping (then the call gives up at once)."""
        self.socket_path = socket_path
        self.model = model
        self.wait_s = wait_s
        self._wait = wait or _sleep
        self._monotonic = monotonic
        self._token = token
        self._client: anthropic.Anthropic | None = None

    def client(self) -> anthropic.Anthropic:
        if self._client is None:
            # Imported here, on the first call: ~1 s and ~60 MB we do not pay while idle.
            import anthropic  # noqa: PLC0415
            import httpx2  # noqa: PLC0415

            transport = httpx2.HTTPTransport(uds=str(self.socket_path))
            self._client = anthropic.Anthropic(
                api_key=self._token,
                base_url="http://proxy",
                http_client=httpx2.Client(transport=transport, timeout=REQUEST_TIMEOUT_S),
                max_retries=0,  # ours, below: the SDK's two retries gave up within ~1.5 s
            )
        return self._client

    def create(self, request: ModelRequest) -> ModelResponse:
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "system": request.system,
            "tools": request.tools,
            "messages": request.messages,
        }
        if request.tool_choice is not None:
            params["tool_choice"] = request.tool_choice
        deadline = self._monotonic() + self.wait_s
        attempt = 0
        while True:
            outcome = self._attempt(params)
            if isinstance(outcome, ModelResponse):
                if attempt:
                    log.info("model call went through after {} retr(ies)", attempt)
                return outcome
            if not outcome.transient:
                raise ModelError(outcome.reason, context_overflow=outcome.context_overflow)
            delay = next_delay(outcome, attempt)
            if self._monotonic() + delay > deadline:
                log.warning("giving up after {:.0f} s: {}", self.wait_s, outcome.reason)
                raise ModelUnavailable(outcome.reason)
            if attempt == 0 or attempt & (attempt - 1) == 0:  # 1st, 2nd, 4th, 8th...
                log.warning("model call failed ({}); retrying in {:.2f} s", outcome.reason, delay)
            if self._wait(delay):
                raise ModelUnavailable(f"stopping while waiting ({outcome.reason})")
            attempt += 1

    def _attempt(self, params: dict[str, Any]) -> ModelResponse | Outcome:
        import anthropic  # noqa: PLC0415 (loaded by client())

        client = self.client()
        try:
            raw = client.messages.with_raw_response.create(**cast(Any, params))
            data = raw.read()
        except anthropic.APIStatusError as exc:
            return classify(exc.status_code, exc.response.headers, exc.body, exc.message)
        except anthropic.APIConnectionError as exc:  # refused, reset, timed out: plumbing
            return Outcome(True, f"the NanoClaw proxy is not answering ({type(exc).__name__})")
        return decode_response(data)


def next_delay(outcome: Outcome, attempt: int) -> float:
    """The wait before the next try: the API's ``retry-after`` when it gave one, else a
    doubling backoff (capped low for our own plumbing, higher for a busy API)."""
    if outcome.retry_after_s is not None:
        return outcome.retry_after_s
    cap = MAX_BUSY_RETRY_S if outcome.busy else MAX_PLUMBING_RETRY_S
    return float(min(FIRST_RETRY_S * (2 ** min(attempt, 20)), cap))


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False
