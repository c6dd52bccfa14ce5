"""What routing reads from ``central.db``, cached between changes.

Every event needs the chat, its wirings, whether each group exists, what the sender may do
and which session is open: about ten small queries, which made the central DB the router's
bottleneck. These facts change rarely (an admin command, an approval), so they are cached
and the whole cache is dropped when ``PRAGMA data_version`` moves: ``AsyncCentral.version``,
on the loop and without a thread hop, moves whenever any connection commits (the router's
own writer too). A path that changes facts the cache holds also calls ``clear()`` or stores
what it made (a new chat, a new session), because the event that made it may plan on before
the next ``refresh``.

``gather`` answers an event from the cache alone when it can (no thread hop, no query); when
any fact is missing it reads all of the event's facts in one call on a reader thread
(``load``) and keeps them. The same function (``describe``) turns either source into the
``EventFacts`` that planning takes, so the cache can never answer differently from the store.
"""

from __future__ import annotations

from typing import Protocol

from nanoclaw_common.messages import InboundEvent
from nanoclaw_common.states import EngageMode, IgnoredMessagePolicy, SessionMode
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.async_central import AsyncCentral
from nanoclaw_common.store.rows import (
    MessagingGroup,
    PendingChannelApproval,
    Session,
    User,
    Wiring,
)
from nanoclaw_router.routing import EventFacts, WiringView, effective_session_mode

ChatKey = tuple[str, str]
AccessKey = tuple[str, str]
SessionKey = tuple[str, str | None, str | None, bool]


class Missing(Exception):
    """A fact the cache does not hold (``Cached`` raises it; ``gather`` then reads them all)."""


class Lookup(Protocol):
    """Where ``describe`` reads facts: the cache (``Cached``) or the store (``Loaded``)."""

    def chat(self, channel_type: str, platform_id: str) -> MessagingGroup | None: ...
    def wirings(self, chat_id: str) -> list[Wiring]: ...
    def group_exists(self, agent_group_id: str) -> bool: ...
    def access(self, user_id: str, agent_group_id: str) -> tuple[bool, bool]: ...
    def session(self, key: SessionKey) -> Session | None: ...
    def user_name(self, user_id: str) -> tuple[bool, str | None]: ...


def session_key(
    agent_group_id: str, chat_id: str | None, thread_id: str | None, *, newest: bool
) -> SessionKey:
    """The active session for exactly (group, chat, thread), or with ``newest`` the group's
    newest active session (agent-shared)."""
    return (agent_group_id, None if newest else chat_id, None if newest else thread_id, newest)


def delivery_session_key(
    wiring: Wiring, chat: MessagingGroup, thread_id: str | None, threads_supported: bool
) -> SessionKey:
    """The key of the session a delivery through ``wiring`` goes to (its effective mode)."""
    mode = effective_session_mode(wiring, chat, threads_supported)
    thread = thread_id if mode == SessionMode.PER_THREAD else None
    return session_key(
        wiring.agent_group_id, chat.id, thread, newest=mode == SessionMode.AGENT_SHARED
    )


def describe(event: InboundEvent, threads_supported: bool, look: Lookup) -> EventFacts:
    """The facts planning needs about ``event``, read through ``look``."""
    chat = look.chat(event.channel_type, event.platform_id)
    if chat is None:
        return EventFacts(None, [], threads_supported)
    views = []
    for wiring in look.wirings(chat.id):
        group = wiring.agent_group_id
        exists = look.group_exists(group)
        active = False
        per_thread = threads_supported and wiring.session_mode != SessionMode.AGENT_SHARED
        # Needed for mention-sticky, and for accumulating into a thread (context never
        # opens a thread's session: see routing.plan_route).
        wanted = wiring.engage_mode == EngageMode.MENTION_STICKY or (
            per_thread
            and event.thread_id is not None
            and wiring.ignored_message_policy == IgnoredMessagePolicy.ACCUMULATE
        )
        if exists and wanted and chat.is_group:
            thread = event.thread_id if per_thread else None
            active = look.session(session_key(group, chat.id, thread, newest=False)) is not None
        if exists:
            # Read now so that the commit finds it in the cache (a hit needs no query).
            look.session(delivery_session_key(wiring, chat, event.thread_id, threads_supported))
        known, admin = look.access(event.sender_id, group) if exists else (False, False)
        views.append(
            WiringView(
                wiring=wiring,
                group_exists=exists,
                sender_known=known,
                sender_admin=admin,
                active_session=active,
            )
        )
    current = False
    if views:
        stored, name = look.user_name(event.sender_id)
        # The upsert keeps a stored name when the event has none, so that is current too.
        current = stored and (not event.sender_name or name == event.sender_name)
    return EventFacts(chat, views, threads_supported, current)


