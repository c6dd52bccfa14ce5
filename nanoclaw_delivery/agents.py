"""Agents talking to agents: ``create_agent`` and agent-to-agent messages.

**What "admin only" means for create_agent, decided on the host.** Agents hold no roles;
people do. The runner sets a request's ``in_reply_to`` to the first row of the batch its turn
answers. The batch ends where the host says, never where the container says: at
``deliveries.inbound_seq``, the highest ``messages_in`` seq when delivery first recorded the
request (a message recorded after that cannot have prompted it). The request is applied only
if ``in_reply_to`` names a ``chat`` row of the same session at or below that end, and
**every** row from it to the end is either a note from the host or a chat message from a
user with admin privilege over the session's agent group (the owner, a global admin, or an
admin of that group). In words: between the admin's message the request cites and the moment
the host saw the request, only admins spoke. A request prompted by a member
(nanocoai/nanoclaw#2807: upstream trusted the container), by a task, by a note only, by a
webhook or by another agent is refused, and so is one where a member's message (or a task,
a webhook, an agent, a click) sits in the range beside an admin's (it could carry the
instruction).

The request's own seq plays no part (issue 8: with seq 13 between an owner's message 12 and
a member's 14, the old rule stopped the batch at 13 and created an agent on the member's
behalf). The cited row is the container's choice, but it must be a real admin message the
host recorded in this session, and everything after it up to the host's end counts: a
compromised container can cite the latest admin message, never hide a later member's one.
"""

from __future__ import annotations

import hashlib
import os

from nanoclaw_common import group_folders, privacy
from nanoclaw_common import messages as m
from nanoclaw_common.channels.base import OutgoingFile, card_fallback_text
from nanoclaw_common.errors import DecodeError, Refused
from nanoclaw_common.hostfs import Dir
from nanoclaw_common.messages import MAX_ATTACHMENT_BYTES
from nanoclaw_common.paths import Layout, SessionPaths, safe_component
from nanoclaw_common.sessions import (
    Projections,
    ensure_session_files,
    projections,
    write_projections,
)
from nanoclaw_common.states import DestinationType, SessionMode, SessionStatus
from nanoclaw_common.store import CentralStore, InboundStore, NewInbound
from nanoclaw_common.store.central import normalize_name
from nanoclaw_common.store.rows import AgentGroup, Session
from nanoclaw_common.untrusted import shown
from nanoclaw_delivery.acl import AGENT_CHANNEL, check_agent
from nanoclaw_delivery.files import stage_files
from nanoclaw_delivery.job import Job
from nanoclaw_delivery.notify import note_agent
from nanoclaw_delivery.outcome import Denied, Sent

_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def stable_id(prefix: str, seed: str, stamp_ms: int) -> str:
    """An id in the ``ids.new_id`` shape whose random part is derived from ``seed``: a re-run
    of the same row (after a crash) finds what the first run created instead of duplicating."""
    number = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big")
    tail = ""
    for _ in range(8):
        number, digit = divmod(number, 36)
        tail += _BASE36[digit]
    return f"{prefix}-{stamp_ms}-{tail}"


# -- create_agent ---------------------------------------------------------------------------


#: Rows a create_agent range may span; a longer one is refused rather than half checked.
MAX_RANGE_ROWS = 500


def _outsiders(central: CentralStore, senders: list[str], group: str) -> list[str]:
    return sorted({s for s in senders if not central.has_admin_privilege(s, group)})


async def requesting_admin(job: Job) -> str:
    """The admin who asked (raises ``Denied``; see the module docstring for the rule)."""
    reference = job.row.in_reply_to
    group = job.session.agent_group_id
    if not reference:
        raise Denied("create_agent is admin-only: the request answers no message")
    answered = job.inbound.get_message(reference)
    if answered is None or answered.kind != "chat":
        raise Denied("create_agent is admin-only: the request does not answer a person")
    recorded = job.inbound.get_delivery(job.row.id)
    end = recorded.inbound_seq if recorded and recorded.inbound_seq else job.inbound.max_seq()
    if answered.seq > end:
        raise Denied("create_agent is admin-only: it cites a message that came after it")
    batch = job.inbound.messages_between(answered.seq, end + 1, limit=MAX_RANGE_ROWS + 1)
    if len(batch) > MAX_RANGE_ROWS:
        raise Denied(
            f"create_agent is admin-only: more than {MAX_RANGE_ROWS} messages since the one"
            " it cites; ask again"
        )
    senders: list[str] = []
    for row in batch:
        try:
            content = m.decode_inbound_content(row.content)
        except DecodeError:
            raise Denied("create_agent is admin-only: an answered message is unreadable") from None
        if isinstance(content, m.ChatContent) and content.sender_id == "system":
            continue  # the host's own note
        if row.kind != "chat" or not isinstance(content, m.ChatContent):
            raise Denied(
                f"create_agent is admin-only: a {row.kind} row (#{row.seq}) came with the"
                " request, not only admins' messages"
            )
        senders.append(content.sender_id)
    if not senders:
        raise Denied("create_agent is admin-only: the request does not answer a person")
    outsiders = await job.deps.central.read(_outsiders, senders, group)
    if outsiders:
        raise Denied(
            f"create_agent is admin-only: {', '.join(shown(o) for o in outsiders[:5])} is not"
            f" an owner or admin of agent group {group}"
        )
    return senders[-1]


