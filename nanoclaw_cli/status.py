"""``nanoclaw status``: where the data is, the schema version, and what exists."""

from __future__ import annotations

import click

from nanoclaw_cli.context import CliContext, json_option, pass_context
from nanoclaw_cli.deliveries import PROBLEMS, collect
from nanoclaw_cli.disk import mechanisms
from nanoclaw_cli.group_config import budget_line, budget_report
from nanoclaw_cli.output import print_json, print_mapping, to_builtins
from nanoclaw_common.clock import now_ms
from nanoclaw_common.disk.limits import human_bytes
from nanoclaw_common.disk.quotas import DiskQuotas
from nanoclaw_common.states import DeliveryStatus
from nanoclaw_common.store.disk import DiskLedger
from nanoclaw_common.store.quarantine import Quarantine

RECENT_PROBLEMS = 3


@click.command()
@json_option
@pass_context
def status(ctx: CliContext) -> None:
    """Show the database, schema version and counts."""
    store = ctx.store()
    report: dict[str, object] = {
        "home": str(ctx.layout.home),
        "database": str(ctx.layout.central_db),
        "schema_version": store.schema_version(),
        "install": ctx.settings.install,
        **to_builtins(store.counts()),
    }
    # Failed and denied deliveries are one of the three places a lost reply is reported.
    problems = collect(ctx, statuses=PROBLEMS, session_id=None, limit=10_000)
    report["failed_deliveries"] = sum(p.status == DeliveryStatus.FAILED for p in problems)
    report["denied_deliveries"] = sum(p.status == DeliveryStatus.DENIED for p in problems)
    # Sessions no host program serves any more (their files were unsafe): see
    # `nanoclaw quarantine list`.
    report["quarantined_sessions"] = len(Quarantine(store).ids())
    report["recent_delivery_problems"] = [
        f"{p.session_id} #{p.seq} {p.status}: {p.last_error or ''}"
        for p in problems[-RECENT_PROBLEMS:]
    ]
    # Each group's budget and today's use: a group that ran out is the first thing to see.
    now = now_ms()
    budgets = [budget_report(store, ctx.settings, g, now) for g in store.list_agent_groups()]
    report["token_budgets"] = budgets
    # Disk: which quota mechanism applies, free space against the floor, what is blocked.
    quotas = DiskQuotas(ctx.settings, ctx.layout)
    disk_quotas = {m.scope: f"{m.mechanism} ({m.reason})" for m in mechanisms(ctx.settings, quotas)}
    disk_blocks = [
        f"{b.scope}:{b.scope_id} {b.state}: {b.reason}" for b in DiskLedger(store).list_blocks()
    ]
    report["disk_quotas"] = disk_quotas
    report["disk_blocks"] = disk_blocks
    free = quotas.free()
    report["disk_free"] = (
        f"{'unknown' if free is None else human_bytes(free)}"
        f" (floor {human_bytes(quotas.floor_bytes)})"
    )
    if ctx.as_json:
        print_json(report)
    else:
        shown = dict(report)
        shown["recent_delivery_problems"] = report["recent_delivery_problems"] or "-"
        shown["token_budgets"] = [budget_line(b) for b in budgets] or "-"
        shown["disk_quotas"] = [f"{k}: {v}" for k, v in disk_quotas.items()]
        shown["disk_blocks"] = disk_blocks or "-"
        print_mapping(shown, title="NanoClaw status")  # a list: one line per item
