"""The real model: the ``anthropic`` SDK, talking to the credential proxy over its Unix socket.

The container never holds an API key: the SDK's key is the per-run proxy token, which the
proxy swaps for the real key. The SDK costs about a second and ~60 MB to import, so it is
imported on the first call, not at start-up (the pickup path never waits for it).

We ask for the raw response and decode its JSON ourselves: the conversation keeps the API's
exact wire format, and no pydantic model is built per call.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from loguru import logger

from agent_runner.model import ModelError, ModelRequest, ModelResponse, decode_response

if TYPE_CHECKING:
    import anthropic

log = logger.bind(component="model")

REQUEST_TIMEOUT_S = 600.0
MAX_RETRIES = 2


def _api_message(body: object, fallback: str) -> str:
    """The ``error.message`` of an Anthropic-shaped error body."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return fallback


class AnthropicProvider:
    def __init__(self, *, socket_path: Path, token: str, model: str) -> None:
        self.socket_path = socket_path
        self.model = model
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
                max_retries=MAX_RETRIES,
            )
        return self._client

    def create(self, request: ModelRequest) -> ModelResponse:
        import anthropic  # noqa: PLC0415 (already loaded by client())

        client = self.client()
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "system": request.system,
            "tools": request.tools,
            "messages": request.messages,
        }
        if request.tool_choice is not None:
            params["tool_choice"] = request.tool_choice
        try:
            raw = client.messages.with_raw_response.create(**cast(Any, params))
            data = raw.read()
        except anthropic.APIStatusError as exc:
            message = _api_message(exc.body, exc.message)
            log.warning("model API error {}: {}", exc.status_code, message)
            overflow = exc.status_code == 400 and "too long" in message.lower()
            raise ModelError(
                f"The model API refused the request ({exc.status_code}): {message}",
                context_overflow=overflow,
            ) from None
        except anthropic.APIConnectionError as exc:
            log.warning("model API unreachable: {}", exc)
            raise ModelError(
                "Could not reach the model API through the NanoClaw proxy "
                f"({type(exc).__name__}: {exc}). Try again in a moment."
            ) from None
        return decode_response(data)
