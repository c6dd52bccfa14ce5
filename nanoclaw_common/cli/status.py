"""``nanoclaw status``: where the data is, the schema version, and what exists."""

from __future__ import annotations

import click

from nanoclaw_common.cli.context import CliContext, json_option, pass_context
from nanoclaw_common.cli.output import print_json, print_mapping, to_builtins


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
    if ctx.as_json:
        print_json(report)
    else:
        print_mapping(report, title="NanoClaw status")