def _check_name(name: str) -> str:
    stripped = name.strip()
    if not stripped:
        raise Denied("create_agent: the name is empty", notify_owner=False)
    if any(bad in stripped for bad in ("/", "\\", "\x00")) or ".." in stripped:
        raise Denied(f"create_agent: name {name!r} looks like a path (path traversal refused)")
    return stripped


def _group(central: CentralStore, agent_group_id: str) -> AgentGroup | None:
    return central.get_agent_group(agent_group_id)


def _child(
    central: CentralStore,
    layout: Layout,
    source: AgentGroup,
    *,
    child_id: str,
    name: str,
    local_name: str,
    now: int,
) -> AgentGroup:
    """The agent group a ``create_agent`` row makes: found again on a re-run, else created
    (``Denied`` when the source already names another destination so)."""
    child = central.get_agent_group(child_id)
    if child is not None:
        return child
    if central.find_destination(source.id, local_name) is not None:
        raise Denied(
            f'create_agent: you already have a destination named "{local_name}"',
            notify_owner=False,
        )
    # A folder that no group uses and that nothing on disk has, created now: a folder left
    # by a removed group (and whatever its agent planted there) is never reused.
    folder = group_folders.claim_new_folder(layout, central, name)
    return central.create_agent_group(name, folder, id=child_id, now=now)


def _grants(
    central: CentralStore, source: AgentGroup, child: AgentGroup, local_name: str, now: int
) -> str:
    """Destinations both ways (idempotent); the child's name at the source."""
    name_at_source = _grant(central, source, child, local_name, now)
    _grant(central, child, source, "parent", now)
    return name_at_source


def _source_projections(
    central: CentralStore, agent_group_id: str
) -> list[tuple[Session, Projections]]:
    """Every active session of the group, with the projections it should now have."""
    return [
        (each, projections(central, each))
        for each in central.list_sessions(
            agent_group_id=agent_group_id, status=SessionStatus.ACTIVE
        )
    ]


async def create_agent(job: Job, action: m.CreateAgent) -> Sent:
    deps, session = job.deps, job.session
    central, layout = deps.central, deps.layout
    source = await central.read(_group, session.agent_group_id)
    if source is None:
        raise Denied("create_agent: the source agent group no longer exists", notify_owner=False)
    admin = await requesting_admin(job)
    name = _check_name(action.name)
    job.guard_texts(name, action.instructions or "")
    local_name = normalize_name(name)
    now = deps.clock()
    # Derived from the row and the host's record of it (not the row's own timestamp, which
    # the container wrote): a re-run after a crash finds the same group.
    recorded = job.inbound.get_delivery(job.row.id)
    first_seen = recorded.created_at_ms if recorded else job.row.timestamp_ms
    child_id = stable_id("ag", f"{session.id}:{job.row.id}", first_seen)
    child = await central.write(
        _child, layout, source, child_id=child_id, name=name, local_name=local_name, now=now
    )
    body = (
        action.instructions.strip() if action.instructions else "Keep notes here that should last."
    )
    try:
        group_folders.write_first_memory(layout, child.folder, f"# {child.name}\n\n{body}\n")
    except Refused as exc:
        raise Denied(f"create_agent: invalid folder path ({exc})") from None
    name_at_source = await central.write(_grants, source, child, local_name, deps.clock())
    for each, wanted in await central.read(_source_projections, source.id):
        write_projections(layout, each, wanted, job.inbound if each.id == session.id else None)
    await note_agent(
        deps,
        session,
        job.inbound,
        f"create-agent-{job.row.seq}",
        f'Agent "{name_at_source}" created (asked by {admin}). You can now message it with'
        f' <message to="{name_at_source}">...</message>.',
    )
    return Sent(child.id)


def _grant(
    central: CentralStore, owner: AgentGroup, target: AgentGroup, wanted: str, now: int
) -> str:
    """A destination from ``owner`` to ``target`` (idempotent); returns its local name."""
    for entry in central.list_destinations(owner.id):
        if entry.target_type == DestinationType.AGENT and entry.target_id == target.id:
            return entry.local_name
    name = central.unique_local_name(owner.id, wanted)
    central.add_destination(owner.id, name, DestinationType.AGENT, target.id, now=now)
    return name


# -- agent-to-agent -------------------------------------------------------------------------


def _landing(central: CentralStore, candidate: str | None, target: AgentGroup) -> Session | None:
    """The candidate session, if it is an active session of ``target``."""
    if candidate is None:
        return None
    found = central.get_session(candidate)
    if (
        found is not None
        and found.agent_group_id == target.id
        and found.status == SessionStatus.ACTIVE
    ):
        return found
    return None


