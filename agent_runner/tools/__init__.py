"""The agent's tools: built-in (bash, workspace files), NanoClaw's, and Anthropic's
server-side web search and fetch (run by the API; we only list them)."""

from __future__ import annotations

from typing import Any

from loguru import logger

from agent_runner.mcp import CALL_TIMEOUT_S, McpTools
from agent_runner.tools import admin, files, messaging, scheduling, shell
from agent_runner.tools.base import Batch, Tool, ToolContext, ToolError

__all__ = ["TOOLS", "Batch", "Tool", "ToolContext", "ToolError", "definitions", "execute"]

log = logger.bind(component="tools")

TOOLS: dict[str, Tool[Any]] = {
    tool.name: tool
    for tool in (
        *shell.TOOLS,
        *files.TOOLS,
        *messaging.TOOLS,
        *scheduling.TOOLS,
        *admin.TOOLS,
    )
}

SERVER_TOOLS: list[dict[str, Any]] = [
    {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
    {"type": "web_fetch_20250910", "name": "web_fetch", "max_uses": 5},
]


def definitions(mcp: McpTools | None = None) -> list[dict[str, Any]]:
    """The ``tools`` parameter. The last one carries the cache breakpoint, so the whole
    (unchanging) tool list is served from the prompt cache."""
    listed = [tool.definition() for tool in TOOLS.values()]
    listed += mcp.definitions() if mcp is not None else []
    listed += [dict(t) for t in SERVER_TOOLS]
    listed[-1]["cache_control"] = {"type": "ephemeral"}
    return listed


def execute(ctx: ToolContext, name: str, arguments: Any) -> tuple[str, bool]:
    """Run one tool call: (text for the model, is_error). Never raises. Whatever processes
    the call started are killed when it ends (``reaper``), detached ones included."""
    if ctx.mcp is not None and ctx.mcp.handles(name):
        _set_tool(ctx, name, int(CALL_TIMEOUT_S * 1000))
        ctx.processes.begin()
        try:
            return ctx.mcp.call(name, arguments)
        finally:
            _sweep(ctx, name)
            _set_tool(ctx, None, None)
    tool = TOOLS.get(name)
    if tool is None:
        return f"Error: unknown tool {name!r}", True
    try:
        args = tool.parse(arguments)
        timeout_ms = tool.declared_timeout_ms(ctx, args)
        _set_tool(ctx, name, timeout_ms)
        ctx.processes.begin()
        try:
            return tool.handler(ctx, args), False
        finally:
            _sweep(ctx, name)
            _set_tool(ctx, None, None)
    except ToolError as exc:
        log.info("tool {} refused: {}", name, exc)
        return f"Error: {exc}", True
    except Exception as exc:
        log.exception("tool {} failed", name)
        return f"Error: {name} failed unexpectedly ({type(exc).__name__}: {exc})", True


def _set_tool(ctx: ToolContext, name: str | None, timeout_ms: int | None) -> None:
    """Record the tool in flight for the sweeper (skipped, not failed, on a full disk)."""
    ctx.disk.best_effort(
        lambda: ctx.outbound.set_tool(name, declared_timeout_ms=timeout_ms), "the tool in flight"
    )


def _sweep(ctx: ToolContext, name: str) -> None:
    killed = ctx.processes.sweep()
    if killed:
        log.info("tool {}: killed {} process(es) it left running", name, killed)
