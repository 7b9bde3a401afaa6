"""Keys, invites and registration over HTTP, in ALICE's shapes:
admins make, list, revoke and delete keys and invites; anyone may ask who they are and
how registration works, and register a user key when `server.registration` allows it.
No route ever makes a key without an admin's key (or an invite): the first admin key is
made on the server itself (`alice-spool keys add NAME --admin`) or configured."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ... import errors
from ...records import KeyRecord
from ...store import utcnow
from ...store.keys import MAX_RATE_LIMIT, digest
from ..edge.context import Api, principal_of, route
from ..edge.http import SESSION_COOKIE, bounded, require_object, typed

MAX_INVITE_HOURS = 24 * 365


def _shown(record: KeyRecord, secret: str) -> dict[str, Any]:
    return {"key": secret, "info": record.to_dict()}


@route(admin=True)
async def generate_key(request: Request, api: Api, client: str | None) -> Response:
    """Make a key (`{"name", "isAdmin"?, "rateLimitPerMinute"?}`): the key is in this
    answer only; the server keeps its SHA-256. A name any key has, configured or
    stored, is `key_exists` (409)."""
    body = require_object(await api.read_body(request))
    name = typed(body, "name", str)
    admin = typed(body, "isAdmin", bool)
    limit = bounded(body, "rateLimitPerMinute", None, 0, MAX_RATE_LIMIT, whole=True)
    record, secret = await run_in_threadpool(
        lambda: api.store.keys.add_key(
            name or "",
            role="admin" if admin else "user",
            rate_limit_per_minute=limit,
            created_by=client,
            reserved=api.settings.server.api_keys,
        )
    )
    return JSONResponse(_shown(record, secret), status_code=201)


@route(admin=True)
async def list_keys(request: Request, api: Api, client: str | None) -> Response:
    """Every key: those in the database (revoked ones too), and the configured ones."""
    stored = await run_in_threadpool(api.store.keys.list_keys)
    configured = [
        {
            "id": None,
            "name": name,
            "role": "admin",
            "isAdmin": True,
            "enabled": True,
            "source": "config",
        }
        for name in api.settings.server.api_keys
    ]
    data = configured + [{**k.to_dict(), "source": "database"} for k in stored]
    return JSONResponse({"object": "list", "data": data})


@route(admin=True)
async def revoke_key(request: Request, api: Api, client: str | None) -> Response:
    found = await run_in_threadpool(api.store.keys.revoke_key, request.path_params["key_id"])
    return JSONResponse({"success": True, "info": found.to_dict()})


@route(admin=True)
async def delete_key(request: Request, api: Api, client: str | None) -> Response:
    found = await run_in_threadpool(api.store.keys.delete_key, request.path_params["key_id"])
    return JSONResponse({"success": True, "id": found.id})


@route()
async def me(request: Request, api: Api, client: str | None) -> Response:
    """Who this key is; on a server with no keys, everyone is its one (admin) user."""
    principal = principal_of(request)
    if principal is None:
        return JSONResponse(
            {
                "authenticated": False,
                "auth_required": False,
                "access_level": "admin",
                "is_admin": True,
            }
        )
    return JSONResponse(
        {
            "authenticated": True,
            "auth_required": True,
            "access_level": principal.role,
            "is_admin": principal.admin,
            "key_id": principal.key_id,
            "name": principal.name,
        }
    )


@route(auth=False)
async def registration_mode(request: Request, api: Api, client: str | None) -> Response:
    required = await run_in_threadpool(lambda: api.keys.required)
    return JSONResponse({"mode": api.settings.server.registration, "require_auth": required})


@route(auth=False)
async def register(request: Request, api: Api, client: str | None) -> Response:
    """`{"name", "invite_code"}` -> a user key (never an admin's), when
    `server.registration` is `invite` (a valid code spent) or `open`; 403 when it is
    `disabled` (the default); a name any key has, configured or stored, is
    `key_exists` (409). Failures count against the address like wrong keys."""
    address = api.client_address(request)
    api.auth_failures.check(address, spend=False)
    mode = api.settings.server.registration
    if mode == "disabled":
        raise errors.Forbidden("registration is disabled on this server (server.registration)")
    body = require_object(await api.read_body(request))
    name = typed(body, "name", str)
    code = typed(body, "invite_code", str)
    if mode == "invite" and not code:
        raise errors.InvalidParameters("an invite_code is required", field="invite_code")
    try:
        record, secret = await run_in_threadpool(
            lambda: api.store.keys.register(
                name or "",
                invite_code=code if mode == "invite" else None,
                reserved=api.settings.server.api_keys,
            )
        )
    except errors.InviteInvalid:
        api.auth_failures.check(address)  # a guessed code costs as a guessed key does
        raise
    return JSONResponse(_shown(record, secret), status_code=201)


@route(admin=True)
async def create_invite(request: Request, api: Api, client: str | None) -> Response:
    """`{"uses"?: 1, "expiresHours"?}` -> the code (shown this once)."""
    body = require_object(await api.read_body(request))
    uses = typed(body, "uses", int) or 1
    hours = typed(body, "expiresHours", (int, float))
    if hours is not None and not 0 < hours <= MAX_INVITE_HOURS:
        raise errors.InvalidParameters(
            f"expiresHours must be 0..{MAX_INVITE_HOURS}", field="expiresHours"
        )
    expires = utcnow() + timedelta(hours=hours) if hours is not None else None
    record, code = await run_in_threadpool(
        lambda: api.store.keys.create_invite(uses=uses, expires_at=expires, created_by=client)
    )
    return JSONResponse({"code": code, **record.to_dict()}, status_code=201)


@route(admin=True)
async def list_invites(request: Request, api: Api, client: str | None) -> Response:
    found = await run_in_threadpool(api.store.keys.list_invites)
    return JSONResponse({"object": "list", "data": [i.to_dict() for i in found]})


@route(admin=True)
async def delete_invite(request: Request, api: Api, client: str | None) -> Response:
    """By the invite's id or its code."""
    found = await run_in_threadpool(api.store.keys.delete_invite, request.path_params["code"])
    return JSONResponse({"success": True, "id": found.id})


@route(auth=False)
async def login(request: Request, api: Api, client: str | None) -> Response:
    """`{"key"}` -> a web session: an HttpOnly, SameSite=Strict cookie (Secure behind
    HTTPS) holding a random session id, never the key; it ends at logout, after
    `server.session_idle_s` unused, `server.session_max_s` after this login, or as soon
    as the key it was opened with is revoked, deleted, replaced or no longer configured
    (each use checks it). A wrong key counts against the address as it does anywhere."""
    address = api.client_address(request)
    api.auth_failures.check(address, spend=False)
    body = require_object(await api.read_body(request))
    key = typed(body, "key", str)
    if not key:
        raise errors.InvalidParameters("key is required", field="key")
    if not await run_in_threadpool(lambda: api.keys.required):
        raise errors.InvalidParameters("this server has no API keys: there is nothing to log in to")
    try:
        principal = await run_in_threadpool(api.keys.principal, key)
    except errors.Unauthorized:
        api.auth_failures.check(address)
        raise
    server = api.settings.server
    session = await run_in_threadpool(
        lambda: api.store.keys.open_session(
            principal.name,
            principal.role,
            principal.key_id,
            max_s=server.session_max_s,
            key_sha256=principal.key_sha256 or digest(key),
        )
    )
    answer = JSONResponse(
        {
            "authenticated": True,
            "name": principal.name,
            "access_level": principal.role,
            "is_admin": principal.admin,
            "expires_in_s": server.session_max_s,
        }
    )
    answer.set_cookie(
        SESSION_COOKIE,
        session,
        max_age=int(server.session_max_s),
        path="/",
        httponly=True,
        samesite="strict",
        secure=api.base_url(request).startswith("https://"),
    )
    return answer


@route(auth=False)
async def logout(request: Request, api: Api, client: str | None) -> Response:
    """End this browser's session (its cookie cleared)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    ended = bool(cookie) and await run_in_threadpool(api.store.keys.close_session, cookie or "")
    answer = JSONResponse({"success": True, "ended": ended})
    answer.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return answer
