"""What a ``/v1/messages`` request may ask the model API to do on the agent's behalf.

Some features make the *provider* act outside the container: server tools (web search, web
fetch, code execution, tool search, the MCP toolset), the MCP connector (``mcp_servers``:
the provider calls URLs the request names), content blocks the provider downloads
(``source.type == "url"``), files of the account (``source.type == "file"``), code execution
containers (``container``, ``container_upload`` blocks) and ``anthropic-beta`` flags that
switch such features on. Forwarded unchanged, they would let an agent reach any URL it picks
around ``--network none``. So the proxy checks each request against the group's
``ServerCapabilities`` (``nanoclaw_common.store.proxy_policy``): web search and web fetch
are on by default (with an optional domain allowlist, written into the tools'
``allowed_domains`` and checked for URL sources), everything else is off until the owner
turns it on. A request that asks for something off is refused as a whole with a message
that says what is off and how to turn it on; nothing is silently dropped, so the model
never acts on a tool list the agent did not send.

Client tools (custom tools without a ``type``, and Anthropic's client-executed ``bash_*``,
``text_editor_*``, ``computer_*``, ``memory_*``) run in the container and pass. An unknown
``type`` is refused: a server tool shipped after this code is off until it is known here.

Pure: bytes in, a decision out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec

from nanoclaw_common.store.proxy_policy import ServerCapabilities

CLIENT_TOOL_PREFIXES: Final = ("bash_", "text_editor_", "computer_", "memory_")
# tool type prefix -> the capability (ServerCapabilities field or server_tools family)
SERVER_TOOL_PREFIXES: Final = {
    "web_search_": "web_search",
    "web_fetch_": "web_fetch",
    "code_execution_": "code_execution",
    "tool_search_tool_": "tool_search_tool",
    "mcp_toolset": "mcp_connector",
}
# Betas that change only how the model treats the request: no outside contact, no account
# data. Everything else needs its capability or the group's allowed_betas.
HARMLESS_BETAS: Final = (
    "prompt-caching-",
    "token-efficient-tools-",
    "interleaved-thinking-",
    "fine-grained-tool-streaming-",
    "context-1m-",
    "output-128k-",
    "extended-cache-ttl-",
    "context-management-",
)
# beta flag prefix -> the capability it belongs to
CAPABILITY_BETAS: Final = {
    "web-search-": "web_search",
    "web-fetch-": "web_fetch",
    "code-execution-": "code_execution",
    "mcp-client-": "mcp_connector",
}
MAX_NESTING: Final = 64
# How each capability is turned on (the refusal says it).
SWITCH: Final = {
    "web_search": "--web-search",
    "web_fetch": "--web-fetch",
    "code_execution": "--server-tool code_execution",
    "tool_search_tool": "--server-tool tool_search_tool",
    "mcp_connector": "--mcp-connector",
}


class Checked(msgspec.Struct, frozen=True):
    """An allowed request: its body (rewritten when the domain allowlist applied) and what
    the budget reservation needs."""

    body: bytes
    max_tokens: int


class Refused(msgspec.Struct, frozen=True):
    message: str


def check_request(
    body: bytes, beta_header: str | None, caps: ServerCapabilities, group: str
) -> Checked | Refused:
    """Decide about one ``/v1/messages`` request of agent group ``group`` (its folder)."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return Refused("NanoClaw proxy: the request body is not JSON.")
    if not isinstance(request, dict):
        return Refused("NanoClaw proxy: the request body is not a JSON object.")
    refusal = _check_betas(beta_header, caps, group)
    if refusal is not None:
        return refusal
    rewritten = False
    tools = request.get("tools")
    if isinstance(tools, list):
        for index, tool in enumerate(tools):
            if not isinstance(tool, dict):
                continue
            outcome = _check_tool(tool, caps, group)
            if isinstance(outcome, Refused):
                return outcome
            if outcome is not tool:
                tools[index] = outcome
                rewritten = True
    if request.get("mcp_servers") and not caps.mcp_connector:
        return _off("the MCP connector (mcp_servers)", "mcp_connector", group)
    if request.get("container") is not None and "code_execution" not in caps.server_tools:
        return _off("code execution containers (container)", "code_execution", group)
    for source in _sources(request.get("messages"), 0):
        refusal = _check_source(source, caps, group)
        if refusal is not None:
            return refusal
    max_tokens = request.get("max_tokens")
    budget_tokens = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 0
    return Checked(json.dumps(request).encode() if rewritten else body, budget_tokens)


def _allowed(capability: str, caps: ServerCapabilities) -> bool:
    if capability == "web_search":
        return caps.web_search
    if capability == "web_fetch":
        return caps.web_fetch
    if capability == "mcp_connector":
        return caps.mcp_connector
    return capability in caps.server_tools


