"""The parts of ``central.db`` the proxy uses, and nothing else: it looks up tokens, meters
tokens against each group's budget, and reads each group's capabilities, name and config. It
never sees sessions, people, cards or the rest of ``CentralStore``."""

from __future__ import annotations

from pathlib import Path

from nanoclaw_common.store.central import Entities, open_central
from nanoclaw_common.store.metering import TokenLedger
from nanoclaw_common.store.proxy_policy import ProxyPolicies
from nanoclaw_common.store.proxy_tokens import ProxyTokens


class ProxyCentral:
    """The proxy's parts, on one connection (opened with the schema brought up to date)."""

    def __init__(self, path: Path) -> None:
        self.db = open_central(path)
        self.tokens = ProxyTokens(self.db)
        self.ledger = TokenLedger(self.db)
        self.policies = ProxyPolicies(self.db)
        self.groups = Entities(self.db)  # read only: a group's name, folder and budget

    def close(self) -> None:
        """Close the connection."""
        self.db.close()
