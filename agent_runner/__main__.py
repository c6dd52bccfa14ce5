"""``nanoclaw-agent-runner`` / ``python -m agent_runner``: harden the process, then run the
program (``app``).

The order matters and is why the program's imports wait: until ``forbid_dumps()`` runs, a
same-uid process could read this process's ``/proc/<pid>`` entries (its memory, its
descriptors), and the import of ``app`` takes ~0.15 s. After a re-exec (``shed``) the
heartbeat is touched before that import too, so the host sees no gap in the beat.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from agent_runner import hardening, reaper, shed


def main(argv: Sequence[str] | None = None) -> int:
    hardened = hardening.forbid_dumps()
    # Orphans of tool processes come to us, not to the container's init: a tool call's
    # detached children stay findable, and are killed when the call ends (reaper.py).
    reaper.become_subreaper()
    # Set only by our own re-exec, and taken out at once so that it reaches no child.
    heartbeat = os.environ.pop(shed.REEXEC_ENV, None)
    if heartbeat:
        # A failure is retried (and logged) by the Heartbeat thread in a moment.
        with contextlib.suppress(OSError):
            shed.touch_heartbeat(Path(heartbeat))
    from agent_runner.app import run  # noqa: PLC0415 (after the hardening, see above)

    return run(argv, resumed=heartbeat is not None, hardened=hardened)


if __name__ == "__main__":
    sys.exit(main())
