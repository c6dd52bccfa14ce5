"""The parts of ``central.db`` the proxy uses, and nothing else: it looks up tokens, meters
tokens against each group's budget, and reads each group's capabilities, name and config. It
never sees sessions, people, cards or the rest of ``CentralStore``."""

from __future__ import annotations

from pathlib import Path

from nanoclaw_common.store.central import Entities, open_central
from nanoclaw_common.store.metering import TokenLedger
from nanoclaw_common.store.proxy_policy import ProxyPolicies
from nanoclaw_common.store.proxy_tokens import ProxyTokens
from nanoclaw_common.store.sqlite import Database, Mode


class ProxyCentral:
    """The proxy's parts, on one connection."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.tokens = ProxyTokens(self.db)
        self.ledger = TokenLedger(self.db)
        self.policies = ProxyPolicies(self.db)
        self.groups = Entities(self.db)  # read only: a group's name, folder and budget

    @classmethod
    def open(cls, path: Path) -> ProxyCentral:
        """On a connection whose schema is brought up to date first."""
        return cls(open_central(path))

    @classmethod
    def connect(cls, path: Path) -> ProxyCentral:
        """On a plain connection, for the doors' threads: the proxy brought the schema up to
        date before its loop started."""
        return cls(Database(path, Mode.CENTRAL))

    def close(self) -> None:
        """Close the connection."""
        self.db.close()
