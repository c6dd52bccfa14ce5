"""``nanoclaw users``, ``roles`` and ``members``: who may talk to which agent group.

- ``users list | add USER_ID [--name N] | remove USER_ID``: ids are
  ``<channel>:<platform user id>`` (``telegram:12345``, ``slack:U0ABC``, ``cli:local``).
- ``roles list | add USER_ID owner|admin [--group G] | remove USER_ID ROLE [--group G]``:
  ``owner`` is always global; ``admin`` is global or scoped to one group. Owners and admins
  approve new chats and senders and may use ``/clear`` and friends.
- ``members list [--group G] | add USER_ID GROUP | remove USER_ID GROUP``: known senders.
"""

from __future__ import annotations

import click

from nanoclaw_cli import refs
from nanoclaw_cli.context import CliContext, json_option, pass_context
from nanoclaw_cli.output import console, emit, print_json
from nanoclaw_common.errors import NanoclawError
from nanoclaw_common.states import Role

ROLES = [r.value for r in Role]


def _fail(exc: NanoclawError) -> click.ClickException:
    return click.ClickException(str(exc))


def _check_user_id(user_id: str) -> str:
    kind, sep, handle = user_id.partition(":")
    if not sep or not kind or not handle:
        raise click.ClickException(f"user ids look like <channel>:<id>, not {user_id!r}")
    return kind


@click.group()
def users() -> None:
    """Users (platform identities): list, add, remove."""


@users.command("list")
@json_option
@pass_context
def list_users(ctx: CliContext) -> None:
    """List users."""
    emit(ctx.store().list_users(), ctx.as_json, ["id", "kind", "display_name"], title="Users")


@users.command("add")
@click.argument("user_id")
@click.option("--name", help="Display name.")
@json_option
@pass_context
def add_user(ctx: CliContext, user_id: str, name: str | None) -> None:
    """Add (or rename) a user."""
    user = ctx.store().upsert_user(user_id, _check_user_id(user_id), name)
    if ctx.as_json:
        print_json(user)
    else:
        console.print(f"user {user.id}")


@users.command("remove")
@click.argument("user_id")
@json_option
@pass_context
def remove_user(ctx: CliContext, user_id: str) -> None:
    """Delete a user with their roles and memberships."""
    try:
        ctx.store().delete_user(user_id)
    except NanoclawError as exc:
        raise _fail(exc) from None
    if ctx.as_json:
        print_json({"removed": user_id})
    else:
        console.print(f"removed user {user_id}")


@click.group()
def roles() -> None:
    """Roles (owner, admin): list, add, remove."""


@roles.command("list")
@json_option
@pass_context
def list_roles(ctx: CliContext) -> None:
    """List role grants."""
    emit(
        ctx.store().list_roles(),
        ctx.as_json,
        ["user_id", "role", "agent_group_id", "granted_by"],
        title="Roles",
    )


@roles.command("add")
@click.argument("user_id")
@click.argument("role", type=click.Choice(ROLES))
@click.option("--group", "group_ref", help="Scope an admin to one agent group.")
@json_option
@pass_context
def add_role(ctx: CliContext, user_id: str, role: str, group_ref: str | None) -> None:
    """Grant a role (the user is created if missing)."""
    store = ctx.store()
    group_id = refs.agent_group(store, group_ref).id if group_ref else None
    if store.get_user(user_id) is None:
        store.upsert_user(user_id, _check_user_id(user_id))
    try:
        granted = store.grant_role(user_id, role, group_id)
    except NanoclawError as exc:
        raise _fail(exc) from None
    if ctx.as_json:
        print_json(
            {"user_id": user_id, "role": role, "agent_group_id": group_id, "granted": granted}
        )
    else:
        scope = f" of {group_ref}" if group_ref else ""
        console.print(f"{user_id} is {role}{scope}" + ("" if granted else " (already)"))


@roles.command("remove")
@click.argument("user_id")
@click.argument("role", type=click.Choice(ROLES))
@click.option("--group", "group_ref")
@json_option
@pass_context
def remove_role(ctx: CliContext, user_id: str, role: str, group_ref: str | None) -> None:
    """Revoke a role."""
    store = ctx.store()
    group_id = refs.agent_group(store, group_ref).id if group_ref else None
    try:
        store.revoke_role(user_id, role, group_id)
    except NanoclawError as exc:
        raise _fail(exc) from None
    if ctx.as_json:
        print_json({"removed": [user_id, role, group_id]})
    else:
        console.print(f"revoked {role} from {user_id}")


@click.group()
def members() -> None:
    """Members (known senders of an agent group): list, add, remove."""


@members.command("list")
@click.option("--group", "group_ref")
@json_option
@pass_context
def list_members(ctx: CliContext, group_ref: str | None) -> None:
    """List memberships."""
    store = ctx.store()
    group_id = refs.agent_group(store, group_ref).id if group_ref else None
    emit(
        store.list_members(group_id),
        ctx.as_json,
        ["user_id", "agent_group_id", "added_by"],
        title="Members",
    )


@members.command("add")
@click.argument("user_id")
@click.argument("group_ref", metavar="GROUP")
@json_option
@pass_context
def add_member(ctx: CliContext, user_id: str, group_ref: str) -> None:
    """Make a user a known sender of a group (the user is created if missing)."""
    store = ctx.store()
    group = refs.agent_group(store, group_ref)
    if store.get_user(user_id) is None:
        store.upsert_user(user_id, _check_user_id(user_id))
    added = store.add_member(user_id, group.id)
    if ctx.as_json:
        print_json({"user_id": user_id, "agent_group_id": group.id, "added": added})
    else:
        console.print(f"{user_id} is a member of {group.folder}" + ("" if added else " (already)"))


@members.command("remove")
@click.argument("user_id")
@click.argument("group_ref", metavar="GROUP")
@json_option
@pass_context
def remove_member(ctx: CliContext, user_id: str, group_ref: str) -> None:
    """Remove a membership."""
    store = ctx.store()
    group = refs.agent_group(store, group_ref)
    try:
        store.remove_member(user_id, group.id)
    except NanoclawError as exc:
        raise _fail(exc) from None
    if ctx.as_json:
        print_json({"removed": [user_id, group.id]})
    else:
        console.print(f"{user_id} is no longer a member of {group.folder}")
