"""Chat operations (kind ``chat``): text with files, edit, reaction, question cards and
display cards, each sent through the destination channel's adapter after the ACL and the
leak guard passed.

A reply that takes several platform messages (a long text split into chunks, then one
message per file) is sent as **parts**, and every part the platform accepted is recorded
(``deliveries.chunks_sent``) before the next one is sent. A retry (a 429 on chunk 3) or a
restart resumes at the first part not accepted, so chunks 1 and 2 are never shown twice;
the first part's platform id is kept as the row's id.

Question cards are keyed on the host: the card's buttons carry ``aq-<hash of session and the
agent's question id>``, never the id the container chose, so an agent's card can never carry
the id of a host card (an install approval, a chat registration) and a click on it can only
ever answer the agent's own question. The answer still reaches the agent under its own id
(``pending_questions.agent_question_id``, which the router writes back).
"""

from __future__ import annotations

import functools
import hashlib

from nanoclaw_common import messages as m
from nanoclaw_common.channels.base import ChannelAdapter, OutgoingFile, card_fallback_text
from nanoclaw_common.diskfull import until_written
from nanoclaw_common.errors import DecodeError, RetryLater
from nanoclaw_common.faults import Fact
from nanoclaw_common.states import DeliveryStatus
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.rows import PendingQuestion
from nanoclaw_delivery.acl import ChatAddress, route_chat
from nanoclaw_delivery.files import stage_files
from nanoclaw_delivery.job import Job
from nanoclaw_delivery.outcome import Denied, Sent
from nanoclaw_delivery.text import split_text, truncate

Part = tuple[str, list[OutgoingFile] | None]


async def send_chat(job: Job, content: m.ChatOperation) -> Sent:
    if job.route is not None:
        address, refusal = await job.route
    else:
        address, refusal = await job.deps.central.read(route_chat, job.session, job.row)
    # The thread id may come from the row (the container): it goes to the platform too.
    job.guard_texts(address.thread_id)
    if refusal is not None:
        raise refusal
    adapter = job.adapter(address.channel_type)
    if isinstance(content, m.SendText):
        return await _send_text(job, adapter, address, content)
    if isinstance(content, m.EditMessage):
        job.guard_texts(content.text, content.message_id)
        target = _platform_message_id(job, content.message_id, own_only=True)
        text = truncate(content.text, adapter.text_limit)
        await adapter.edit_text(address.platform_id, address.thread_id, target, text)
        return Sent(target)
    if isinstance(content, m.AddReaction):
        job.guard_texts(content.emoji, content.message_id)
        target = _platform_message_id(job, content.message_id)
        await adapter.add_reaction(address.platform_id, address.thread_id, target, content.emoji)
        return Sent(target)
    if isinstance(content, m.AskQuestion):
        return await _send_question(job, adapter, address, content)
    return await _send_card(job, adapter, address, content)


async def _send_text(
    job: Job, adapter: ChannelAdapter, address: ChatAddress, content: m.SendText
) -> Sent:
    job.guard_texts(content.text, *content.files)
    chunks = split_text(content.text, adapter.text_limit)
    files = stage_files(job.paths, job.row.id, list(content.files), job.staging)
    job.guard_files([f.path for f in files])
    if not chunks and not files:
        raise Denied("empty message: no text and no files", notify_owner=False)
    # Text first, then one message per file: each is a part of its own, so a failed upload
    # of file 2 is retried alone.
    parts: list[Part] = [(chunk, None) for chunk in chunks]
    parts += [("", [item]) for item in files]
    return await send_parts(job, adapter, address, parts)


async def send_parts(
    job: Job, adapter: ChannelAdapter, address: ChatAddress, parts: list[Part]
) -> Sent:
    """Send the parts not accepted yet, recording each accepted one before the next: a
    retry or a restart resumes after the last recorded part. The last part is not recorded
    on its own: the row's ``delivered`` follows it at once. Returns the first part's id."""
    done = job.inbound.parts_sent(job.row.id) if len(parts) > 1 else 0
    first = job.inbound.platform_message_id(job.row.id) if done else None
    for index, (text, files) in enumerate(parts):
        if index < done:
            continue
        sent = await adapter.send_text(address.platform_id, address.thread_id, text, files)
        if index == 0:
            first = sent
        if index < len(parts) - 1:
            # Crash points (crash table row 9): part index+1 of len(parts) accepted, before
            # and after it is recorded.
            facts: dict[str, Fact] = {
                "session": job.session.id,
                "message": job.row.id,
                "part": index + 1,
            }
            job.deps.faults.crash("delivery.after_part_accepted", **facts)
            # The platform has this part: its record waits for room on a full disk rather
            # than fail the attempt (the retry would send the part again).
            await until_written(
                functools.partial(_record_part, job, index + 1, sent if index == 0 else None),
                f"part {index + 1} of {job.row.id}",
                job.deps.disk,
            )
            job.deps.faults.crash("delivery.after_part_recorded", **facts)
    return Sent(first)


async def _record_part(job: Job, parts_sent: int, first: str | None) -> None:
    job.inbound.record_part(job.row.id, parts_sent, first, now=job.deps.clock())


