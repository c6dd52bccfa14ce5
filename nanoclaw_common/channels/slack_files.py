"""The files of an inbound Slack message, downloaded within the size limits.

Each file is fetched with the bot token, only from Slack's own hosts, and read in chunks
that stop as soon as the file passes what it may take, so an oversized file is never held
whole. What cannot be had is left out with a note the agent sees; what may come later (a
network error, a 5xx or 429) raises ``RetryLater``, and the event is not acknowledged.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from nanoclaw_common.channels import slack_payloads as sp
from nanoclaw_common.errors import RetryLater
from nanoclaw_common.messages import MAX_ATTACHMENT_BYTES

DOWNLOAD_CHUNK: Final = 64 * 1024


async def download(
    session: aiohttp.ClientSession | None,
    files: list[sp.SlackFile],
    *,
    bot_token: str,
    api_base_url: str,
    max_message_bytes: int,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The message's files (attachment dicts for ``make_event``) and the notes about those
    left out. Each file is capped at ``MAX_ATTACHMENT_BYTES``, all together at
    ``max_message_bytes``. ``session`` None (the adapter is not started) downloads nothing."""
    found: list[dict[str, Any]] = []
    notes: list[str] = []
    budget = max_message_bytes  # what the message's files may still take
    for item in files:
        name = item.name or item.id
        url = item.url_private_download or item.url_private
        if item.size is not None and item.size > MAX_ATTACHMENT_BYTES:
            notes.append(f"[attachment {name} not downloaded: {item.size} bytes is over the limit]")
            continue
        if item.size is not None and item.size > budget:
            notes.append(f"[attachment {name} not downloaded: the message is too large]")
            continue
        if not url or session is None:
            notes.append(f"[attachment {name} not downloaded: no download link]")
            continue
        if not trusted_file_url(url, api_base_url):
            # The bot token goes with the request: only to Slack's own hosts.
            notes.append(f"[attachment {name} not downloaded: unexpected file host]")
            continue
        headers = {"Authorization": f"Bearer {bot_token}"}
        limit = min(MAX_ATTACHMENT_BYTES, budget)
        try:
            async with session.get(url, headers=headers) as response:
                if response.status == 429 or response.status >= 500:
                    raise RetryLater(f"slack file download: HTTP {response.status}")
                if response.status != 200:
                    notes.append(f"[attachment {name} not downloaded: HTTP {response.status}]")
                    continue
                data = await read_limited(response, limit)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RetryLater(f"slack file download failed: {exc}") from None
        if data is None:
            notes.append(f"[attachment {name} not downloaded: over the size limit]")
            continue
        budget -= len(data)
        kind = "image" if item.mimetype.startswith("image/") else "file"
        found.append({"name": name, "data": data, "kind": kind, "mime_type": item.mimetype or None})
    return found, notes


def trusted_file_url(url: str, api_base_url: str) -> bool:
    """Whether ``url`` is on Slack's hosts (or the configured API's, for the local fake)."""
    host = urlsplit(url).hostname or ""
    api_host = urlsplit(api_base_url).hostname or ""
    return host in (api_host, "files.slack.com") or host.endswith(".slack.com")


async def read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None as soon as it grows past ``limit`` (the rest is not read).
    ``content.read(n)`` would return whatever happens to be buffered, not the body."""
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.content.iter_chunked(DOWNLOAD_CHUNK):
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
