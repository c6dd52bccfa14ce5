"""Is an existing ``messages_in`` row the message being inserted again, or another one that
happens to hold its id?

Inbound ids are idempotency keys: a platform re-send of a committed message must change
nothing. But an id can also be taken by a row of another kind or origin (on older versions
an agent could schedule a task under a future message's id, which then silenced that
message as a "duplicate"). Only the same message is a duplicate: same kind, same chat and
thread, and the same identity inside the content (a chat message's sender and text, a
webhook's source, event and payload, a task's prompt and script, a question response's
question). Display-only fields (a sender's name, attachment records) may change between two
deliveries of one message and are not compared.

Text is compared allowing for the notes the host appends in brackets on a line of their
own (``[attachment … left out …]``): a re-send whose files fared differently is still the
same message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nanoclaw_common import messages
from nanoclaw_common.errors import DecodeError

if TYPE_CHECKING:
    from nanoclaw_common.store.inbound import NewInbound

#: What ``difference`` reads from the existing row, in this order.
EXISTING_COLUMNS = "seq, kind, channel_type, platform_id, thread_id, content"


def _same_text(stored: str, new: str) -> bool:
    if stored == new:
        return True
    shorter, longer = sorted((stored, new), key=len)
    return longer.startswith(shorter + "\n[") if shorter else longer.startswith("[")


def difference(existing: tuple[object, ...], new: NewInbound) -> str | None:
    """``None`` when the existing row (``EXISTING_COLUMNS``) is ``new`` again; otherwise what
    the existing row is, for the drop record and the log (no content quoted)."""
    _seq, kind, channel_type, platform_id, thread_id, content = existing
    new_kind = messages.INBOUND_KIND[type(new.content)]
    if kind != new_kind:
        return f"a {kind} row"
    if (channel_type, platform_id, thread_id) != (new.channel_type, new.platform_id, new.thread_id):
        return f"a {kind} row of another chat or thread"
    try:
        stored = messages.decode_inbound_content(str(content))
    except DecodeError:
        return f"an unreadable {kind} row"
    ours = new.content
    if isinstance(ours, messages.ChatContent) and isinstance(stored, messages.ChatContent):
        if stored.sender_id != ours.sender_id:
            return f"a {kind} row from another sender"
        if not _same_text(stored.text, ours.text):
            return f"a {kind} row with another text"
        return None
    if isinstance(ours, messages.WebhookContent) and isinstance(stored, messages.WebhookContent):
        same = (stored.source, stored.event) == (ours.source, ours.event)
        if not same or messages.encode(stored.payload) != messages.encode(ours.payload):
            return f"a {kind} row with another payload"
        return None
    if isinstance(ours, messages.TaskContent) and isinstance(stored, messages.TaskContent):
        if (stored.prompt, stored.script) != (ours.prompt, ours.script):
            return f"a {kind} row with another prompt"
        return None
    if isinstance(ours, messages.QuestionResponse) and isinstance(
        stored, messages.QuestionResponse
    ):
        # The first answer to a question wins; a second click is the same response.
        if stored.question_id != ours.question_id:
            return f"a {kind} row for another question"
        return None
    return f"a {kind} row of another type"
