"""Disk quotas: what a group's folder and a session's ``agent/`` folder may hold, how much they
hold (``walk``: a bounded walk through directory descriptors; ``project``: the kernel's project
quotas) and whether a wake may start a container (``gate``). The sweeper's side, which measures
running sessions and stops those over quota, is ``nanoclaw_sweeper/disk.py``.

docs/internals.md "Disk quotas" states the contract; docs/security.md the threat model.
"""