class Loaded:
    """Facts read from the store, remembered so the cache can keep them."""

    def __init__(self, central: CentralStore) -> None:
        self._central: CentralStore | None = central
        self.chats: dict[ChatKey, MessagingGroup | None] = {}
        self.wiring_lists: dict[str, list[Wiring]] = {}
        self.groups: dict[str, bool] = {}
        self.rights: dict[AccessKey, tuple[bool, bool]] = {}
        self.sessions: dict[SessionKey, Session | None] = {}
        self.users: dict[str, str | None] = {}

    @property
    def central(self) -> CentralStore:
        assert self._central is not None, "a Loaded is read once"
        return self._central

    def done(self) -> Loaded:
        """Forget the store: what was read is handed over, the connection is not."""
        self._central = None
        return self

    def chat(self, channel_type: str, platform_id: str) -> MessagingGroup | None:
        found = self.central.find_messaging_group(channel_type, platform_id)
        self.chats[(channel_type, platform_id)] = found
        return found

    def wirings(self, chat_id: str) -> list[Wiring]:
        found = self.wiring_lists[chat_id] = self.central.list_wirings(chat_id)
        return found

    def group_exists(self, agent_group_id: str) -> bool:
        found = self.groups[agent_group_id] = (
            self.central.get_agent_group(agent_group_id) is not None
        )
        return found

    def access(self, user_id: str, agent_group_id: str) -> tuple[bool, bool]:
        found = self.rights[(user_id, agent_group_id)] = (
            self.central.can_access_agent_group(user_id, agent_group_id),
            self.central.has_admin_privilege(user_id, agent_group_id),
        )
        return found

    def session(self, key: SessionKey) -> Session | None:
        agent_group_id, chat_id, thread_id, newest = key
        if newest:
            found = self.central.newest_active_session(agent_group_id)
        else:
            found = self.central.find_active_session(agent_group_id, chat_id, thread_id)
        self.sessions[key] = found
        return found

    def user_name(self, user_id: str) -> tuple[bool, str | None]:
        user = self.central.get_user(user_id)
        if user is None:
            return False, None
        self.users[user_id] = user.display_name
        return True, user.display_name


def load(
    central: CentralStore, event: InboundEvent, threads_supported: bool
) -> tuple[EventFacts, Loaded]:
    """Read every fact of ``event`` from the store."""
    loaded = Loaded(central)
    facts = describe(event, threads_supported, loaded)
    return facts, loaded.done()


def awaiting_names(central: CentralStore) -> list[PendingChannelApproval]:
    return [a for a in central.list_channel_approvals() if a.awaiting_name]


class CentralFacts:
    def __init__(self, central: AsyncCentral) -> None:
        self.central = central
        self._version = -1
        self._generation = 0  # moves with every clear()
        self.hits = 0
        self.clear()

    def clear(self) -> None:
        self._generation += 1
        self._chats: dict[ChatKey, MessagingGroup | None] = {}
        self._wirings: dict[str, list[Wiring]] = {}
        self._groups: dict[str, bool] = {}
        self._access: dict[AccessKey, tuple[bool, bool]] = {}
        self._sessions: dict[SessionKey, Session | None] = {}
        self._awaiting: list[PendingChannelApproval] | None = None
        self.users: dict[str, str | None] = {}  # user id -> the display name its row holds

    def refresh(self) -> None:
        """Drop everything if central.db changed since the last look."""
        version = self.central.version()
        if version != self._version:
            self.clear()
            self._version = version

    async def gather(self, event: InboundEvent, threads_supported: bool) -> EventFacts:
        """The facts of ``event``: from the cache when it holds them all, else read."""
        try:
            facts = describe(event, threads_supported, Cached(self))
        except Missing:
            generation = self._generation
            facts, loaded = await self.central.read(load, event, threads_supported)
            # Kept only if nothing changed while they were read (a commit by anyone, or a
            # clear() of ours): facts read before a change must not outlive it.
            self.refresh()
            if self._generation == generation:
                self.keep(loaded)
            return facts
        self.hits += 1
        return facts

    def keep(self, loaded: Loaded) -> None:
        self._chats.update(loaded.chats)
        self._wirings.update(loaded.wiring_lists)
        self._groups.update(loaded.groups)
        self._access.update(loaded.rights)
        self._sessions.update(loaded.sessions)
        self.users.update(loaded.users)

    def remember_chat(self, chat: MessagingGroup) -> None:
        self._chats[(chat.channel_type, chat.platform_id)] = chat

    def cached_session(self, key: SessionKey) -> Session | None:
        """The session under ``key`` if the cache knows it (``gather`` read it)."""
        return self._sessions.get(key)

    def remember_session(self, key: SessionKey, session: Session) -> None:
        self._sessions[key] = session

    def remember_user(self, user: User) -> None:
        """A user row the router just wrote."""
        self.users[user.id] = user.display_name

    async def awaiting_names(self) -> list[PendingChannelApproval]:
        """Registrations waiting for an approver to name a new agent."""
        if self._awaiting is not None:
            return self._awaiting
        generation = self._generation
        found = await self.central.read(awaiting_names)
        self.refresh()
        if self._generation == generation:
            self._awaiting = found
        return found


class Cached:
    """The cache as a ``Lookup``: raises ``Missing`` for anything it does not hold."""

    def __init__(self, facts: CentralFacts) -> None:
        self.facts = facts

    def chat(self, channel_type: str, platform_id: str) -> MessagingGroup | None:
        try:
            return self.facts._chats[(channel_type, platform_id)]
        except KeyError:
            raise Missing from None

    def wirings(self, chat_id: str) -> list[Wiring]:
        try:
            return self.facts._wirings[chat_id]
        except KeyError:
            raise Missing from None

    def group_exists(self, agent_group_id: str) -> bool:
        try:
            return self.facts._groups[agent_group_id]
        except KeyError:
            raise Missing from None

    def access(self, user_id: str, agent_group_id: str) -> tuple[bool, bool]:
        try:
            return self.facts._access[(user_id, agent_group_id)]
        except KeyError:
            raise Missing from None

    def session(self, key: SessionKey) -> Session | None:
        try:
            return self.facts._sessions[key]
        except KeyError:
            raise Missing from None

    def user_name(self, user_id: str) -> tuple[bool, str | None]:
        users = self.facts.users
        if user_id not in users:
            raise Missing
        return True, users[user_id]
