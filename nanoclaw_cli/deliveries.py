"""``nanoclaw deliveries``: what happened to the agents' outbound messages.

- ``nanoclaw deliveries [list] [--failed] [--status S] [--session ID] [--limit N]``: one line per
  outbound row (newest first), with its state, attempts, last error and destination.
  ``--failed`` shows the problems: ``failed`` and ``denied``.
- ``nanoclaw deliveries retry OUT_ID``: a failed or denied row goes back to ``retry`` with its
  attempts reset; delivery picks it up within about a second (the session is marked active
  so delivery watches it).
- ``nanoclaw deliveries purge [--older-than 7d] [--delivered]``: forget settled records
  (failed and denied; with ``--delivered`` also delivered). The newest record of each session
  is kept: it marks how far delivery has read.

Everything reads the sessions' ``inbound.db`` (the host-owned delivery state) and their
``outbound.db`` (read-only) for the destination and a preview.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import click
import msgspec

from nanoclaw_cli.context import CliContext, json_option, pass_context
from nanoclaw_cli.output import emit, print_json
from nanoclaw_common import messages
from nanoclaw_common.clock import ms_to_iso, now_ms
from nanoclaw_common.errors import DecodeError, NotFound
from nanoclaw_common.states import DeliveryStatus
from nanoclaw_common.store import InboundReader, InboundStore, OutboundReader
from nanoclaw_common.store.rows import OutboundRow, Session
from nanoclaw_common.untrusted import escaped

PROBLEMS = (DeliveryStatus.FAILED, DeliveryStatus.DENIED)
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
PREVIEW_CHARS = 60


class DeliveryLine(msgspec.Struct, frozen=True):
    session_id: str
    agent_group_id: str
    seq: int
    message_out_id: str
    status: str
    attempts: int
    destination: str
    preview: str
    last_error: str | None
    platform_message_id: str | None
    next_attempt_at: str | None
    updated_at: str


def _destination(row: OutboundRow | None) -> str:
    if row is None:
        return "?"
    if row.kind == "system":
        return "(system action)"
    if row.channel_type and row.platform_id:
        return f"{row.channel_type}:{row.platform_id}"
    return "(session chat)"


def _preview(row: OutboundRow | None) -> str:
    if row is None:
        return ""
    try:
        content = messages.decode_outbound_content(row.content)
    except DecodeError:
        return "(undecodable)"
    text = getattr(content, "text", None)
    flat = " ".join(text.split()) if isinstance(text, str) else type(content).__name__
    return flat if len(flat) <= PREVIEW_CHARS else flat[: PREVIEW_CHARS - 1] + "…"


@contextmanager
def _session_dbs(
    ctx: CliContext, session: Session
) -> Iterator[tuple[InboundReader, OutboundReader | None] | None]:
    paths = ctx.layout.session(session.agent_group_id, session.id)
    if not paths.inbound_db.exists():
        yield None
        return
    inbound = InboundReader(paths.inbound_db)
    outbound = OutboundReader(paths.outbound_db) if paths.outbound_db.exists() else None
    try:
        yield inbound, outbound
    finally:
        inbound.close()
        if outbound is not None:
            outbound.close()


def collect(
    ctx: CliContext, *, statuses: tuple[str, ...], session_id: str | None, limit: int
) -> list[DeliveryLine]:
    store = ctx.store()
    sessions = store.list_sessions()
    if session_id is not None:
        sessions = [s for s in sessions if s.id == session_id]
        if not sessions:
            raise click.ClickException(f"no session {session_id}")
    lines: list[DeliveryLine] = []
    for session in sessions:
        with _session_dbs(ctx, session) as dbs:
            if dbs is None:
                continue
            inbound, outbound = dbs
            for delivery in inbound.list_deliveries():
                if statuses and delivery.status not in statuses:
                    continue
                row = outbound.get_message(delivery.message_out_id) if outbound else None
                lines.append(
                    DeliveryLine(
                        session_id=session.id,
                        agent_group_id=session.agent_group_id,
                        seq=delivery.seq,
                        message_out_id=delivery.message_out_id,
                        status=delivery.status,
                        attempts=delivery.attempts,
                        destination=_destination(row),
                        preview=_preview(row),
                        last_error=delivery.last_error,
                        platform_message_id=delivery.platform_message_id,
                        next_attempt_at=ms_to_iso(delivery.next_attempt_at_ms)
                        if delivery.next_attempt_at_ms
                        else None,
                        updated_at=ms_to_iso(delivery.updated_at_ms),
                    )
                )
    lines.sort(key=lambda line: line.updated_at, reverse=True)
    return lines[:limit]


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
def deliveries(click_ctx: click.Context) -> None:
    """Outbound messages: their delivery state, and retry or purge of problems."""
    if click_ctx.invoked_subcommand is None:
        click_ctx.invoke(list_deliveries)


@deliveries.command("list")
@click.option("--failed", is_flag=True, help="Only problems: failed and denied.")
@click.option(
    "--status",
    type=click.Choice([s.value for s in DeliveryStatus]),
    multiple=True,
    help="Only these states (repeatable).",
)
@click.option("--session", "session_id", help="Only this session.")
@click.option("--limit", default=100, show_default=True, help="At most this many lines.")
@json_option
@pass_context
def list_deliveries(
    ctx: CliContext,
    failed: bool = False,
    status: tuple[str, ...] = (),
    session_id: str | None = None,
    limit: int = 100,
) -> None:
    """List outbound messages, newest first."""
    statuses = tuple(status) + (tuple(PROBLEMS) if failed else ())
    lines = collect(ctx, statuses=statuses, session_id=session_id, limit=limit)
    emit(
        lines,
        ctx.as_json,
        columns=[
            "updated_at",
            "session_id",
            "seq",
            "status",
            "attempts",
            "destination",
            "preview",
            "last_error",
        ],
        title="Deliveries",
    )


def _find(ctx: CliContext, message_out_id: str, session_id: str | None) -> Session:
    for session in ctx.store().list_sessions():
        if session_id is not None and session.id != session_id:
            continue
        with _session_dbs(ctx, session) as dbs:
            if dbs is not None and dbs[0].get_delivery(message_out_id) is not None:
                return session
    raise click.ClickException(f"no delivery {message_out_id}")


@deliveries.command()
@click.argument("message_out_id")
@click.option("--session", "session_id", help="The session (faster with many sessions).")
@json_option
@pass_context
def retry(ctx: CliContext, message_out_id: str, session_id: str | None) -> None:
    """Send a failed or denied message again."""
    session = _find(ctx, message_out_id, session_id)
    paths = ctx.layout.session(session.agent_group_id, session.id)
    inbound = InboundStore(paths.inbound_db)
    try:
        inbound.reopen_delivery(message_out_id)
    except NotFound as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        inbound.close()
    # Delivery watches sessions active recently; mark it so the retry is seen at once.
    ctx.store().touch_session(session.id)
    result = {"message_out_id": message_out_id, "session_id": session.id, "status": "retry"}
    if ctx.as_json:
        print_json(result)
    else:
        click.echo(f"{escaped(message_out_id)} (session {session.id}) will be sent again")


def parse_duration(text: str) -> int:
    match = _DURATION.match(text.strip())
    if not match:
        raise click.BadParameter("use a number and a unit: 30m, 12h, 7d")
    return int(match[1]) * _UNIT_MS[match[2]]


@deliveries.command()
@click.option("--older-than", default="7d", show_default=True, help="Age, e.g. 12h, 7d, 0s.")
@click.option("--delivered", is_flag=True, help="Also forget delivered records.")
@json_option
@pass_context
def purge(ctx: CliContext, older_than: str, delivered: bool) -> None:
    """Forget settled failed/denied records older than the given age."""
    before = now_ms() - parse_duration(older_than)
    statuses = [*PROBLEMS, *([DeliveryStatus.DELIVERED] if delivered else [])]
    removed = 0
    for session in ctx.store().list_sessions():
        paths = ctx.layout.session(session.agent_group_id, session.id)
        if not paths.inbound_db.exists():
            continue
        inbound = InboundStore(paths.inbound_db)
        try:
            removed += inbound.purge_deliveries(statuses, before_ms=before)
        finally:
            inbound.close()
    if ctx.as_json:
        print_json({"removed": removed})
    else:
        click.echo(f"removed {removed} record(s)")
