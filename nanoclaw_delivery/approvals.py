"""Self-modification behind an approval: ``install_packages`` and ``add_mcp_server``.

Request (an outbound system row, handled like any other delivery):
1. validate strictly (names, counts, no secrets, no environment variable that changes how a
   program loads code: ``nanoclaw_common.loader_env``); invalid → ``denied`` with the reason;
   then compose the card: it shows **the whole request** that will be recorded and applied
   (every package; for an MCP server the command, every argument and every environment
   variable, quoted, control characters escaped), and a request whose card would not fit
   the smallest card text we send (``CARD_TEXT_CHARS``) is refused, never cut (issue 8: a
   card cut at 4,000 characters, and one that left the environment out, let an owner approve
   ``NODE_OPTIONS=--require …`` and a hidden argument);
2. approvers = scoped admins → global admins → owners (``CentralStore.pick_approvers``);
   none → ``denied``;
3. the first approver with a reachable DM, preferring the channel type of the session's chat
   (``notify.reach_first``); nobody reachable right now → retry; nobody reachable at all →
   ``denied``;
4. a ``pending_approvals`` row and a question card in the approver's DM; the row is
   ``delivered``. The approval's id is random (128 bits, ``unguessable_id``) and is the
   card's question id: a container cannot compute it, and it is never written where the
   container can read it (``inbound.db``). A re-run after a crash finds the row by its
   request (session and outbound row id) and does not send a card whose platform id was
   recorded. The router counts a click only on that card: the chat and platform message
   recorded here (docs/delivery.md, "Cards and clicks").

Decision (``ApprovalWatcher``, a loop in delivery): the router records a click with
``CentralStore.decide_approval``, which counts it only from an approver. Delivery then applies
``approved`` rows (packages: ``deps.images`` builds the group's image with the podman command
line and records the packages; MCP servers: merged into ``container_configs.mcp_servers``),
gives the agent an ``on_wake`` note and writes a restart request for each running or starting
session of the group, which the sweeper carries out (it stops runs older than the request;
the due note then wakes a fresh run). It tells the agent about ``rejected`` ones, turns
undecided rows past ``expires_at_ms`` into ``expired`` (a timeout is a deny), and deletes the
row. A crash before the delete applies it again: the build and the MCP merge are idempotent,
note ids are derived from the approval id, and a repeated restart request at worst restarts
the group's runs once more.
"""

from __future__ import annotations

import json
import re
from typing import Final

from loguru import logger

from nanoclaw_common import messages as m
from nanoclaw_common import packages
from nanoclaw_common.diskfull import until_written
from nanoclaw_common.errors import DecodeError
from nanoclaw_common.loader_env import is_loader_variable
from nanoclaw_common.sessions import ensure_session_files
from nanoclaw_common.states import ApprovalStatus, DeliveryStatus
from nanoclaw_common.store import CentralStore, InboundStore
from nanoclaw_common.store.central import unguessable_id
from nanoclaw_common.store.rows import (
    AgentGroup,
    MessagingGroup,
    PendingApproval,
    PendingQuestion,
    Session,
)
from nanoclaw_common.untrusted import escaped
from nanoclaw_delivery.acl import origin_chat
from nanoclaw_delivery.context import Deps
from nanoclaw_delivery.job import Job
from nanoclaw_delivery.notify import note_agent, reach_first
from nanoclaw_delivery.outcome import Denied, Sent
from nanoclaw_delivery.text import redact

log = logger.bind(component="delivery")

MCP_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
ENV_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

APPROVE: Final = "approve"
REJECT: Final = "reject"
OPTIONS: Final = [
    m.QuestionOption(label="Approve", value=APPROVE, selected_label="✅ Approved"),
    m.QuestionOption(label="Reject", value=REJECT, selected_label="❌ Rejected"),
]

SelfMod = m.InstallPackages | m.AddMcpServer
# A request row in one of these may be re-run (after a crash): its approval must stay.
OPEN_DELIVERY: Final = frozenset(
    {DeliveryStatus.PENDING, DeliveryStatus.SENDING, DeliveryStatus.RETRY}
)


