"""What the web UI's Admin page reads: the effective configuration
with every secret masked, storage use, and the live web sessions (which an admin may
end)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ... import errors
from ...storage import storage_use
from ..edge.context import Api, route
from ..edge.contract import Answer, Contract
from .answers import Success


class Configuration(BaseModel):
    """Every section of the settings (`server`, `paths`, `generation`, ...), as the
    configuration file names them, beside the file they came from."""

    model_config = ConfigDict(extra="allow")

    config_file: str | None


class Disk(BaseModel):
    total: int
    used: int
    free: int


class Folder(BaseModel):
    path: str
    bytes: int
    files: int
    disk: Disk | None  # None: its file system could not be read


class DatabaseFile(BaseModel):
    path: str | None  # None (and no sizes): a database server's, not a file
    bytes: int | None
    disk: Disk | None


class Storage(BaseModel):
    outbox: Folder
    models: Folder
    inputs: Folder
    inbox: Folder
    database: DatabaseFile
    total_bytes: int


class Session(BaseModel):
    id: str  # a handle to end it by, never the cookie
    name: str
    role: Literal["admin", "user"]
    key_id: str | None  # None: a configured key's
    created_at: str
    last_seen_at: str
    expires_at: str


class SessionList(BaseModel):
    object: Literal["list"]
    data: list[Session]


def _iso(value: Any) -> Any:
    return value.isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else value


@route(manage=True, contract=Contract(answers={200: Answer(Configuration)}))
async def config(request: Request, api: Api, client: str | None) -> Response:
    """The configuration this server runs with, every section, with keys, tokens and
    every credential in a URL (a password, user info, a token parameter) shown as ***."""
    settings = api.settings
    return JSONResponse({"config_file": settings.config_file, **settings.to_dict()})


@route(manage=True, contract=Contract(answers={200: Answer(Storage)}))
async def storage(request: Request, api: Api, client: str | None) -> Response:
    """Bytes and files in the outbox, models, stored inputs and inbox, the database's
    size, and each one's disk (total, used, free)."""
    return JSONResponse(await run_in_threadpool(storage_use, api.settings))


@route(admin=True, contract=Contract(answers={200: Answer(SessionList)}, tag="OpenAI and ALICE"))
async def list_sessions(request: Request, api: Api, client: str | None) -> Response:
    """The live web sessions: `{data: [{id, name, role, key_id, created_at,
    last_seen_at, expires_at}]}` (`id` is a handle, never the cookie)."""
    idle = api.settings.server.session_idle_s
    found = await run_in_threadpool(lambda: api.store.keys.list_sessions(idle_s=idle))
    data = [{k: _iso(v) for k, v in row.items()} for row in found]
    return JSONResponse({"object": "list", "data": data})


@route(admin=True, contract=Contract(answers={200: Answer(Success)}, tag="OpenAI and ALICE"))
async def end_session(request: Request, api: Api, client: str | None) -> Response:
    """End a web session by its handle: its browser must log in again."""
    handle = request.path_params["session_id"]
    if not await run_in_threadpool(api.store.keys.end_session, handle):
        raise errors.SessionNotFound(f"no session {handle}")
    return JSONResponse({"success": True})
