"""Session folders and their projections, shared by every host program that wakes a session."""

from __future__ import annotations

import contextlib
import os
import stat

from nanoclaw_common import privacy
from nanoclaw_common.hostfs import Dir, UnsafePath
from nanoclaw_common.paths import Layout, SessionPaths
from nanoclaw_common.store import CentralStore, InboundStore, OutboundStore
from nanoclaw_common.store.central import Entities
from nanoclaw_common.store.rows import DestinationEntry, Routing, Session

#: What a session's ``inbound.db`` projects from the central DB.
Projections = tuple[list[DestinationEntry], Routing]

# In agent/, the container's folder. The host creates them once; what the container does with
# them afterwards is its own business (a link or a file there is left alone, never followed).
AGENT_FOLDERS = ("outbox", "state")


def ensure_session_files(layout: Layout, session: Session) -> SessionPaths:
    """Create what is missing of the session folder: the folder itself, ``inbox/``,
    ``agent/`` (the container's writable part) with ``outbox/`` and ``state/``, and both
    DBs. Idempotent, and cheap when everything exists (no database is opened for writing
    but ``inbound.db``; ``outbound.db``, the container's file, only when it is missing).

    Every step goes through directory descriptors (``hostfs``): ``agent/`` may hold anything
    the container planted there. Modes follow ``privacy``: what the container reads
    (the folder, ``inbox/``, ``inbound.db``) is shared with it alone; the rest is private."""
    paths = layout.session(session.agent_group_id, session.id)
    group_dir = paths.root.parent
    group_dir.mkdir(parents=True, exist_ok=True, mode=privacy.PRIVATE_DIR)
    shared = privacy.agent_readable_mode(folder=True)
    with Dir.trusted(group_dir) as sessions, sessions.make_dir(session.id, mode=shared) as root:
        privacy.share_with_agent(root.fd, folder=True)
        with root.make_dir("inbox", mode=shared) as inbox:
            privacy.share_with_agent(inbox.fd, folder=True)
        with root.make_dir("agent", mode=privacy.PRIVATE_DIR) as agent:
            for name in AGENT_FOLDERS:
                with contextlib.suppress(UnsafePath):  # the container's to spoil
                    agent.make_dir(name, mode=privacy.PRIVATE_DIR).close()
            _create_empty(agent, "outbound.db", shared=False)
            # Empty: made just now, or by a host that died before the schema went in.
            info = agent.lstat("outbound.db")
            new_outbound = info is not None and stat.S_ISREG(info.st_mode) and not info.st_size
        if not _create_empty(root, "inbound.db", shared=True):
            # An older version's 0644 file: shared with the container alone from now on.
            fd, _size = root.open_regular("inbound.db", single_link=False)
            try:
                privacy.share_with_agent(fd, folder=False)
            finally:
                os.close(fd)
    InboundStore(paths.inbound_db).close()
    if new_outbound:
        OutboundStore(paths.outbound_db, container_file=True).close()
    return paths


def _create_empty(folder: Dir, name: str, *, shared: bool) -> bool:
    """Create an empty file (SQLite takes it as a new database) with its final mode and
    owner, so the journal SQLite makes beside it inherits them; False when ``name`` exists
    (whatever it is: it is not opened here)."""
    try:
        fd = folder.create_fd(
            name, mode=privacy.agent_readable_mode(folder=False) if shared else privacy.PRIVATE_FILE
        )
    except FileExistsError:
        return False
    try:
        if shared:
            privacy.share_with_agent(fd, folder=False)
    finally:
        os.close(fd)
    return True


def session_routing(central: Entities, session: Session) -> Routing:
    """The session's default reply address: its chat (and thread), or nothing."""
    if session.messaging_group_id is None:
        return Routing(None, None, None)
    chat = central.get_messaging_group(session.messaging_group_id)
    if chat is None:
        return Routing(None, None, None)
    return Routing(chat.channel_type, chat.platform_id, session.thread_id)


def projections(central: CentralStore, session: Session) -> Projections:
    """The session's ``destinations`` and ``session_routing`` as the central DB has them."""
    return central.resolve_destinations(session.agent_group_id), session_routing(central, session)


def write_projections(
    layout: Layout, session: Session, wanted: Projections, inbound: InboundStore | None = None
) -> None:
    """Write ``wanted`` (``projections``) into the session's ``inbound.db``: the session-DB
    half of a refresh, for callers that read the central half through a door."""
    paths = ensure_session_files(layout, session)
    store = inbound or InboundStore(paths.inbound_db)
    try:
        destinations, routing = wanted
        store.replace_destinations(destinations)
        store.set_routing(routing)
    finally:
        if inbound is None:
            store.close()


def refresh_projections(
    central: CentralStore, layout: Layout, session: Session, inbound: InboundStore | None = None
) -> None:
    """Rewrite the session's ``destinations`` and ``session_routing`` from the central DB.
    Called before every wake and after destination changes."""
    write_projections(layout, session, projections(central, session), inbound)