# -- validation -----------------------------------------------------------------------------


def validate_packages(action: m.InstallPackages) -> None:
    """The rules the runner's tool applies too (``nanoclaw_common.packages``), checked again
    here: the row came from a container."""
    try:
        packages.check_request(action.apt, action.pip)
    except packages.InvalidPackages as exc:
        # A count rule is a plain mistake; a malformed name (an option, a URL, a shell word)
        # may be an attempt, and the owner hears about it.
        count = len(action.apt) + len(action.pip)
        malformed = 0 < count <= packages.MAX_PACKAGES
        raise Denied(f"install_packages: {exc}", notify_owner=malformed) from None


def validate_mcp(action: m.AddMcpServer) -> None:
    if not MCP_NAME.match(action.name):
        raise Denied(f"add_mcp_server: invalid server name {action.name!r}", notify_owner=False)
    parts = [action.command, *action.args, *action.env.values()]
    if not action.command.strip() or any("\x00" in p for p in parts):
        raise Denied("add_mcp_server: empty command or a NUL byte in command, args or env")
    for key in action.env:
        if not ENV_NAME.match(key):
            raise Denied(f"add_mcp_server: invalid environment variable name {key!r}")
    loaders = sorted(key for key in action.env if is_loader_variable(key))
    if loaders:
        raise Denied(
            f"add_mcp_server: {', '.join(loaders)} would change how the server loads code;"
            " such variables are refused (an operator can set them in the group's config)"
        )


#: The longest card text (title, blank line, question) an approval may have: the smallest
#: any adapter shows whole (Slack's section block, 3,000 characters; Telegram's message is
#: 4,096). A longer request is refused rather than cut.
CARD_TEXT_CHARS: Final = 3_000


