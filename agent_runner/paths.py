"""Where the runner finds things. In a container these are the mounts of
``nanoclaw_common.paths.CONTAINER``; every one can be overridden (flags or environment in
``main()``), so tests and benchmarks run the same code as a host process against a temporary
session folder."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from nanoclaw_common.paths import CONTAINER, SessionPaths


@dataclass(frozen=True)
class RunnerPaths:
    session: SessionPaths  # /session (read-only) with agent/ (read-write)
    workspace: Path  # the agent group's folder
    proxy_socket: Path

    @classmethod
    def container(cls) -> RunnerPaths:
        return cls(CONTAINER.session, CONTAINER.workspace, CONTAINER.proxy_socket)

    @property
    def runner_json(self) -> Path:
        return self.session.root / "runner.json"

    @property
    def conversation_file(self) -> Path:
        return self.session.state_dir / "conversation.json"

    @property
    def archive_dir(self) -> Path:
        """Transcripts of compacted or cleared conversations, in the group's folder."""
        return self.workspace / "conversations"

    @property
    def memory_file(self) -> Path:
        return self.workspace / "AGENT.md"


def write_replacing(path: Path, data: bytes, *, fsync: bool = False) -> None:
    """Write ``path`` whole through ``<name>.tmp`` and a rename. The folders the runner
    writes to (``agent/``, the workspace) are the agent's to write as well: whatever it may
    have planted at the temporary name goes first, and the file is then created anew without
    following a link, so a FIFO there cannot hang the runner and a symlink cannot steer the
    write elsewhere."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)
