"""What the tool loop exchanges with a model provider.

Requests and responses are the Messages API's own wire format (plain JSON-able dicts for
content blocks), so the conversation we persist in ``agent/state/`` is exactly what the API
sent and what we send back, and a block type we do not know (a server tool's result, say) is
carried through untouched. Both providers return ``ModelResponse``: the Anthropic provider
decodes the API's JSON into it, the scripted provider builds it from its script.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

Block = dict[str, Any]
ApiMessage = dict[str, Any]


class Usage(msgspec.Struct, frozen=True):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int | None = 0
    cache_read_input_tokens: int | None = 0

    @property
    def context_tokens(self) -> int:
        """How much of the context window this exchange used: everything the model read
        (cached or not) plus what it wrote, which becomes input of the next call."""
        return (
            self.input_tokens
            + (self.cache_creation_input_tokens or 0)
            + (self.cache_read_input_tokens or 0)
            + self.output_tokens
        )


class ModelResponse(msgspec.Struct, frozen=True):
    """One Messages API response (unknown fields ignored)."""

    content: list[Block]
    stop_reason: str | None = None
    usage: Usage = Usage()
    id: str = ""
    model: str = ""

    def text(self) -> str:
        """The response's text blocks joined: what the output parser reads."""
        return "".join(
            str(block.get("text", "")) for block in self.content if block.get("type") == "text"
        )

    def tool_uses(self) -> list[Block]:
        return [block for block in self.content if block.get("type") == "tool_use"]


class ModelRequest(msgspec.Struct, frozen=True, kw_only=True):
    system: list[Block]
    tools: list[Block]
    messages: list[ApiMessage]
    max_tokens: int
    tool_choice: Block | None = None


class ModelError(Exception):
    """A model call failed. ``user_message`` is what the user is told (no internals, never
    a credential); ``context_overflow`` says the conversation itself is too long."""

    def __init__(self, user_message: str, *, context_overflow: bool = False) -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.context_overflow = context_overflow


class ModelUnavailable(Exception):
    """The model could not be reached for as long as the runner waits (``proxy_wait_s``):
    the proxy is absent (a restart, a crash) or the API stayed overloaded or rate-limited.
    Not the user's problem and not a failure of the message: the runner gives its claims
    back (the run ends without acking them) and the host retries them with backoff, as for
    a dead run. The user hears only if the message is finally given up."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Provider(Protocol):
    def create(self, request: ModelRequest) -> ModelResponse:
        """One Messages API call. Raises ``ModelError`` (permanent: the user is told) or
        ``ModelUnavailable`` (transient, waited out already: the claims go back)."""
        ...


_response_decoder = msgspec.json.Decoder(ModelResponse)


def decode_response(data: bytes) -> ModelResponse:
    try:
        return _response_decoder.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise ModelError(f"The model API sent a response we could not read ({exc}).") from None
