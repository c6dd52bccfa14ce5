"""Session folders and their projections, shared by every host program that wakes a session."""

from __future__ import annotations

from nanoclaw_common.paths import Layout, SessionPaths
from nanoclaw_common.store import CentralStore, InboundStore, create_session_files
from nanoclaw_common.store.rows import Routing, Session


def ensure_session_files(layout: Layout, session: Session) -> SessionPaths:
    """Create the session folder, ``agent/`` (the container's writable part), ``inbox/``,
    ``outbox/`` and both DBs. Idempotent."""
    paths = layout.session(session.agent_group_id, session.id)
    for directory in (paths.root, paths.inbox, paths.agent_dir, paths.outbox, paths.state_dir):
        directory.mkdir(parents=True, exist_ok=True)
    create_session_files(paths.inbound_db, paths.outbound_db)
    return paths


def session_routing(central: CentralStore, session: Session) -> Routing:
    """The session's default reply address: its chat (and thread), or nothing."""
    if session.messaging_group_id is None:
        return Routing(None, None, None)
    chat = central.get_messaging_group(session.messaging_group_id)
    if chat is None:
        return Routing(None, None, None)
    return Routing(chat.channel_type, chat.platform_id, session.thread_id)


def refresh_projections(
    central: CentralStore, layout: Layout, session: Session, inbound: InboundStore | None = None
) -> None:
    """Rewrite the session's ``destinations`` and ``session_routing`` from the central DB.
    Called before every wake and after destination changes."""
    paths = ensure_session_files(layout, session)
    store = inbound or InboundStore(paths.inbound_db)
    try:
        store.replace_destinations(central.resolve_destinations(session.agent_group_id))
        store.set_routing(session_routing(central, session))
    finally:
        if inbound is None:
            store.close()
