"""Keys, invites and registration over HTTP, in ALICE's shapes:
admins make, list, revoke and delete keys and invites; anyone may ask who they are and
how registration works, and register a user key when `server.registration` allows it.
No route ever makes a key without an admin's key (or an invite): the first admin key is
made on the server itself (`alice-spool keys add NAME --admin`) or configured."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, StrictBool, StrictFloat
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ... import errors
from ...config import Settings
from ...records import KeyRecord
from ...store import utcnow
from ...store.keys import MAX_RATE_LIMIT, digest
from ..edge.context import Api, principal_of, route
from ..edge.contract import Answer, Contract, validated
from ..edge.http import SESSION_COOKIE
from ..edge.schemas import KEY_NAME_PATTERN
from .answers import Success

MAX_INVITE_HOURS = 24 * 365
MAX_INVITE_USES = 1000  # as the store takes them (store.keys.create_invite)
ALICE = "OpenAI and ALICE"


def _whole(value: Any) -> Any:
    """A JSON number that is whole (3.0 is, as JSON Schema's integers; true is not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a whole number")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("must be a whole number")
    return int(value)


def _unicode(value: str) -> str:
    """Text, not half of a surrogate pair (which JSON can escape alone, and which no
    database, hash or answer can encode)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not text: it holds a lone surrogate (\\ud800-\\udfff)") from None
    return value


Text = Annotated[str, AfterValidator(_unicode)]
KeyName = Annotated[
    str,
    Field(
        pattern=KEY_NAME_PATTERN,
        description="1..64 letters, digits, space and . _ @ - (a letter or digit first); "
        "unique without case among every key, configured or stored",
    ),
]


class NewKey(BaseModel):
    name: KeyName
    isAdmin: StrictBool | None = None
    rateLimitPerMinute: (
        Annotated[int, Field(ge=0, le=MAX_RATE_LIMIT), BeforeValidator(_whole)] | None
    ) = Field(None, description="requests a minute (server.rate_limit_per_minute if absent)")


class Registration(BaseModel):
    """Registration's body where `server.registration` is `open` (or `disabled`, which
    refuses every one)."""

    name: KeyName
    invite_code: Text | None = Field(None, description="not needed: registration is open")


class InvitedRegistration(BaseModel):
    """Registration's body where `server.registration` is `invite`."""

    name: KeyName
    invite_code: Text = Field(min_length=1, description="the code an admin gave you")


def _registration(settings: Settings) -> type[Registration | InvitedRegistration]:
    """The body registration takes on this server (whether it needs an invite code)."""
    return InvitedRegistration if settings.server.registration == "invite" else Registration


class Login(BaseModel):
    key: Text = Field(min_length=1)


class NewInvite(BaseModel):
    uses: Annotated[int, Field(ge=1, le=MAX_INVITE_USES), BeforeValidator(_whole)] | None = 1
    expiresHours: StrictFloat | None = Field(
        None, gt=0, le=MAX_INVITE_HOURS, description="none: it never expires"
    )


class KeyInfo(BaseModel):
    """A key as the store keeps it: never the key itself."""

    id: str
    name: str
    role: Literal["admin", "user"]
    isAdmin: bool
    enabled: bool
    createdAt: str
    lastUsed: str | None
    revokedAt: str | None
    rateLimitPerMinute: int | None


class MadeKey(BaseModel):
    key: str  # shown in this answer only
    info: KeyInfo


class ListedKey(BaseModel):
    """A stored key (`source` database), or a configured one (no id, no dates)."""

    id: str | None
    name: str
    role: Literal["admin", "user"]
    isAdmin: bool
    enabled: bool
    source: Literal["config", "database"]
    createdAt: str | None = None
    lastUsed: str | None = None
    revokedAt: str | None = None
    rateLimitPerMinute: int | None = None


class KeyList(BaseModel):
    object: Literal["list"]
    data: list[ListedKey]


class Revoked(Success):
    info: KeyInfo


class Deleted(Success):
    id: str


class Me(BaseModel):
    authenticated: bool
    auth_required: bool
    access_level: Literal["admin", "user"]
    is_admin: bool
    key_id: str | None = None  # a key's: None for a configured one
    name: str | None = None  # absent on a server with no keys


class RegistrationMode(BaseModel):
    mode: Literal["disabled", "invite", "open"]
    require_auth: bool


class Invite(BaseModel):
    id: str
    hint: str  # the code's first characters
    uses_remaining: int
    expires_at: str | None
    created_at: str


class MadeInvite(Invite):
    code: str  # shown in this answer only


class InviteList(BaseModel):
    object: Literal["list"]
    data: list[Invite]


class LoggedIn(BaseModel):
    authenticated: bool
    name: str
    access_level: Literal["admin", "user"]
    is_admin: bool
    expires_in_s: float


class LoggedOut(Success):
    ended: bool  # false: this browser had no live session


_MADE = "Made: the key or code is in this answer only"
_NAME_TAKEN = {409: "a key of that name exists, configured or stored (key_exists)"}


def _shown(record: KeyRecord, secret: str) -> dict[str, Any]:
    return {"key": secret, "info": record.to_dict()}


@route(
    admin=True,
    contract=Contract(
        takes_body=NewKey,
        example={"name": "alice", "isAdmin": False},
        answers={201: Answer(MadeKey, _MADE)},
        errors=_NAME_TAKEN,
        tag=ALICE,
    ),
)
async def generate_key(request: Request, api: Api, client: str | None, body: NewKey) -> Response:
    """Make a key (`{"name", "isAdmin"?, "rateLimitPerMinute"?}`): the key is in this
    answer only; the server keeps its SHA-256. A name any key has, configured or
    stored, is `key_exists` (409)."""
    record, secret = await run_in_threadpool(
        lambda: api.store.keys.add_key(
            body.name,
            role="admin" if body.isAdmin else "user",
            rate_limit_per_minute=body.rateLimitPerMinute,
            created_by=client,
            reserved=api.settings.server.api_keys,
        )
    )
    return JSONResponse(_shown(record, secret), status_code=201)


