"""``nanoclaw groups config GROUP``: what the credential proxy lets a group's agents do.

Without options it shows the group's daily token budget and today's use, and its
server-side capabilities. Options change them:

- ``--budget N`` (tokens a day; 0 = unlimited) or ``--default-budget`` (the setting
  ``token_budget_daily`` again);
- ``--web-search/--no-web-search``, ``--web-fetch/--no-web-fetch`` (on by default),
  ``--web-domains a.com,b.org`` (only these domains and their subdomains; ``--any-domain``
  lifts it);
- ``--server-tool code_execution`` (repeatable; ``--no-server-tools`` clears them),
  ``--mcp-connector/--no-mcp-connector``, ``--allow-beta FLAG`` (repeatable;
  ``--no-betas`` clears them).

Web access is exfiltration by design (docs/security.md): whatever the agent read can leave
in a search query or a fetched URL. The owner decides per group.
"""

from __future__ import annotations

from typing import Any

import click

from nanoclaw_cli import refs
from nanoclaw_cli.context import CliContext, json_option, pass_context
from nanoclaw_cli.output import console, print_json, print_mapping, to_builtins
from nanoclaw_common.clock import now_ms
from nanoclaw_common.errors import NanoclawError
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.metering import TokenLedger, effective_budget, utc_day
from nanoclaw_common.store.proxy_policy import ProxyPolicies
from nanoclaw_common.store.rows import AgentGroup


def budget_report(
    store: CentralStore, settings: Settings, group: AgentGroup, now: int
) -> dict[str, Any]:
    """The group's budget (and where it comes from) and today's use."""
    config = store.get_container_config(group.id)
    own = config.token_budget_daily if config else None
    budget = effective_budget(own, settings.token_budget_daily)
    use = TokenLedger(store).day_use(group.id, utc_day(now), now=now)
    return {
        "group": group.folder,
        "budget_daily": budget,
        "budget_source": "group" if own is not None else "default (token_budget_daily)",
        "used_today": use.used,
        "reserved_now": use.reserved,
        "left_today": None if budget <= 0 else max(0, budget - use.total),
    }


def budget_line(report: dict[str, Any]) -> str:
    budget = report["budget_daily"]
    limit = "unlimited" if budget <= 0 else f"{budget:,}"
    held = f" (+{report['reserved_now']:,} in flight)" if report["reserved_now"] else ""
    return f"{report['group']}: {report['used_today']:,}{held} of {limit} tokens today"


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@click.command("config")
@click.argument("ref")
@click.option("--budget", type=click.IntRange(min=0), help="Daily token budget (0: unlimited).")
@click.option("--default-budget", is_flag=True, help="Use the setting token_budget_daily.")
@click.option("--web-search/--no-web-search", default=None, help="The web search server tool.")
@click.option("--web-fetch/--no-web-fetch", default=None, help="Web fetch, and URL sources.")
@click.option("--web-domains", help="Comma-separated domains web search and fetch may reach.")
@click.option("--any-domain", is_flag=True, help="Lift the web domain allowlist.")
@click.option("--server-tool", "server_tools", multiple=True, help="Allow a server tool family.")
@click.option("--no-server-tools", is_flag=True, help="Allow no further server tool family.")
@click.option("--mcp-connector/--no-mcp-connector", default=None, help="Requests' mcp_servers.")
@click.option("--allow-beta", "betas", multiple=True, help="Allow an anthropic-beta flag.")
@click.option("--no-betas", is_flag=True, help="Allow no extra anthropic-beta flag.")
@json_option
@pass_context
def config(ctx: CliContext, /, ref: str, **options: Any) -> None:
    """Show or change a group's token budget and server-side capabilities."""
    store = ctx.store()
    group = refs.agent_group(store, ref)
    if options["budget"] is not None and options["default_budget"]:
        raise click.ClickException("give --budget or --default-budget, not both")
    if options["budget"] is not None or options["default_budget"]:
        budget = None if options["default_budget"] else options["budget"]
        store.update_container_config(group.id, token_budget_daily=budget)
    changes = _capability_changes(options)
    policies = ProxyPolicies(store)
    if changes:
        try:
            policies.update(group.id, **changes)
        except NanoclawError as exc:
            raise click.ClickException(str(exc)) from None
    report = budget_report(store, ctx.settings, group, now_ms())
    report.update(to_builtins(policies.get(group.id)))
    if ctx.as_json:
        print_json(report)
        return
    shown = dict(report)
    for name in ("web_domains", "server_tools", "allowed_betas"):
        shown[name] = ", ".join(report[name]) or ("any" if name == "web_domains" else "-")
    print_mapping(shown, title=f"Agent group {group.folder}")
    if report["web_search"] or report["web_fetch"]:
        console.print(
            "Web access is on: what the agent read can leave through a search or a fetched "
            "URL (docs/security.md)."
        )


def _capability_changes(options: dict[str, Any]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for name in ("web_search", "web_fetch", "mcp_connector"):
        if options[name] is not None:
            changes[name] = options[name]
    if options["web_domains"] is not None and options["any_domain"]:
        raise click.ClickException("give --web-domains or --any-domain, not both")
    if options["web_domains"] is not None:
        domains = _csv(options["web_domains"])
        if not domains:
            raise click.ClickException("--web-domains needs at least one domain")
        changes["web_domains"] = domains
    elif options["any_domain"]:
        changes["web_domains"] = []
    if options["no_server_tools"]:
        changes["server_tools"] = []
    elif options["server_tools"]:
        changes["server_tools"] = list(options["server_tools"])
    if options["no_betas"]:
        changes["allowed_betas"] = []
    elif options["betas"]:
        changes["allowed_betas"] = list(options["betas"])
    return changes
