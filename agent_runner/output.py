"""Parsing the agent's text output (upstream-container.md §3.5).

Only ``<message to="name">…</message>`` blocks are sent. Everything else is scratchpad:
``<internal>…</internal>`` spans are removed from it, and what remains is logged, never sent.
Which destinations are known, and what happens to the blocks, is the caller's business.
"""

from __future__ import annotations

import re

import msgspec

_BLOCK = re.compile(r'<message\s+to="([^"]+)"\s*>([\s\S]*?)</message>')
_INTERNAL = re.compile(r"<internal>[\s\S]*?</internal>")


class Block(msgspec.Struct, frozen=True):
    to: str
    body: str  # trimmed


class ParsedOutput(msgspec.Struct, frozen=True):
    blocks: list[Block]
    scratchpad: str  # text outside the blocks, <internal> removed, trimmed


def parse_output(text: str) -> ParsedOutput:
    blocks = [Block(m.group(1), m.group(2).strip()) for m in _BLOCK.finditer(text)]
    outside = _BLOCK.sub("", text)
    scratchpad = _INTERNAL.sub("", outside).strip()
    return ParsedOutput(blocks, scratchpad)


def split_text(text: str, limit: int) -> list[str]:
    """Cut text longer than one row may hold, at paragraph or line boundaries when possible
    (delivery splits again at the platform's own, smaller, limit)."""
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = rest.rfind("\n\n", 0, limit)
        if cut <= 0:
            cut = rest.rfind("\n", 0, limit)
        if cut <= 0:
            cut = limit
        parts.append(rest[:cut])
        rest = rest[cut:].lstrip("\n")
    parts.append(rest)
    return parts
