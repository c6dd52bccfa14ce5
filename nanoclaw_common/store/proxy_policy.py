"""Which server-side capabilities of the model API an agent group may use (columns of
``container_configs``, migration 0070). The proxy enforces them (``nanoclaw_proxy.capabilities``);
``nanoclaw groups config`` sets them. docs/security.md says why the default is what it is.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import msgspec

from nanoclaw_common.clock import now_ms
from nanoclaw_common.errors import NotFound, Refused
from nanoclaw_common.store.central.base import CentralPart

# Server tool families an owner may turn on besides web search and web fetch. Named by the
# prefix of the tool's ``type`` (``code_execution_20250825``).
KNOWN_SERVER_TOOLS: Final = frozenset(
    {"code_execution", "tool_search_tool", "web_search", "web_fetch"}
)
_DOMAIN: Final = re.compile(r"^(?:\*\.)?[a-z0-9](?:[a-z0-9-]{0,62})(?:\.[a-z0-9-]{1,63})*$")
_BETA: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
MAX_LIST: Final = 100


class ServerCapabilities(msgspec.Struct, frozen=True, kw_only=True):
    web_search: bool = True
    web_fetch: bool = True
    web_domains: tuple[str, ...] = ()  # empty: any domain
    server_tools: tuple[str, ...] = ()  # further families, e.g. ("code_execution",)
    mcp_connector: bool = False
    allowed_betas: tuple[str, ...] = ()


DEFAULT: Final = ServerCapabilities()


def normalize_domain(value: str) -> str:
    domain = value.strip().lower().rstrip(".")
    if not _DOMAIN.match(domain) or len(domain) > 253:
        raise Refused(f"not a domain name: {value!r}")
    return domain


def normalize_beta(value: str) -> str:
    flag = value.strip().lower()
    if not _BETA.match(flag):
        raise Refused(f"not an anthropic-beta flag: {value!r}")
    return flag


def _list(raw: str) -> tuple[str, ...]:
    try:
        value = json.loads(raw)
    except ValueError:
        return ()
    return tuple(str(item) for item in value) if isinstance(value, list) else ()


class ProxyPolicies(CentralPart):
    """Read and change a group's ``ServerCapabilities``."""

    def get(self, agent_group_id: str) -> ServerCapabilities:
        """The group's capabilities (the defaults for a group without a config row)."""
        found = self.db.one(
            "SELECT web_search, web_fetch, web_domains, server_tools, mcp_connector,"
            " allowed_betas FROM container_configs WHERE agent_group_id = ?",
            (agent_group_id,),
        )
        if found is None:
            return DEFAULT
        search, fetch, domains, tools, mcp, betas = found
        return ServerCapabilities(
            web_search=bool(search),
            web_fetch=bool(fetch),
            web_domains=_list(domains),
            server_tools=_list(tools),
            mcp_connector=bool(mcp),
            allowed_betas=_list(betas),
        )

    def update(
        self, agent_group_id: str, *, now: int | None = None, **changes: Any
    ) -> ServerCapabilities:
        """Set some of the fields of ``ServerCapabilities`` (validated; lists replaced)."""
        fields = set(ServerCapabilities.__struct_fields__)
        unknown = set(changes) - fields
        if unknown or not changes:
            raise Refused(f"cannot set capabilities {sorted(unknown) or '(none)'}")
        values: dict[str, Any] = {}
        for name, value in changes.items():
            if name in ("web_search", "web_fetch", "mcp_connector"):
                values[name] = 1 if value else 0
            elif name == "web_domains":
                values[name] = _encode(sorted({normalize_domain(v) for v in value}))
            elif name == "allowed_betas":
                values[name] = _encode(sorted({normalize_beta(v) for v in value}))
            else:
                families = sorted({str(v).strip().lower() for v in value})
                bad = [f for f in families if f not in KNOWN_SERVER_TOOLS]
                if bad:
                    raise Refused(
                        f"unknown server tool {', '.join(bad)}; known: "
                        f"{', '.join(sorted(KNOWN_SERVER_TOOLS))}"
                    )
                values[name] = _encode(
                    [f for f in families if f not in ("web_search", "web_fetch")]
                )
        assignments = ", ".join(f"{key} = ?" for key in values)
        with self.db.write():
            self.db.execute(
                f"UPDATE container_configs SET {assignments}, updated_at_ms = ?"
                " WHERE agent_group_id = ?",
                (*values.values(), now or now_ms(), agent_group_id),
            )
            if not self.db.changes():
                raise NotFound(f"no container config for agent group {agent_group_id}")
        return self.get(agent_group_id)


def _encode(values: list[str]) -> str:
    if len(values) > MAX_LIST:
        raise Refused(f"at most {MAX_LIST} entries")
    return json.dumps(values)