def _off(what: str, capability: str, group: str) -> Refused:
    return Refused(
        f"NanoClaw proxy: {what} is turned off for the agent group '{group}'. The owner can "
        f"turn it on with: nanoclaw groups config {group} {SWITCH[capability]}"
    )


def _check_betas(header: str | None, caps: ServerCapabilities, group: str) -> Refused | None:
    for flag in (f.strip().lower() for f in (header or "").split(",")):
        if not flag or flag in caps.allowed_betas or flag.startswith(HARMLESS_BETAS):
            continue
        capability = next((c for p, c in CAPABILITY_BETAS.items() if flag.startswith(p)), None)
        if capability is not None and _allowed(capability, caps):
            continue
        return Refused(
            f"NanoClaw proxy: the anthropic-beta flag '{flag[:100]}' is turned off for the "
            f"agent group '{group}'. The owner can allow it with: nanoclaw groups config "
            f"{group} --allow-beta {flag[:100]}"
        )
    return None


def _check_tool(tool: dict[str, Any], caps: ServerCapabilities, group: str) -> Any:
    """The tool entry to forward (the same object, or a copy with the domain allowlist), or
    a refusal."""
    kind = tool.get("type")
    if kind is None or kind == "custom":
        return tool
    if not isinstance(kind, str):
        return Refused("NanoClaw proxy: a tool's type is not a string.")
    if kind.startswith(CLIENT_TOOL_PREFIXES):
        return tool
    capability = next((c for p, c in SERVER_TOOL_PREFIXES.items() if kind.startswith(p)), None)
    if capability is None:
        return Refused(
            f"NanoClaw proxy: the tool type '{kind[:100]}' is not known to this proxy, so it is "
            "refused (a server tool would act outside the agent's container)."
        )
    if not _allowed(capability, caps):
        return _off(f"the server tool {kind[:100]}", capability, group)
    if capability in ("web_search", "web_fetch") and caps.web_domains:
        asked = tool.get("allowed_domains")
        if isinstance(asked, list) and asked:
            kept = [d for d in asked if isinstance(d, str) and domain_allowed(d, caps.web_domains)]
            if not kept:
                return Refused(
                    f"NanoClaw proxy: none of the domains this {kind[:100]} asks for is in the "
                    f"agent group '{group}''s web domain allowlist "
                    f"({', '.join(caps.web_domains)})."
                )
        else:
            kept = list(caps.web_domains)
        limited = {k: v for k, v in tool.items() if k != "blocked_domains"}
        limited["allowed_domains"] = kept
        return limited
    return tool


def _sources(value: Any, depth: int) -> Iterator[dict[str, Any]]:
    """Every ``source`` object of the content blocks under ``value`` (tool results nest)."""
    if depth > MAX_NESTING:
        yield {"type": "too-deep"}
        return
    if isinstance(value, list):
        for item in value:
            yield from _sources(item, depth + 1)
    elif isinstance(value, dict):
        source = value.get("source")
        if isinstance(source, dict):
            yield source
            yield from _sources(source.get("content"), depth + 1)  # a "content" document
        if value.get("type") == "container_upload":
            yield {"type": "container_upload"}
        yield from _sources(value.get("content"), depth + 1)


def _check_source(source: dict[str, Any], caps: ServerCapabilities, group: str) -> Refused | None:
    kind = source.get("type")
    if kind == "too-deep":
        return Refused("NanoClaw proxy: the request's content is nested too deeply.")
    if kind == "container_upload":
        if "code_execution" in caps.server_tools:
            return None
        return _off("uploading files to a code execution container", "code_execution", group)
    if kind == "file" and not any(b.startswith("files-api-") for b in caps.allowed_betas):
        return Refused(
            f"NanoClaw proxy: files of the account (source type 'file') are turned off for the "
            f"agent group '{group}'. The owner can allow the files API with: nanoclaw groups "
            f"config {group} --allow-beta files-api-2025-04-14"
        )
    if kind != "url":
        return None
    if not caps.web_fetch:
        return _off("content the model API downloads from a URL", "web_fetch", group)
    host = urlsplit(str(source.get("url", ""))).hostname or ""
    if caps.web_domains and not domain_allowed(host, caps.web_domains):
        return Refused(
            f"NanoClaw proxy: the URL's domain '{host[:100]}' is not in the agent group "
            f"'{group}''s web domain allowlist ({', '.join(caps.web_domains)})."
        )
    return None


def domain_allowed(domain: str, allowlist: tuple[str, ...]) -> bool:
    """``domain`` (or a URL-less host) is an allowlisted domain or a subdomain of one; a
    ``*.example.com`` entry allows subdomains only."""
    host = domain.strip().lower().rstrip(".")
    host = host.split("/", 1)[0]  # allowed_domains entries may carry a path
    for entry in allowlist:
        if entry.startswith("*."):
            if host.endswith(entry[1:]):
                return True
        elif host == entry or host.endswith("." + entry):
            return True
    return False
