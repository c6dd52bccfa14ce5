"""What every CLI command needs: the settings, the layout, and a central store opened once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import click

from nanoclaw_common.paths import Layout
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore


@dataclass
class CliContext:
    settings: Settings
    as_json: bool = False
    _store: CentralStore | None = field(default=None, repr=False)

    @property
    def layout(self) -> Layout:
        return Layout(self.settings.home_path)

    def store(self) -> CentralStore:
        """The central store. Refuses (clearly) when ``nanoclaw init`` has not run."""
        if self._store is None:
            if not self.layout.central_db.exists():
                raise click.ClickException(
                    f"no database at {self.layout.central_db}; run `nanoclaw init` first"
                )
            self._store = CentralStore.open(self.layout.central_db)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


pass_context = click.make_pass_decorator(CliContext)


def json_option(func: Any) -> Any:
    """``--json`` on a subcommand (also accepted before the subcommand)."""

    def callback(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        if value:
            ctx.find_object(CliContext).as_json = True  # type: ignore[union-attr]
        return value

    return click.option(
        "--json",
        "json_flag",
        is_flag=True,
        expose_value=False,
        callback=callback,
        help="Print JSON instead of a table.",
    )(func)