def _quoted(value: str) -> str:
    """A value as the card shows it: quoted, backslashes and quotes escaped, control and
    format characters escaped (a newline cannot fake a line of the card), nothing cut."""
    return '"' + escaped(value.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def describe(action: SelfMod) -> tuple[str, str, str]:
    """(action name, card title, the whole request as lines of text): what the card shows,
    which is everything that is recorded and applied."""
    if isinstance(action, m.InstallPackages):
        lines = [
            f"apt: {' '.join(action.apt)}" if action.apt else "",
            f"pip: {' '.join(action.pip)}" if action.pip else "",
        ]
        if action.reason:
            lines.append(f"Reason: {_quoted(action.reason)}")
        return "install_packages", "Install Packages Request", "\n".join(x for x in lines if x)
    lines = [f"name: {action.name}", f"command: {_quoted(action.command)}"]
    lines.append(f"arguments ({len(action.args)}):" if action.args else "arguments: none")
    lines += [f"  {n}. {_quoted(arg)}" for n, arg in enumerate(action.args, start=1)]
    lines.append(f"environment ({len(action.env)}):" if action.env else "environment: none")
    lines += [f"  {key}={_quoted(value)}" for key, value in sorted(action.env.items())]
    return "add_mcp_server", "Add MCP Request", "\n".join(lines)


def card_question(agent_name: str, action: SelfMod) -> str:
    """The card's text below its title; raises ``Denied`` when title and text together
    would not fit ``CARD_TEXT_CHARS`` (the request is refused, never shown in part)."""
    name, title, request = describe(action)
    question = f"Agent {_quoted(agent_name)} asks to {_verb(action)}:\n{request}"
    size = len(title) + 2 + len(question)
    if size > CARD_TEXT_CHARS:
        raise Denied(
            f"{name}: the request is too long to show in full on an approval card ({size}"
            f" characters; at most {CARD_TEXT_CHARS}), and a card never shows only part of"
            " what would run. Ask for less at once."
        )
    return question


# -- request --------------------------------------------------------------------------------


def guard(job: Job, action: SelfMod) -> None:
    """The leak guard over every string of the request: names go on the approval card and
    into the image build, MCP commands, arguments and environment into the group's config.
    Checked before validation, so no refusal reason can quote a secret."""
    if isinstance(action, m.InstallPackages):
        job.guard_texts(*action.apt, *action.pip, action.reason)
    else:
        job.guard_texts(
            action.name, action.command, *action.args, *action.env.keys(), *action.env.values()
        )


def _request_facts(
    central: CentralStore, session: Session, request_id: str
) -> tuple[AgentGroup | None, PendingApproval | None, list[str], MessagingGroup | None]:
    """(the group, the approval a re-run finds, the approvers, the session's chat)."""
    return (
        central.get_agent_group(session.agent_group_id),
        central.find_pending_approval_for(session.id, request_id),
        central.pick_approvers(session.agent_group_id),
        origin_chat(central, session),
    )


def _create(central: CentralStore, approval: PendingApproval) -> None:
    central.create_pending_approval(approval)


def _card_sent(central: CentralStore, approval_id: str, platform_message_id: str) -> None:
    central.set_approval_platform_message(approval_id, platform_message_id)


async def request(job: Job, action: SelfMod) -> Sent:
    guard(job, action)
    if isinstance(action, m.InstallPackages):
        validate_packages(action)
    else:
        validate_mcp(action)
    deps, session = job.deps, job.session
    central = deps.central
    group, existing, approvers, origin = await central.read(_request_facts, session, job.row.id)
    # The whole request, or a refusal: composed before anyone is asked.
    question = card_question(group.name if group else session.agent_group_id, action)
    name, title, _request = describe(action)
    if existing is not None and existing.platform_message_id:
        return Sent(None)  # the card went out before a crash
    if not approvers:
        raise Denied(f"{name}: no owner or admin is configured to approve it")
    reach = await reach_first(deps, approvers, origin.channel_type if origin else None)
    if reach is None:
        raise Denied(f"{name}: no DM channel found for any eligible approver")
    now = deps.clock()
    approval_id = existing.approval_id if existing else unguessable_id("appr", now)
    if existing is None:
        await central.write(
            _create,
            PendingApproval(
                approval_id=approval_id,
                session_id=session.id,
                agent_group_id=session.agent_group_id,
                request_id=job.row.id,
                action=name,
                payload=m.encode_text(action),
                approver_user_id=reach.user_id,
                channel_type=reach.chat.channel_type,
                platform_id=reach.chat.platform_id,
                platform_message_id=None,
                status=ApprovalStatus.PENDING,
                title=title,
                options_json=m.encode_text(OPTIONS),
                created_at_ms=now,
                expires_at_ms=now + int(deps.settings.approval_timeout_s * 1000),
            ),
        )
    card = m.AskQuestion(question_id=approval_id, title=title, question=question, options=OPTIONS)
    sent = await reach.adapter.send_question(reach.chat.platform_id, None, card)
    if sent is not None:
        card_id = sent

        async def record_card() -> None:
            await central.write(_card_sent, approval_id, card_id)

        # The card is out: on a full disk its record waits for room (a retry would post it
        # again; and only a click on the recorded card counts).
        await until_written(record_card, f"the card of approval {approval_id}", deps.disk)
    log.info(
        "approval {} for {} sent to {}",
        approval_id,
        name,
        reach.user_id,
        session=session.id,
        message=job.row.id,
    )
    # No id in the delivery record: inbound.db is readable by the container, and the card's
    # ids are what a look-alike card would need.
    return Sent(None)


def _verb(action: SelfMod) -> str:
    if isinstance(action, m.InstallPackages):
        return "install packages and rebuild its container"
    return "add a new MCP server"


# -- decisions ------------------------------------------------------------------------------


def _approvals(central: CentralStore, status: str) -> list[PendingApproval]:
    return central.list_pending_approvals(status)


def _expire(central: CentralStore, approval_id: str) -> bool:
    return central.set_approval_status(approval_id, ApprovalStatus.EXPIRED)


def _questions(central: CentralStore) -> list[PendingQuestion]:
    return central.list_pending_questions()


def _forget_question(central: CentralStore, question_id: str) -> None:
    central.delete_pending_question(question_id)


def _session(central: CentralStore, session_id: str | None) -> Session | None:
    return central.get_session(session_id) if session_id else None


def _forget_approval(central: CentralStore, approval_id: str) -> None:
    central.delete_pending_approval(approval_id)


def _decided_by(central: CentralStore, approval_id: str) -> str | None:
    return central.approval_decided_by(approval_id)


def _add_server(central: CentralStore, group_id: str, action: m.AddMcpServer) -> None:
    """Add the approved MCP server to the group's config (one write: read and update)."""
    with central.write():
        config = central.get_container_config(group_id)
        servers = json.loads(config.mcp_servers) if config else {}
        servers[action.name] = {
            "command": action.command,
            "args": list(action.args),
            "env": dict(action.env),
        }
        central.update_container_config(group_id, mcp_servers=json.dumps(servers))


def _restart_group(central: CentralStore, group_id: str, reason: str, now: int) -> list[str]:
    return central.request_group_restart(group_id, reason, now=now)


class ApprovalWatcher:
    """Applies decided approvals and expires undecided ones. ``tick(now)`` does one pass."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    async def tick(self, now: int) -> int:
        central = self.deps.central
        handled = 0
        for approval in await central.read(_approvals, ApprovalStatus.PENDING):
            overdue = approval.expires_at_ms is not None and now >= approval.expires_at_ms
            # Guarded transition: a click that won the race keeps its decision.
            if overdue and await central.write(_expire, approval.approval_id):
                log.info("approval {} expired (a timeout is a deny)", approval.approval_id)
        for status in (ApprovalStatus.APPROVED, ApprovalStatus.REJECTED, ApprovalStatus.EXPIRED):
            for approval in await central.read(_approvals, status):
                if await self.settle(approval):
                    handled += 1
        for question in await central.read(_questions):
            if question.expires_at_ms is not None and now >= question.expires_at_ms:
                await central.write(_forget_question, question.question_id)
                log.info("question {} expired unanswered", question.question_id)
        return handled

    async def settle(self, approval: PendingApproval) -> bool:
        """Apply a decided approval and delete it; False when it must wait: its request row
        is still open (a crash came between the card and the row's ``delivered``, crash
        table row 12). That row's re-run finds the approval by its request and sends no
        second card; settled and deleted first, it would find none and ask again."""
        central = self.deps.central
        session = await central.read(_session, approval.session_id)
        if session is None:
            log.warning("approval {} has no session any more; dropped", approval.approval_id)
            await central.write(_forget_approval, approval.approval_id)
            return True
        paths = ensure_session_files(self.deps.layout, session)
        inbound = InboundStore(paths.inbound_db)
        try:
            request = inbound.get_delivery(approval.request_id)
            if request is not None and request.status in OPEN_DELIVERY:
                log.info(
                    "approval {} decided; applied once its request is settled",
                    approval.approval_id,
                    session=session.id,
                    message=approval.request_id,
                )
                return False
            await self._settle(approval, session, inbound)
        finally:
            inbound.close()
        # Crash point (crash table row 16): applied, the approval row not deleted yet.
        self.deps.faults.crash(
            "delivery.after_approval_applied",
            session=session.id,
            approval=approval.approval_id,
            status=str(approval.status),
        )
        await central.write(_forget_approval, approval.approval_id)
        return True

    async def _settle(
        self, approval: PendingApproval, session: Session, inbound: InboundStore
    ) -> None:
        deps = self.deps
        note_id = f"approval-{approval.approval_id}"
        who = await deps.central.read(_decided_by, approval.approval_id) or "an approver"
        if approval.status == ApprovalStatus.REJECTED:
            log.info("approval {} rejected by {}", approval.approval_id, who)
            await self._mark_card(approval, f"❌ Rejected by {who}")
            await note_agent(
                deps,
                session,
                inbound,
                note_id,
                f"Your {approval.action} request was rejected by {who}.",
            )
            return
        if approval.status == ApprovalStatus.EXPIRED:
            await self._mark_card(approval, "⌛ Expired: no decision (treated as a rejection)")
            hours = deps.settings.approval_timeout_s / 3600
            await note_agent(
                deps,
                session,
                inbound,
                note_id,
                f"Your {approval.action} request expired: no approver answered within"
                f" {hours:g} h, which counts as a rejection.",
            )
            return
        log.info("approval {} approved by {}; applying", approval.approval_id, who)
        await self._mark_card(approval, f"✅ Approved by {who}")
        try:
            action = m.decode_outbound_content(approval.payload)
        except DecodeError as exc:
            await note_agent(deps, session, inbound, note_id, f"Approved, but unreadable: {exc}")
            return
        if isinstance(action, m.InstallPackages):
            await self._install(approval, session, inbound, action, note_id)
        elif isinstance(action, m.AddMcpServer):
            await self._add_mcp(approval, session, inbound, action, note_id)

    async def _install(
        self,
        approval: PendingApproval,
        session: Session,
        inbound: InboundStore,
        action: m.InstallPackages,
        note_id: str,
    ) -> None:
        deps, group_id = self.deps, approval.agent_group_id or session.agent_group_id
        listed = ", ".join(
            part
            for part in (
                f"apt: {' '.join(action.apt)}" if action.apt else "",
                f"pip: {' '.join(action.pip)}" if action.pip else "",
            )
            if part
        )
        try:
            # The builder merges these with the group's earlier packages and records both
            # the packages and the new image tag only when the build succeeds.
            tag = await deps.offload.slow(
                deps.images.build_group_image, group_id, list(action.apt), list(action.pip)
            )
        except Exception as exc:
            log.error("image rebuild for group {} failed: {!r}", group_id, exc)
            await note_agent(
                deps,
                session,
                inbound,
                note_id,
                f"Your install_packages request ({listed}) was approved, but building the"
                f" image failed, so nothing was installed: {exc}. Tell the user.",
            )
            return
        log.info("group {} image rebuilt as {}", group_id, tag)
        await self._restart_with_note(
            approval,
            session,
            inbound,
            note_id,
            f"Packages installed ({listed}) and the container rebuilt. Check that they are"
            " available and tell the user the result.",
        )

    async def _add_mcp(
        self,
        approval: PendingApproval,
        session: Session,
        inbound: InboundStore,
        action: m.AddMcpServer,
        note_id: str,
    ) -> None:
        deps, group_id = self.deps, approval.agent_group_id or session.agent_group_id
        await deps.central.write(_add_server, group_id, action)
        await self._restart_with_note(
            approval,
            session,
            inbound,
            note_id,
            f'MCP server "{action.name}" added. Check that it is available and tell the user'
            " the result.",
        )

    async def _restart_with_note(
        self,
        approval: PendingApproval,
        session: Session,
        inbound: InboundStore,
        note_id: str,
        text: str,
    ) -> None:
        """Tell the agent with a note only a fresh run reads, and ask the sweeper to replace
        the group's runs that predate the change (delivery holds no sandbox)."""
        deps = self.deps
        group_id = approval.agent_group_id or session.agent_group_id
        # on_wake: an old run (old image or config) must not answer it. It is also a trigger,
        # so a stopped session is woken for it by the sweeper, with the new config.
        await note_agent(deps, session, inbound, note_id, text, on_wake=True)
        restarting = await deps.central.write(
            _restart_group,
            group_id,
            f"approval {approval.approval_id} ({approval.action})",
            deps.clock(),
        )
        log.info(
            "asked the sweeper to restart {} run(s) of group {}",
            len(restarting),
            group_id,
            session=session.id,
        )

    async def _mark_card(self, approval: PendingApproval, text: str) -> None:
        """Best effort: show the outcome on the card (the decision stands either way)."""
        if not (approval.channel_type and approval.platform_id and approval.platform_message_id):
            return
        adapter = self.deps.adapters.get(approval.channel_type)
        if adapter is None or not adapter.is_connected():
            return
        try:
            await adapter.edit_text(
                approval.platform_id,
                None,
                approval.platform_message_id,
                redact(f"{approval.title}\n\n{text}", self.deps.secrets()),
            )
        except Exception as exc:
            log.warning("could not update approval card {}: {!r}", approval.approval_id, exc)
