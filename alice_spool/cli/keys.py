"""`alice-spool keys`: API keys in the database. A key is printed
once, when it is made, and never again (only its SHA-256 is kept); this is how the
first admin key is made: on the server itself, never over HTTP."""

from __future__ import annotations

import re
from datetime import timedelta

import click

from ..errors import InvalidParameters
from ..store import utcnow
from .app import App, SpoolGroup, cli, emit_json, json_option, note, pass_app

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """`90s`, `30m`, `12h`, `7d`, `2w`."""
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise InvalidParameters(f"{text!r} is not a duration like 12h or 7d", field="expires")
    return timedelta(seconds=float(found.group(1)) * _UNITS[found.group(2)])


@cli.group(cls=SpoolGroup)
def keys() -> None:
    """API keys (stored as SHA-256) and invite codes. Authentication is on as soon as
    any key exists, here or in [server.api_keys]."""


@keys.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="An admin's key (default: a user's).")
@click.option("--rate-limit", type=click.IntRange(0), help="Requests a minute (0: none).")
@json_option
@pass_app
def keys_add(app: App, name: str, admin: bool, rate_limit: int | None, as_json: bool) -> None:
    """Make a key and print it (this once). A name any key has, here or in
    [server.api_keys], is refused."""
    role = "admin" if admin else "user"
    record, secret = app.store.keys.add_key(
        name,
        role=role,
        rate_limit_per_minute=rate_limit,
        created_by="cli",
        reserved=app.settings.server.api_keys,
    )
    if as_json:
        emit_json({"key": secret, "info": record.to_dict()})
        return
    click.echo(secret)
    note(f"{record.role} key {record.name!r} made; it is shown only now")


@keys.command("ls")
@json_option
@pass_app
def keys_ls(app: App, as_json: bool) -> None:
    """The keys in the database (not the key itself: that is never kept)."""
    from ..terminal import table

    found = app.store.keys.list_keys()
    if as_json:
        emit_json([k.to_dict() for k in found])
        return
    configured = sorted(app.settings.server.api_keys)
    rows = [[name, "admin", "config", "", ""] for name in configured]
    for k in found:
        state = "revoked" if k.revoked_at else "active"
        used = k.last_used_at.isoformat(timespec="seconds") if k.last_used_at else "never"
        rows.append([k.name, k.role, state, used, str(k.rate_limit_per_minute or "")])
    if not rows:
        note("no keys: the server is open (alice-spool keys add NAME --admin)")
        return
    click.echo(table(["NAME", "ROLE", "STATE", "LAST USED", "LIMIT/MIN"], rows))


@keys.command("revoke")
@click.argument("name")
@pass_app
def keys_revoke(app: App, name: str) -> None:
    """Revoke a key (by name or id): refused from now on, still listed."""
    record = app.store.keys.revoke_key(name)
    click.echo(f"revoked {record.name}")


@keys.command("invite")
@click.option("--uses", default=1, show_default=True, type=click.IntRange(1, 1000))
@click.option("--expires", help="How long it is good for: 12h, 7d... (default: no end).")
@json_option
@pass_app
def keys_invite(app: App, uses: int, expires: str | None, as_json: bool) -> None:
    """Make an invite code for POST /v1/auth/register (server.registration = invite)."""
    until = utcnow() + parse_duration(expires) if expires else None
    record, code = app.store.keys.create_invite(uses=uses, expires_at=until, created_by="cli")
    if as_json:
        emit_json({"code": code, **record.to_dict()})
        return
    click.echo(code)
    if app.settings.server.registration != "invite":
        note("note: server.registration is not 'invite': the code works once it is")
