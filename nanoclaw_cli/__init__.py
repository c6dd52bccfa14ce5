"""The ``nanoclaw`` admin CLI. Each command group lives in its own module and is added here."""

from __future__ import annotations

import sys

import click

from nanoclaw_cli.chat import chat
from nanoclaw_cli.chats import chats
from nanoclaw_cli.context import CliContext
from nanoclaw_cli.deliveries import deliveries
from nanoclaw_cli.disk import disk
from nanoclaw_cli.dropped import dropped
from nanoclaw_cli.groups import groups
from nanoclaw_cli.quarantine import quarantine
from nanoclaw_cli.sandbox import doctor, image, podman_service
from nanoclaw_cli.service import ctl, down, up
from nanoclaw_cli.setup import init
from nanoclaw_cli.status import status
from nanoclaw_cli.users import members, roles, users
from nanoclaw_cli.wirings import wirings
from nanoclaw_common.errors import NanoclawError
from nanoclaw_common.logs import setup_logging
from nanoclaw_common.settings import load_from_process
from nanoclaw_common.untrusted import escaped

# Passed as the root context's ``obj`` by ``main()`` only: the console script configures
# logging (stderr, secrets masked); tests that invoke ``cli`` in-process keep theirs.
_FROM_MAIN = object()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", envvar="NANOCLAW_HOME", help="Data folder (default ./data).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_context
def cli(click_ctx: click.Context, home: str | None, as_json: bool) -> None:
    """NanoClaw: a self-hosted assistant; chats reach Claude agents in Podman containers."""
    try:
        settings = load_from_process(home=home)
    except NanoclawError as exc:
        raise click.ClickException(str(exc)) from None
    if click_ctx.obj is _FROM_MAIN:
        setup_logging("nanoclaw", settings.log_level, settings.secrets())
    ctx = CliContext(settings=settings, as_json=as_json)
    click_ctx.obj = ctx
    click_ctx.call_on_close(ctx.close)


cli.add_command(init)
cli.add_command(chat)
for command in (groups, chats, wirings, users, roles, members, dropped, quarantine):
    cli.add_command(command)
cli.add_command(status)
cli.add_command(deliveries)
cli.add_command(disk)
cli.add_command(image)
cli.add_command(doctor)
cli.add_command(podman_service)
cli.add_command(up)
cli.add_command(down)
cli.add_command(ctl)


def main() -> None:
    try:
        cli(standalone_mode=True, obj=_FROM_MAIN)
    except NanoclawError as exc:
        click.echo(f"error: {escaped(exc)}", err=True)
        sys.exit(1)