def _platform_message_id(job: Job, message_id: str, *, own_only: bool = False) -> str:
    """Edits and reactions name a message by its platform id, or by the outbound id of one
    of this session's own earlier messages (mapped to the platform id it was delivered as).
    An edit (``own_only``) may only rewrite a message this session delivered, a host fact:
    the bot's other messages in the chat (an approval card in the owner's DM, an owner
    notice, another session's reply) are not the agent's to rewrite, whatever id it names."""
    delivery = job.inbound.get_delivery(message_id)
    if delivery is None:
        if own_only and not job.inbound.delivered_as(message_id):
            raise Denied(f"edit: message {message_id!r} is not one this conversation sent")
        return message_id
    if delivery.status == DeliveryStatus.DELIVERED and delivery.platform_message_id:
        return delivery.platform_message_id
    if delivery.status in (DeliveryStatus.PENDING, DeliveryStatus.SENDING, DeliveryStatus.RETRY):
        raise RetryLater(f"message {message_id} is not delivered yet")
    raise Denied(
        f"message {message_id} was never delivered ({delivery.status})", notify_owner=False
    )


def _target_user(job: Job, address: ChatAddress) -> str | None:
    """Whose click answers a question: the sender of the message the agent is answering,
    when that message came from the same chat. Otherwise (a task, a note, another chat)
    anyone in the chat may answer (``target_user_id`` NULL)."""
    if not job.row.in_reply_to:
        return None
    answered = job.inbound.get_message(job.row.in_reply_to)
    if answered is None or answered.kind != "chat":
        return None
    if (answered.channel_type, answered.platform_id) != (
        address.channel_type,
        address.platform_id,
    ):
        return None
    try:
        content = m.decode_inbound_content(answered.content)
    except DecodeError:
        return None
    if not isinstance(content, m.ChatContent) or ":" not in content.sender_id:
        return None
    if content.sender_id.startswith("agent:"):
        return None
    return content.sender_id


def host_question_id(session_id: str, agent_question_id: str) -> str:
    """The key of an agent's question on the host and on the card's buttons: derived from
    the session (so a re-run finds it, and two sessions never share one) and prefixed
    ``aq-`` (no host card id starts so). 35 characters: fits Telegram's button data."""
    digest = hashlib.sha256(f"{session_id}\x00{agent_question_id}".encode()).hexdigest()
    return f"aq-{digest[:32]}"


def _question_taken(central: CentralStore, agent_id: str, key: str) -> PendingQuestion | None:
    """The pending question under the host key, if any; ``Denied`` when the agent's id is
    a host card's."""
    if central.is_card_id(agent_id):
        # Only a container that read a host card's id somewhere and tries to pass its own
        # card off as that one does this; the host key below would defuse it anyway.
        raise Denied(
            f"question id {agent_id!r} is the id of a pending approval or registration card"
        )
    return central.get_pending_question(key)


def _ask(central: CentralStore, question: PendingQuestion, agent_question_id: str) -> None:
    central.create_pending_question(question, agent_question_id=agent_question_id)


def _asked_in(central: CentralStore, key: str, platform_message_id: str) -> None:
    central.set_question_platform_message(key, platform_message_id)


async def _send_question(
    job: Job, adapter: ChannelAdapter, address: ChatAddress, content: m.AskQuestion
) -> Sent:
    labels = [o.label for o in content.options] + [o.selected_label or "" for o in content.options]
    job.guard_texts(content.question_id, content.title, content.question, *labels)
    central = job.deps.central
    key = host_question_id(job.session.id, content.question_id)
    existing = await central.read(_question_taken, content.question_id, key)
    if existing is not None and existing.session_id != job.session.id:
        raise Denied(f"question id {content.question_id!r} is already in use")
    if existing is None:
        now = job.deps.clock()
        # Written before the send: a click can arrive before our post-send bookkeeping.
        await central.write(
            _ask,
            PendingQuestion(
                question_id=key,
                session_id=job.session.id,
                message_out_id=job.row.id,
                channel_type=address.channel_type,
                platform_id=address.platform_id,
                thread_id=address.thread_id,
                platform_message_id=None,
                target_user_id=_target_user(job, address),
                title=content.title,
                options_json=m.encode_text(content.options),
                created_at_ms=now,
                expires_at_ms=now + content.timeout_s * 1000,
            ),
            content.question_id,
        )
    card = m.AskQuestion(
        question_id=key,
        title=content.title,
        question=content.question,
        options=content.options,
        timeout_s=content.timeout_s,
    )
    sent = await adapter.send_question(address.platform_id, address.thread_id, card)
    if sent is not None:
        await central.write(_asked_in, key, sent)
    return Sent(sent)


async def _send_card(
    job: Job, adapter: ChannelAdapter, address: ChatAddress, content: m.SendCard
) -> Sent:
    card = content.card
    job.guard_texts(
        content.fallback_text,
        card.title,
        card.description,
        *card.children,
        *(a.label for a in card.actions),
        *(a.url for a in card.actions),
    )
    if adapter.supports_cards:
        return Sent(await adapter.send_card(address.platform_id, address.thread_id, content))
    chunks = split_text(card_fallback_text(content), adapter.text_limit)
    if not chunks:
        raise Denied("empty card: no title, text or fallback", notify_owner=False)
    return await send_parts(job, adapter, address, [(chunk, None) for chunk in chunks])
