"""Disk quotas: what a group's folder and a session's ``agent/`` folder may hold, how much they
hold (``walk``: a bounded walk through directory descriptors; ``project``: the kernel's project
quotas) and whether a wake may start a container (``gate``). The sweeper's side, which measures
running sessions and stops those over quota, is ``nanoclaw_sweeper/disk.py``.

docs/internals.md "Disk quotas" states the contract; docs/security.md the threat model.
"""

from __future__ import annotations

from typing import Final

# ``owner_notices.kind`` of the sweeper's disk notices: delivery's notice pass gives them a
# rate-limit window of their own (``nanoclaw_delivery.notify.notice_window_key``).
OWNER_NOTICE_KIND: Final = "disk"
