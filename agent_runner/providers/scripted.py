"""A deterministic model for tests and benchmarks: it plays back responses from a JSON script
file (``RunnerConfig.script_path``), with no network, through the same tool loop as the real
model.

The script::

    {
      "turns": [
        {"content": [{"type": "tool_use", "name": "bash", "input": {"command": "ls"}}]},
        {"expect": "README",
         "content": [{"type": "text", "text": "<message to=\\"main\\">hi</message>"}],
         "usage": {"input_tokens": 1200, "output_tokens": 30}},
        {"error": "overloaded"}
      ],
      "fallback": {"content": [{"type": "text", "text": "<message to=\\"main\\">ok</message>"}]}
    }

Each call takes the next turn; when they run out, ``fallback`` answers every further call
(none: the call fails with a clear error). A turn may ``expect`` a substring of the request's
last message (a mismatch fails the call, so a test sees the loop sent the wrong thing), wait
``delay_ms`` (a slow model; a stop request cuts it short) or fail with ``error``. A tool_use
block without an ``id`` gets one; ``stop_reason`` defaults to ``tool_use`` when the turn
calls a tool, else ``end_turn``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec

from agent_runner.model import (
    Block,
    ModelError,
    ModelRequest,
    ModelResponse,
    ModelUnavailable,
    Usage,
)


class ScriptTurn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    content: list[Block] = []
    stop_reason: str | None = None
    usage: Usage = Usage(input_tokens=100, output_tokens=20)
    expect: str | None = None
    error: str | None = None
    # Raise ModelUnavailable instead (the model out of reach past the run's wait).
    unavailable: str | None = None
    delay_ms: int = 0


class Script(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    turns: list[ScriptTurn] = []
    fallback: ScriptTurn | None = None


def load_script(path: Path) -> Script:
    try:
        return msgspec.json.decode(path.read_bytes(), type=Script)
    except (OSError, msgspec.DecodeError) as exc:
        raise ModelError(f"The scripted model cannot read its script {path}: {exc}") from None


class ScriptedProvider:
    def __init__(self, script: Script, *, wait: Callable[[float], object] | None = None) -> None:
        self.script = script
        self.calls = 0
        self.wait = wait  # how a turn's delay_ms passes (a stop request cuts it short)
        self.requests: list[ModelRequest] = []

    def create(self, request: ModelRequest) -> ModelResponse:
        self.requests.append(request)
        index = self.calls
        self.calls += 1
        if index < len(self.script.turns):
            turn = self.script.turns[index]
        elif self.script.fallback is not None:
            turn = self.script.fallback
        else:
            raise ModelError(f"The scripted model has no response for call {index + 1}.")
        if turn.expect is not None:
            last = msgspec.json.encode(request.messages[-1]).decode() if request.messages else ""
            if turn.expect not in last:
                raise ModelError(
                    f"The scripted model expected {turn.expect!r} in call {index + 1}'s last "
                    f"message, got: {last[:500]}"
                )
        if turn.delay_ms and self.wait is not None:
            self.wait(turn.delay_ms / 1000)
        if turn.error is not None:
            raise ModelError(turn.error)
        if turn.unavailable is not None:
            raise ModelUnavailable(turn.unavailable)
        content: list[Block] = []
        for number, block in enumerate(turn.content):
            if block.get("type") == "tool_use" and "id" not in block:
                content.append({**block, "id": f"toolu_scripted_{index}_{number}"})
            else:
                content.append(block)
        calls_tool = any(b.get("type") == "tool_use" for b in content)
        stop = turn.stop_reason or ("tool_use" if calls_tool else "end_turn")
        return ModelResponse(
            content=content, stop_reason=stop, usage=turn.usage, id=f"msg_scripted_{index}"
        )
