"""Requests for the host: create_agent, install_packages, add_mcp_server
(upstream-container.md §5.5, §5.6). Each writes a ``kind='system'`` row and returns at once;
the host authorizes from central DB roles (install and MCP go through an approval card) and
tells the agent the outcome later. The checks here are a courtesy that gives the model a
precise error; the host applies the same rules again (package names: the shared
``nanoclaw_common.packages``, so the tool never accepts what the host refuses).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from agent_runner.tools.base import Tool, ToolContext, ToolError, schema, string
from nanoclaw_common import messages, packages
from nanoclaw_common.ids import new_id
from nanoclaw_common.loader_env import is_loader_variable
from nanoclaw_common.store.outbound import NewOutbound

MCP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def check_packages(apt: list[str], pip: list[str]) -> None:
    """Raise ``ToolError`` unless the request passes ``packages.check_request``."""
    try:
        packages.check_request(apt, pip)
    except packages.InvalidPackages as exc:
        raise ToolError(str(exc)) from None


# -- create_agent -------------------------------------------------------------------------


class CreateAgentInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    instructions: str | None = None


def create_agent(ctx: ToolContext, args: CreateAgentInput) -> str:
    name = args.name.strip()
    if not name:
        raise ToolError("name is required")
    if len(name) > messages.MAX_NAME_CHARS:
        raise ToolError(f"name is longer than {messages.MAX_NAME_CHARS} characters")
    content = messages.CreateAgent(
        request_id=new_id("req"), name=name, instructions=args.instructions or None
    )
    # in_reply_to: the host authorizes create_agent by who asked (docs/delivery.md).
    ctx.write(NewOutbound(content=content, in_reply_to=ctx.batch.in_reply_to))
    return f'Creating agent "{name}". You will be notified when it is ready.'


# -- install_packages ---------------------------------------------------------------------


class InstallInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    apt: list[str] = []
    pip: list[str] = []
    reason: str = ""


def install_packages(ctx: ToolContext, args: InstallInput) -> str:
    check_packages(args.apt, args.pip)
    content = messages.InstallPackages(apt=args.apt, pip=args.pip, reason=args.reason[:4000])
    ctx.write(NewOutbound(content=content))
    return "Package install request submitted. You will be notified when admin approves or rejects."


# -- add_mcp_server -----------------------------------------------------------------------


class McpInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    command: str
    args: list[str] = []
    env: dict[str, str] = {}


def add_mcp_server(ctx: ToolContext, args: McpInput) -> str:
    if not args.name or not args.command.strip():
        raise ToolError("name and command are required")
    if not MCP_NAME.match(args.name):
        raise ToolError(f"invalid server name {args.name!r}: letters, digits, _ and -, at most 64")
    bad = [key for key in args.env if not ENV_NAME.match(key)]
    if bad:
        raise ToolError(f"invalid environment variable name(s): {', '.join(bad)}")
    loaders = sorted(key for key in args.env if is_loader_variable(key))
    if loaders:
        # The host refuses these too (an approved server must run as the card shows it).
        raise ToolError(
            f"{', '.join(loaders)}: variables that change how a program loads code are refused"
        )
    try:
        content = msgspec.convert(
            {
                "type": "add_mcp_server",
                "name": args.name,
                "command": args.command,
                "args": args.args,
                "env": args.env,
            },
            messages.AddMcpServer,
        )
    except msgspec.ValidationError as exc:
        raise ToolError(f"invalid MCP server request: {exc}") from None
    ctx.write(NewOutbound(content=content))
    return "MCP server request submitted. You will be notified when admin approves or rejects."


TOOLS: list[Tool[Any]] = [
    Tool(
        "create_agent",
        "Create a long-lived companion agent. Its name becomes a destination you can message; "
        "you are notified when it is ready.",
        schema(
            {
                "name": string("The new agent's name."),
                "instructions": string("Initial instructions (its memory) for the new agent."),
            },
            ["name"],
        ),
        CreateAgentInput,
        create_agent,
    ),
    Tool(
        "install_packages",
        f"Ask an administrator to install system (apt) or Python (pip) packages into your "
        f"container permanently; at most {packages.MAX_PACKAGES} names in total, no versions.",
        schema(
            {
                "apt": {"type": "array", "items": {"type": "string"}, "description": "apt names."},
                "pip": {"type": "array", "items": {"type": "string"}, "description": "pip names."},
                "reason": string("Why you need them (shown to the approver)."),
            }
        ),
        InstallInput,
        install_packages,
    ),
    Tool(
        "add_mcp_server",
        "Ask an administrator to add an MCP server (a command speaking MCP over stdio).",
        schema(
            {
                "name": string("Server name."),
                "command": string("Executable to run."),
                "args": {"type": "array", "items": {"type": "string"}},
                "env": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            ["name", "command"],
        ),
        McpInput,
        add_mcp_server,
    ),
]
