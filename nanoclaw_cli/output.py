"""How the CLI prints: rich tables for people, JSON for scripts (``--json``).

Much of what the CLI prints was chosen by someone else: platform chat ids and names,
strangers' names, an agent's outbound ids, a platform's error text. None of it may reach the
operator's terminal raw (an escape sequence rewrites the screen or the window title, a bidi
override reorders a line) or be read as rich markup (``[red]``, or ``[/]``, which raises).
So every string printed through ``console`` is plain text with control characters escaped
(``untrusted.escaped``), table cells are also capped (``untrusted.shown_text``), and JSON
output escapes the characters JSON itself leaves raw (DEL, C1, bidi and line separators).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

import msgspec
from rich.console import Console
from rich.table import Table
from rich.text import Text

from nanoclaw_common.untrusted import escaped, shown_text

# What JSON leaves unescaped but a terminal acts on. These occur only inside strings, where
# a \u escape is the same text to a JSON reader.
_JSON_UNSAFE: Final = re.compile(
    "[\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff]"
)


class SafeConsole(Console):
    """A rich console for values of unknown origin: a ``str`` is printed as plain text with
    control characters escaped, never as markup. To style, pass a ``Text`` built from
    escaped parts (``styled``)."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        safe = [Text(escaped(o)) if isinstance(o, str) else o for o in objects]
        super().print(*safe, **kwargs)


def styled(text: str, style: str) -> Text:
    """``text`` (escaped) in a rich style, e.g. ``styled(path, "bold")``."""
    return Text(escaped(text), style=style)


console = SafeConsole(highlight=False)
err_console = SafeConsole(stderr=True, highlight=False)


def to_builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)


def json_text(value: Any) -> str:
    """Indented JSON whose every character is safe on a terminal."""
    text = msgspec.json.format(msgspec.json.encode(to_builtins(value)), indent=2).decode()
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def print_json(value: Any) -> None:
    # Plain print, not rich: scripts parse this, and rich would wrap and colour it.
    print(json_text(value))


def _cell(value: Any) -> Text:
    """One table cell: a list is one escaped line per item, anything else one line."""
    if isinstance(value, list):
        return Text("\n".join(shown_text(item) for item in value))
    return Text("" if value is None else shown_text(value))


def print_table(rows: Sequence[Any], columns: Sequence[str] | None = None, title: str = "") -> None:
    """A table of structs or dicts; ``columns`` picks and orders the fields."""
    records = [to_builtins(r) for r in rows]
    if not records:
        console.print(f"{title + ': ' if title else ''}(no rows)")
        return
    names = list(columns or records[0].keys())
    table = Table(title=escaped(title) or None, show_lines=False)
    for name in names:
        table.add_column(escaped(name), overflow="fold")
    for record in records:
        table.add_row(*(_cell(record.get(n)) for n in names))
    console.print(table)


def emit(
    rows: Sequence[Any], as_json: bool, columns: Sequence[str] | None = None, title: str = ""
) -> None:
    if as_json:
        print_json(list(rows))
    else:
        print_table(rows, columns, title)


def print_mapping(mapping: dict[str, Any], title: str = "") -> None:
    table = Table(title=escaped(title) or None, show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in mapping.items():
        table.add_row(Text(escaped(key)), _cell(value))
    console.print(table)
