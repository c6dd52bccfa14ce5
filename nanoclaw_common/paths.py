"""The filesystem layout (docs/architecture.md, "The files on disk"), on the host and inside
the container.

Every path built from outside input (a folder name, a session or message id) is checked to be
one safe component, so nothing can escape the data folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nanoclaw_common import privacy
from nanoclaw_common.errors import Refused
from nanoclaw_common.ids import is_safe_id


def safe_component(value: str, what: str) -> str:
    if not is_safe_id(value):
        raise Refused(f"unsafe {what} {value!r}")
    return value


@dataclass(frozen=True)
class SessionPaths:
    """One session's folder. On the host it is ``sessions/<group>/<session>/``; inside the
    container the same structure is mounted at ``/session`` (see ``CONTAINER``)."""

    root: Path

    @property
    def inbound_db(self) -> Path:
        return self.root / "inbound.db"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def agent_dir(self) -> Path:
        """The only session folder the container may write."""
        return self.root / "agent"

    @property
    def outbound_db(self) -> Path:
        return self.agent_dir / "outbound.db"

    @property
    def heartbeat(self) -> Path:
        return self.agent_dir / "heartbeat"

    @property
    def outbox(self) -> Path:
        return self.agent_dir / "outbox"

    @property
    def state_dir(self) -> Path:
        return self.agent_dir / "state"

    def inbox_for(self, message_id: str) -> Path:
        return self.inbox / safe_component(message_id, "message id")

    def outbox_for(self, message_out_id: str) -> Path:
        return self.outbox / safe_component(message_out_id, "outbound message id")


@dataclass(frozen=True)
class Layout:
    """The host's data folder."""

    home: Path

    @property
    def central_db(self) -> Path:
        return self.home / "central.db"

    @property
    def sessions_dir(self) -> Path:
        return self.home / "sessions"

    @property
    def groups_dir(self) -> Path:
        return self.home / "groups"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def proxy_socket(self) -> Path:
        """In a folder of its own: containers mount the folder, not the socket file. A bind
        mount of the file pins its inode, so after a proxy restart (a new socket) running
        containers would get "connection refused" until they restart."""
        return self.run_dir / "proxy" / "proxy.sock"

    @property
    def cli_socket(self) -> Path:
        return self.run_dir / "cli.sock"

    @property
    def podman_socket(self) -> Path:
        return self.run_dir / "podman.sock"

    @property
    def supervisor_socket(self) -> Path:
        return self.run_dir / "supervisor.sock"

    @property
    def alive_dir(self) -> Path:
        """Each program's proof of life, ``alive/<program>`` (``nanoclaw_common.alive``)."""
        return self.run_dir / "alive"

    @property
    def supervisor_pid(self) -> Path:
        return self.run_dir / "supervisord.pid"  # supervisord.conf's pidfile

    def session(self, agent_group_id: str, session_id: str) -> SessionPaths:
        return SessionPaths(
            self.sessions_dir
            / safe_component(agent_group_id, "agent group id")
            / safe_component(session_id, "session id")
        )

    def group_dir(self, folder: str) -> Path:
        """``groups/<folder>``, refusing anything that is not one plain component."""
        path = self.groups_dir / safe_component(folder, "group folder")
        if path.parent != self.groups_dir:
            raise Refused(f"group folder {folder!r} escapes {self.groups_dir}")
        return path

    @property
    def archive_dir(self) -> Path:
        """Where ``nanoclaw groups remove`` moves a group's folder (``archive/groups/``)."""
        return self.home / "archive"

    def ensure(self) -> None:
        """Create the folders, and keep the data folder private (privacy.py): an older
        version's 0755 folders and 0644 databases are tightened here, at every start."""
        for directory in (
            self.home,
            self.sessions_dir,
            self.groups_dir,
            self.run_dir,
            self.logs_dir,
        ):
            directory.mkdir(parents=True, exist_ok=True, mode=privacy.PRIVATE_DIR)
            privacy.make_private(directory, folder=True)
        for name in ("archive", "downloads"):
            privacy.make_private(self.home / name, folder=True)
        for suffix in ("", "-wal", "-shm", "-journal"):
            privacy.make_private(
                self.central_db.with_name(self.central_db.name + suffix), folder=False
            )


@dataclass(frozen=True)
class ContainerPaths:
    """Where the mounts land inside the agent container."""

    session: SessionPaths  # /session (read-only), /session/agent (read-write)
    workspace: Path  # the agent group's folder (read-write)
    proxy_socket: Path
    extra: Path  # allowlisted extra host folders go under here


CONTAINER = ContainerPaths(
    session=SessionPaths(Path("/session")),
    workspace=Path("/workspace"),
    proxy_socket=Path("/run/nanoclaw/proxy.sock"),
    extra=Path("/workspace/extra"),
)
