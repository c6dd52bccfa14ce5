"""The sandbox: the only package that talks to Podman (docs/security.md, "Container
confinement").

- ``core``: ``Sandbox`` (wake / stop / running / orphans / group images and restarts);
- ``spec`` and ``mounts``: the container's flags and mounts, pure;
- ``settle``: a dead run's leftover claims (also used by the sweeper);
- ``ownership``: handing the writable folders to the container user;
- ``runtime``: our containers.conf (runc, lowered ulimits) and the doctor's probe;
- ``seccomp``: our seccomp profile (``seccomp.json``, package data, applied at every wake);
- ``confinement``: the doctor's check that the confinement is in force, in a real container;
- ``service``: the ``podman system service`` that podman-py talks to;
- ``images``: the agent image and per-group images.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nanoclaw_common.sandbox.core import ContainerInfo, Sandbox, StopOutcome

__all__ = ["ContainerInfo", "Sandbox", "StopOutcome"]


def __getattr__(name: str) -> object:
    # Lazy: podman-py costs ~0.2 s to import, and the CLI or the sweeper's settle import
    # should not pay it unless they use the Sandbox.
    if name in __all__:
        return getattr(importlib.import_module("nanoclaw_common.sandbox.core"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
