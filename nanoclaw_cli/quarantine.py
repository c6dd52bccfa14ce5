"""``nanoclaw quarantine``: sessions whose files a host program refused or that stalled one.

- ``quarantine list``: the session, the program that noticed, when and why;
- ``quarantine release SESSION``: serve the session again. Look at its ``agent/`` folder
  first: what was refused (a FIFO, a link) is still there unless you removed it, and the
  session will be quarantined again at the next read.
"""

from __future__ import annotations

import click

from nanoclaw_cli.context import CliContext, json_option, pass_context
from nanoclaw_cli.output import console, emit, print_json, to_builtins
from nanoclaw_common.store.quarantine import Quarantine


@click.group()
def quarantine() -> None:
    """Quarantined sessions: list, release."""


@quarantine.command("list")
@json_option
@pass_context
def list_quarantined(ctx: CliContext) -> None:
    """List quarantined sessions."""
    rows = [to_builtins(entry) for entry in Quarantine(ctx.store()).list()]
    emit(
        rows,
        ctx.as_json,
        ["session_id", "program", "quarantined_at_ms", "reason"],
        title="Quarantined sessions",
    )


@quarantine.command("release")
@click.argument("session_id")
@json_option
@pass_context
def release(ctx: CliContext, session_id: str) -> None:
    """Serve a quarantined session again."""
    released = Quarantine(ctx.store()).release(session_id)
    if ctx.as_json:
        print_json({"released": session_id if released else None})
    elif released:
        console.print(f"session {session_id} is served again")
    else:
        raise click.ClickException(f"session {session_id} is not quarantined")
