"""The environment for programs a test starts: the caller's, minus the variables that would
point them at the developer's own setup, plus the agent image under test.

``NANOCLAW_IMAGE`` survives the cleaning: a checkout that builds its image under another tag
(``NANOCLAW_IMAGE=localhost/nanoclaw-agent-x:latest nanoclaw image build``) runs its tests
against that image, so two checkouts on one machine never test each other's runner."""

from __future__ import annotations

import os
from typing import Final

from nanoclaw_common.settings import Settings
from nanoclaw_common.store.sqlite import STRICT_ENV

#: The agent image the tests run: ``NANOCLAW_IMAGE`` when set, else the default tag.
AGENT_IMAGE: Final = os.environ.get("NANOCLAW_IMAGE") or Settings().image


def clean_environ(*prefixes: str) -> dict[str, str]:
    """``os.environ`` without the variables starting with ``prefixes`` (``NANOCLAW_`` is
    always among them), with ``NANOCLAW_IMAGE`` set to ``AGENT_IMAGE`` and a central.db call
    on an event loop made an error (``store.sqlite.STRICT_ENV``)."""
    drop = ("NANOCLAW_", *prefixes)
    env = {key: value for key, value in os.environ.items() if not key.startswith(drop)}
    env["NANOCLAW_IMAGE"] = AGENT_IMAGE
    env[STRICT_ENV] = "1"
    return env
