"""How the CLI prints: rich tables for people, JSON for scripts (``--json``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def to_builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)


def print_json(value: Any) -> None:
    # Plain print, not rich: scripts parse this, and rich would wrap and colour it.
    print(msgspec.json.format(msgspec.json.encode(to_builtins(value)), indent=2).decode())


def print_table(rows: Sequence[Any], columns: Sequence[str] | None = None, title: str = "") -> None:
    """A table of structs or dicts; ``columns`` picks and orders the fields."""
    records = [to_builtins(r) for r in rows]
    if not records:
        console.print(f"{title + ': ' if title else ''}(no rows)")
        return
    names = list(columns or records[0].keys())
    table = Table(title=title or None, show_lines=False)
    for name in names:
        table.add_column(name, overflow="fold")
    for record in records:
        table.add_row(*("" if record.get(n) is None else str(record.get(n)) for n in names))
    console.print(table)


def emit(
    rows: Sequence[Any], as_json: bool, columns: Sequence[str] | None = None, title: str = ""
) -> None:
    if as_json:
        print_json(list(rows))
    else:
        print_table(rows, columns, title)


def print_mapping(mapping: dict[str, Any], title: str = "") -> None:
    table = Table(title=title or None, show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in mapping.items():
        table.add_row(key, "" if value is None else str(value))
    console.print(table)