def _shared_session(central: CentralStore, target: AgentGroup, now: int) -> Session:
    session, _ = central.resolve_session(target.id, None, None, SessionMode.AGENT_SHARED, now=now)
    return session


async def target_session(job: Job, target: AgentGroup) -> Session:
    """Where a message to ``target`` lands, so replies return to the conversation that asked:
    the session behind the message being answered, else the session of the newest message
    from ``target``, else the target group's newest active session (or a new one)."""
    candidate: str | None = None
    if job.row.in_reply_to:
        answered = job.inbound.get_message(job.row.in_reply_to)
        if answered is not None:
            candidate = answered.source_session_id
    if candidate is None:
        latest = job.inbound.latest_from(AGENT_CHANNEL, target.id)
        if latest is not None:
            candidate = latest.source_session_id
    found = await job.deps.central.read(_landing, candidate, target)
    if found is not None:
        return found
    # A read first: resolve_session takes the write lock even when the session exists.
    return await job.deps.central.write(_shared_session, target, job.deps.clock())


def _forward(files: list[OutgoingFile], paths: SessionPaths, a2a_id: str) -> list[m.Attachment]:
    """Copy verified (staged, host-private) files into the target session's
    ``inbox/<a2a id>/``: through directory descriptors, each file new (``O_EXCL``), readable
    by the target's container alone (``privacy``). A re-run after a crash finds the folder
    from the first attempt and starts it afresh."""
    if not files:
        return []
    safe_component(a2a_id, "message id")
    shared = privacy.agent_readable_mode(folder=True)
    attachments = []
    with Dir.trusted(paths.root) as root, root.make_dir("inbox", mode=shared) as inbox:
        inbox.remove(a2a_id)  # a half-written folder from an attempt that crashed
        with inbox.make_new_dir(a2a_id, mode=shared) as folder:
            privacy.share_with_agent(folder.fd, folder=True)
            for staged in files:
                with Dir.trusted(staged.path.parent) as staging:
                    size = staging.copy_to(
                        (staged.name,),
                        folder,
                        staged.name,
                        max_bytes=MAX_ATTACHMENT_BYTES,
                        mode=privacy.agent_readable_mode(folder=False),
                    )
                fd, _ = folder.open_regular(staged.name)
                try:
                    privacy.share_with_agent(fd, folder=False)
                finally:
                    os.close(fd)
                attachments.append(
                    m.Attachment(
                        name=staged.name,
                        kind="file",
                        size=size,
                        local_path=f"inbox/{a2a_id}/{staged.name}",
                    )
                )
            folder.sync()
    return attachments


def _agent_route(
    central: CentralStore, session: Session, target_id: str | None
) -> tuple[AgentGroup, AgentGroup | None]:
    """The target group after the ACL (``Denied`` otherwise) and the sending group."""
    return check_agent(central, session, target_id), central.get_agent_group(session.agent_group_id)


async def send_to_agent(job: Job, content: m.ChatOperation) -> Sent:
    deps, session, row = job.deps, job.session, job.row
    if not isinstance(content, m.SendText | m.SendCard):
        raise Denied("only text, files and cards can be sent to an agent", notify_owner=False)
    target, source = await deps.central.read(_agent_route, session, row.platform_id)
    text = content.text if isinstance(content, m.SendText) else card_fallback_text(content)
    names = list(content.files) if isinstance(content, m.SendText) else []
    job.guard_texts(text, *names)
    files = stage_files(job.paths, row.id, names, job.staging)
    job.guard_files([f.path for f in files])
    limiter = deps.a2a_limiter
    assert limiter is not None
    # A message counts once, on its first attempt: a retry (a crash, a full disk) is the
    # same message and must not use up the pair's budget, or refuse itself.
    if job.attempt == 1 and not limiter.allow(session.agent_group_id, target.id, deps.clock()):
        raise Denied(
            f"rate limit: more than {limiter.limit} messages to agent group {target.id}"
            " within a minute (a loop?)"
        )
    landing = await target_session(job, target)
    paths = ensure_session_files(deps.layout, landing)
    a2a_id = f"a2a-{session.id}-{row.seq}"
    attachments = _forward(files, paths, a2a_id)
    now = deps.clock()
    inbound = InboundStore(paths.inbound_db)
    try:
        inbound.insert_message(
            NewInbound(
                id=a2a_id,
                content=m.ChatContent(
                    text=text,
                    sender_id=f"agent:{session.agent_group_id}",
                    sender_name=source.name if source else session.agent_group_id,
                    attachments=attachments,
                ),
                timestamp_ms=now,
                channel_type=AGENT_CHANNEL,
                platform_id=session.agent_group_id,  # the return path: reply to the sender
                source_session_id=session.id,
            ),
            now=now,
        )
        wanted = await deps.central.read(projections, landing)
        write_projections(deps.layout, landing, wanted, inbound)
    finally:
        inbound.close()
    # No wake from here: the row is due (trigger=1), so a running target sees it at once and
    # the sweeper wakes a stopped one on its next pass (docs/delivery.md, "Who wakes what").
    return Sent(a2a_id)