@route(admin=True, contract=Contract(answers={200: Answer(KeyList)}, tag=ALICE))
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


@route(admin=True, contract=Contract(answers={200: Answer(Revoked)}, tag=ALICE))
async def revoke_key(request: Request, api: Api, client: str | None) -> Response:
    """Revoke a key: refused from now on, kept in the list."""
    found = await run_in_threadpool(api.store.keys.revoke_key, request.path_params["key_id"])
    return JSONResponse({"success": True, "info": found.to_dict()})


@route(admin=True, contract=Contract(answers={200: Answer(Deleted)}, tag=ALICE))
async def delete_key(request: Request, api: Api, client: str | None) -> Response:
    """Delete a key: refused from now on, and gone from the list."""
    found = await run_in_threadpool(api.store.keys.delete_key, request.path_params["key_id"])
    return JSONResponse({"success": True, "id": found.id})


@route(contract=Contract(answers={200: Answer(Me)}, tag=ALICE))
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


@route(auth=False, contract=Contract(answers={200: Answer(RegistrationMode)}, tag=ALICE))
async def registration_mode(request: Request, api: Api, client: str | None) -> Response:
    """How keys are had here (`server.registration`), and whether the API needs one."""
    required = await run_in_threadpool(lambda: api.keys.required)
    return JSONResponse({"mode": api.settings.server.registration, "require_auth": required})


_GUESSES = "too many wrong keys or codes from this address lately (Retry-After)"


@route(
    auth=False,
    contract=Contract(
        body=_registration,
        example={"name": "bob", "invite_code": "the code an admin gave you"},
        answers={201: Answer(MadeKey, _MADE)},
        errors={
            403: "registration is disabled (server.registration), or the invite code is "
            "not valid (invite_invalid: unknown, used up or expired)",
            **_NAME_TAKEN,
            429: _GUESSES,
        },
        tag=ALICE,
    ),
)
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
    body = validated(_registration(api.settings), await api.read_body(request))
    code = body.invite_code
    try:
        record, secret = await run_in_threadpool(
            lambda: api.store.keys.register(
                body.name,
                invite_code=code if mode == "invite" else None,
                reserved=api.settings.server.api_keys,
            )
        )
    except errors.InviteInvalid:
        api.auth_failures.check(address)  # a guessed code costs as a guessed key does
        raise
    return JSONResponse(_shown(record, secret), status_code=201)


@route(
    admin=True,
    contract=Contract(
        takes_body=NewInvite,
        example={"uses": 1, "expiresHours": 168},
        answers={201: Answer(MadeInvite, _MADE)},
        tag=ALICE,
    ),
)
async def create_invite(
    request: Request, api: Api, client: str | None, body: NewInvite
) -> Response:
    """`{"uses"?: 1, "expiresHours"?}` -> the code (shown this once)."""
    hours = body.expiresHours
    expires = utcnow() + timedelta(hours=hours) if hours is not None else None
    record, code = await run_in_threadpool(
        lambda: api.store.keys.create_invite(
            uses=body.uses or 1, expires_at=expires, created_by=client
        )
    )
    return JSONResponse({"code": code, **record.to_dict()}, status_code=201)


@route(admin=True, contract=Contract(answers={200: Answer(InviteList)}, tag=ALICE))
async def list_invites(request: Request, api: Api, client: str | None) -> Response:
    """The invites not yet deleted (never their codes)."""
    found = await run_in_threadpool(api.store.keys.list_invites)
    return JSONResponse({"object": "list", "data": [i.to_dict() for i in found]})


@route(admin=True, contract=Contract(answers={200: Answer(Deleted)}, tag=ALICE))
async def delete_invite(request: Request, api: Api, client: str | None) -> Response:
    """By the invite's id or its code."""
    found = await run_in_threadpool(api.store.keys.delete_invite, request.path_params["code"])
    return JSONResponse({"success": True, "id": found.id})


@route(
    auth=False,
    contract=Contract(
        takes_body=Login,
        example={"key": "sd-..."},
        answers={200: Answer(LoggedIn, "Logged in: the session cookie is set")},
        errors={401: "the key is not valid, or was revoked", 429: _GUESSES},
        tag=ALICE,
    ),
)
async def login(request: Request, api: Api, client: str | None, body: Login) -> Response:
    """`{"key"}` -> a web session: an HttpOnly, SameSite=Strict cookie (Secure behind
    HTTPS) holding a random session id, never the key; it ends at logout, after
    `server.session_idle_s` unused, `server.session_max_s` after this login, or as soon
    as the key it was opened with is revoked, deleted, replaced or no longer configured
    (each use checks it). A wrong key counts against the address as it does anywhere;
    a server with no keys has nothing to log in to (400)."""
    address = api.client_address(request)
    api.auth_failures.check(address, spend=False)
    key = body.key
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


@route(auth=False, contract=Contract(answers={200: Answer(LoggedOut)}, tag=ALICE))
async def logout(request: Request, api: Api, client: str | None) -> Response:
    """End this browser's session (its cookie cleared)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    ended = bool(cookie) and await run_in_threadpool(api.store.keys.close_session, cookie or "")
    answer = JSONResponse({"success": True, "ended": ended})
    answer.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return answer
