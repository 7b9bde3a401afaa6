"""The download routes: queue a model download from Hugging Face,
CivitAI or a URL (202; the workers inside `serve`/`api` run it), list, read, follow
(server-sent events) and cancel them (searching the sources: search.py). ALICE's routes
give the same in ALICE's shapes (reference/alice-today.md). What each body takes is its
model below: the same model checks it and describes it in /openapi.json."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    RootModel,
    Strict,
    WithJsonSchema,
)
from pydantic_core import core_schema
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ... import errors
from ...downloads import requests
from ...downloads.files import safe_name
from ...records import DownloadRecord
from ...states import DownloadStatus
from ..edge.context import Api, bucket_of, owner_of, route, scope_of
from ..edge.contract import Answer, Contract, Query, validated
from ..edge.http import WAKE_AT_LEAST_S, require_object, watching
from ..edge.schemas import BLANK, DOWNLOAD_NAME
from .answers import Download

MAX_PAGE = 500
SEARCH_LIMIT = 100
MAX_URL = 2048
TAG = "OpenAI and ALICE"  # ALICE's routes under /v1/models/

# -- what the bodies take -------------------------------------------------------------------


@dataclass(frozen=True)
class Matching:
    """A string field's rule: `pattern` (a JSON Schema pattern, anchored) matches it
    whole, and it has at most `max_length` characters. Python's `re` reads these
    patterns as JSON Schema's validators do, so the check and the description are one."""

    pattern: str
    what: str
    max_length: int | None = None

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        compiled = re.compile(self.pattern)
        longest = self.max_length

        def check(value: str) -> str:
            if (longest is not None and len(value) > longest) or not compiled.fullmatch(value):
                raise ValueError(f"must be {self.what}")
            return value

        return core_schema.no_info_after_validator_function(
            check, core_schema.str_schema(strict=True)
        )

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        shown: dict[str, Any] = {"type": "string", "pattern": self.pattern}
        if self.max_length is not None:
            shown["maxLength"] = self.max_length
        return shown | {"description": self.what}


def _utf8(value: str) -> str:
    try:  # JSON may escape half a surrogate pair, which no URL or row can hold
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not text: it holds a lone surrogate (\\ud800-\\udfff)") from None
    return value


Text = Annotated[str, Strict(), AfterValidator(_utf8)]


def _whole(value: Any) -> Any:
    """3.0 is an integer to JSON Schema, and to us."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Whole = Annotated[int, BeforeValidator(_whole), Strict()]

_H16 = "[0-9A-Fa-f]{1,4}"
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_LS32 = rf"(?:{_H16}:{_H16}|{_OCTET}(?:\.{_OCTET}){{3}})"


def _ipv6() -> str:
    """An IPv6 address as RFC 3986 spells one (what Python's `ipaddress` reads)."""
    forms = [rf"(?:{_H16}:){{6}}{_LS32}", rf"::(?:{_H16}:){{5}}{_LS32}"]
    tails = [rf"(?:{_H16}:){{4}}{_LS32}", rf"(?:{_H16}:){{3}}{_LS32}"]
    tails += [rf"(?:{_H16}:){{2}}{_LS32}", rf"{_H16}:{_LS32}", _LS32, _H16, ""]
    for before, tail in enumerate(tails):
        head = rf"(?:(?:{_H16}:){{0,{before}}}{_H16})?" if before else rf"(?:{_H16})?"
        forms.append(rf"{head}::{tail}")
    return "(?:" + "|".join(forms) + ")"


_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = "(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
# An http(s) URL: a host name, or an IPv6 address in brackets; a port 1..65535; then
# anything but spaces and control characters.
_URL = (
    r"[Hh][Tt][Tt][Pp][Ss]?://(?:[A-Za-z0-9._~%!$&'()*+,;=:-]*@)?"
    rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[{_ipv6()}\])(?::{_PORT})?"
    r"(?:[/?#][^\x00-\x20\x7f]*)?"
)
URL = f"^{_URL}$"
HttpUrl = Annotated[str, Matching(URL, "an http or https URL", max_length=MAX_URL)]
# The same, with blanks around it left out (as a pasted URL may have).
DownloadUrl = Annotated[
    str,
    Matching(f"^[{BLANK}]*{_URL}[{BLANK}]*$", "an http or https URL", max_length=MAX_URL),
]
_DIGITS = "^0*[1-9][0-9]{0,14}$"
_ID = {"type": "integer", "minimum": 1, "maximum": 2**53 - 1}


def _civitai_id(value: Any) -> Any:
    if isinstance(value, str) and re.fullmatch(_DIGITS, value):
        return int(value)
    return _whole(value)


CivitaiId = Annotated[
    int,
    BeforeValidator(_civitai_id),
    Strict(),
    Field(ge=1, le=2**53 - 1),
    WithJsonSchema({"anyOf": [_ID, {"type": "string", "pattern": _DIGITS}]}),
]
# `..` nowhere: a path in a repository, a branch or a tag, never a way out of them.
HubRepo = Annotated[
    str,
    Matching(
        r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$",
        "a Hugging Face repository, org/name",
    ),
]
Revision = Annotated[
    str, Matching(r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$", "a branch, tag or commit")
]
RepoFile = Annotated[
    str,
    Matching(
        r"^(?!.*\.\.)[A-Za-z0-9_.-][A-Za-z0-9_./ -]{0,255}$", "a file's path in the repository"
    ),
]
Name = Annotated[str, Matching(DOWNLOAD_NAME["pattern"], requests.NAME_RULE)]
Sha256 = Annotated[str, Matching("^[0-9a-fA-F]{64}$", "64 hex digits")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class DownloadFromHub(_Body):
    """A Hugging Face repository (a diffusers model), or one file of it (not with
    `kind: diffusers`)."""

    model_config = ConfigDict(
        json_schema_extra={
            "not": {
                "required": ["kind", "file"],
                "properties": {"kind": {"const": "diffusers"}, "file": {"type": "string"}},
            }
        }
    )

    source: Literal["huggingface"]
    repo: HubRepo
    revision: Revision | None = None
    file: RepoFile | None = None
    kind: Literal["diffusers", "checkpoint", "lora"] | None = None
    name: Name | None = Field(None, description="the installed name (else the repository's)")


def _one_of(*fields: str) -> dict[str, Any]:
    """A JSON Schema: at least one of `fields` given, and not null."""
    return {
        "anyOf": [
            {"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in fields
        ]
    }


class DownloadFromCivitai(_Body):
    """A CivitAI model's newest version, a version, or one file of either."""

    model_config = ConfigDict(json_schema_extra=_one_of("model_id", "version_id"))

    source: Literal["civitai"]
    model_id: CivitaiId | None = None
    version_id: CivitaiId | None = None
    file_id: CivitaiId | None = None
    name: Name | None = Field(None, description="the installed name (else the file's)")


class DownloadFromUrl(_Body):
    """A file at an http(s) URL. Its host must resolve to public addresses only, unless
    `models.allow_private_urls` (400 `forbidden_url`)."""

    source: Literal["url"]
    url: DownloadUrl
    kind: Literal["checkpoint", "lora"] | None = None
    name: Name | None = Field(None, description="the installed name (else the file's)")
    sha256: Sha256 | None = None


class DownloadBody(RootModel[DownloadFromHub | DownloadFromCivitai | DownloadFromUrl]):
    """A download to queue, by its `source`."""

    root: Annotated[
        DownloadFromHub | DownloadFromCivitai | DownloadFromUrl, Field(discriminator="source")
    ]


_SOURCES: dict[str, type[_Body]] = {
    "huggingface": DownloadFromHub,
    "civitai": DownloadFromCivitai,
    "url": DownloadFromUrl,
}


def native_body(raw: Any) -> dict[str, Any]:
    """The native body checked by its source's model (400 naming the field), as
    `requests.parse` takes it (ids as numbers, nulls left out)."""
    body = require_object(raw)
    source = body.get("source")
    if not isinstance(source, str) or source not in _SOURCES:
        raise errors.InvalidParameters(
            f"source must be one of {', '.join(_SOURCES)}", field="source"
        )
    return validated(_SOURCES[source], body).model_dump(exclude_none=True)


# -- what they answer ------------------------------------------------------------------------


class DownloadPage(BaseModel):
    object: Literal["list"]
    data: list[Download]


class DownloadsQuery(Query):
    status: list[DownloadStatus] | None = Field(None, description="repeatable")
    limit: int = Field(100, ge=1, le=MAX_PAGE)


_SHOWN = Answer(Download)
_EVENTS = Answer(description="progress events, then done", media="text/event-stream")
_TAKEN = "a model of that name is already installed"
_FINISHED = "the download has finished"


async def _queue(
    request: Request, api: Api, body: dict[str, Any], client: str | None
) -> DownloadRecord:
    """Check a native body (a URL's host resolved, an installed name refused) and queue
    it, the asking key's."""
    owner = owner_of(request)
    sources = api.sources

    def work() -> DownloadRecord:
        asked = requests.parse(body, allow_private_urls=sources.allow_private_urls)
        asked.check_name_free(Path(api.settings.paths.models))
        return api.store.downloads.queue_download(
            asked.source,
            asked.reference,
            kind=asked.kind,
            name=asked.name,
            client=client,
            owner=owner,
        )

    return await run_in_threadpool(work)


@route(
    contract=Contract(
        body=DownloadBody,
        example={"source": "huggingface", "repo": "stabilityai/sd-turbo"},
        answers={202: Answer(Download, "Queued")},
        errors={409: _TAKEN},
        link="download_id",
    )
)
async def create_download(request: Request, api: Api, client: str | None) -> Response:
    """Queue a download: 202 with it and its `Location`. A URL's host must resolve to
    public addresses only, unless `models.allow_private_urls` (400 `forbidden_url`)."""
    body = native_body(await api.read_body(request))
    made = await _queue(request, api, body, client)
    headers = {"Location": f"/v1/downloads/{made.id}"}
    return JSONResponse(made.to_dict(), status_code=202, headers=headers)


@route(contract=Contract(query=DownloadsQuery, answers={200: Answer(DownloadPage)}))
async def list_downloads(
    request: Request, api: Api, client: str | None, query: DownloadsQuery
) -> Response:
    """Downloads, newest first; `status` (repeatable) filters, `limit` (1..500)."""
    found = await run_in_threadpool(
        lambda: api.store.downloads.list_downloads(
            statuses=query.status or None, limit=query.limit, owner=scope_of(request)
        )
    )
    return JSONResponse({"object": "list", "data": [d.to_dict() for d in found]})


@route(contract=Contract(answers={200: _SHOWN}))
async def get_download(request: Request, api: Api, client: str | None) -> Response:
    """One download: its state and progress."""
    found = await run_in_threadpool(
        api.visible_download, request, request.path_params["download_id"]
    )
    return JSONResponse(found.to_dict())


@route(contract=Contract(answers={200: _SHOWN}, errors={409: _FINISHED}))
async def cancel_download(request: Request, api: Api, client: str | None) -> Response:
    """Queued: cancelled at once. Running: its worker stops at its next report and
    removes the partial files. Finished: 409."""
    found = await run_in_threadpool(
        api.visible_download, request, request.path_params["download_id"]
    )
    found = await run_in_threadpool(api.store.downloads.cancel_download, found.id)
    return JSONResponse(found.to_dict())


@route(
    contract=Contract(
        answers={200: _EVENTS},
        errors={429: "too many open streams (server.max_streams_per_client)"},
    )
)
async def download_events(request: Request, api: Api, client: str | None) -> Response:
    """Server-sent events: `progress` with the download whenever it changes (its worker
    writes at most 4 times a second), then one `done` with it when it ends."""
    found = await run_in_threadpool(
        api.visible_download, request, request.path_params["download_id"]
    )
    holder = bucket_of(api, request)  # the key's id, never its name
    api.streams.take(holder)  # server.max_streams_per_client: 429 past it
    return EventSourceResponse(_events(api, found.id, holder), ping=15)


async def _events(api: Api, download_id: str, holder: str) -> AsyncIterator[dict[str, Any]]:
    try:
        last: dict[str, Any] | None = None
        with watching(api.store, downloads=[download_id]) as changes:
            while True:
                found = await run_in_threadpool(api.store.downloads.get_download, download_id)
                shown = found.to_dict()
                if shown != last:
                    last = shown
                    yield {"event": "progress", "data": json.dumps(shown)}
                if found.status.finished:
                    yield {"event": "done", "data": json.dumps(shown)}
                    return
                await changes.wait_async(WAKE_AT_LEAST_S)
    finally:  # it ended, or the client went away
        api.streams.give_back(holder)


# -- ALICE's routes, in ALICE's shapes --------------------------------------------------------


_ALICE_STATUS = {
    DownloadStatus.QUEUED: "queued",
    DownloadStatus.DOWNLOADING: "downloading",
    DownloadStatus.VERIFYING: "downloading",
    DownloadStatus.SUCCEEDED: "completed",
    DownloadStatus.FAILED: "failed",
    DownloadStatus.CANCELLED: "cancelled",
}


class AliceDownloadTask(BaseModel):
    """A download as ALICE shows it."""

    id: str
    source: str
    name: str
    status: Literal["queued", "downloading", "completed", "failed", "cancelled"]
    progress: float = Field(description="percent")
    totalSize: int
    downloadedSize: int
    speed: float = Field(description="bytes per second")
    error: str | None
    model: str | None


class AliceDownloadQueued(BaseModel):
    status: Literal["queued"]
    task_id: str
    task: AliceDownloadTask


class AliceDownloadTasks(BaseModel):
    object: Literal["list"]
    data: list[AliceDownloadTask]


class AliceDownloadCancelled(BaseModel):
    status: Literal["cancelled"]
    task_id: str


def alice_task(download: DownloadRecord) -> dict[str, Any]:
    total, done = download.bytes_total, download.bytes_done
    if download.status is DownloadStatus.SUCCEEDED:
        progress = 100.0
    else:
        progress = round(100.0 * done / total, 1) if total else 0.0
    return {
        "id": download.id,
        "source": download.source,
        "name": download.name or "",
        "status": _ALICE_STATUS[download.status],
        "progress": progress,
        "totalSize": total or 0,
        "downloadedSize": done,
        "speed": download.speed_bps or 0,
        "error": download.error_message,
        "model": download.model,
    }


class AliceBody(BaseModel):
    """An ALICE body: fields it does not know are ignored, as ALICE did; a null is a
    field left out."""

    model_config = ConfigDict(extra="ignore", strict=True)


class AliceCivitaiDownload(AliceBody):
    model_config = ConfigDict(json_schema_extra=_one_of("modelId", "versionId"))

    modelId: CivitaiId | None = None
    versionId: CivitaiId | None = None
    fileId: CivitaiId | None = None
    modelType: Text | None = Field(None, description="ignored: CivitAI's type wins")


class AliceHubDownload(AliceBody):
    modelId: HubRepo
    filename: RepoFile | None = None
    revision: Revision | None = None


# Any text with something in it that is not blank: its last part becomes the name.
FileName = Annotated[str, Matching(rf"^[\s\S]*[^{BLANK}][\s\S]*$", "a file name")]


class AliceUrlDownload(AliceBody):
    url: DownloadUrl
    filename: FileName | None = Field(
        None, description="its last part, less `.safetensors`, names the model"
    )
    isLora: bool | None = None


_QUEUED = {202: Answer(AliceDownloadQueued, "Queued")}


async def _alice_queued(
    request: Request, api: Api, body: dict[str, Any], client: str | None
) -> Response:
    made = await _queue(request, api, body, client)
    return JSONResponse(
        {"status": "queued", "task_id": made.id, "task": alice_task(made)},
        status_code=202,
        headers={"Location": f"/v1/downloads/{made.id}"},
    )


def _alice_name(filename: str) -> str:
    """The installed name a file name gives: its last part, less `.safetensors`, as a
    safe name (tidied again until it stays the same: `_.x` tidies to `.x`, then `x`)."""
    name = filename.strip().rsplit("/", 1)[-1].removesuffix(".safetensors")
    while (tidied := safe_name(name, fallback="model")) != name:
        name = tidied
    return name


@route(
    contract=Contract(
        takes_body=AliceCivitaiDownload,
        example={"modelId": 4201, "versionId": 130072},
        answers=_QUEUED,
        errors={409: _TAKEN},
        tag=TAG,
    )
)
async def alice_download_civitai(
    request: Request, api: Api, client: str | None, body: AliceCivitaiDownload
) -> Response:
    """`{modelId, versionId?, fileId?, modelType?}`: the type comes from CivitAI."""
    if body.modelId is None and body.versionId is None:
        raise errors.InvalidParameters("modelId or versionId is required", field="modelId")
    native = {
        "source": "civitai",
        "model_id": body.modelId,
        "version_id": body.versionId,
        "file_id": body.fileId,
    }
    return await _alice_queued(
        request, api, {k: v for k, v in native.items() if v is not None}, client
    )


@route(
    contract=Contract(
        takes_body=AliceHubDownload,
        example={"modelId": "stabilityai/sd-turbo"},
        answers=_QUEUED,
        errors={409: _TAKEN},
        tag=TAG,
    )
)
async def alice_download_huggingface(
    request: Request, api: Api, client: str | None, body: AliceHubDownload
) -> Response:
    """`{modelId, filename?, revision?}`."""
    native = {
        "source": "huggingface",
        "repo": body.modelId,
        "file": body.filename,
        "revision": body.revision,
    }
    return await _alice_queued(
        request, api, {k: v for k, v in native.items() if v is not None}, client
    )


@route(
    contract=Contract(
        takes_body=AliceUrlDownload,
        example={"url": "https://example.com/style.safetensors", "isLora": True},
        answers=_QUEUED,
        errors={409: _TAKEN},
        tag=TAG,
    )
)
async def alice_download_url(
    request: Request, api: Api, client: str | None, body: AliceUrlDownload
) -> Response:
    """`{url, filename?, isLora?}`. The URL's host must resolve to public addresses
    only, unless `models.allow_private_urls` (400 `forbidden_url`)."""
    native: dict[str, Any] = {"source": "url", "url": body.url}
    if body.filename is not None:
        native["name"] = _alice_name(body.filename)
    if body.isLora is not None:
        native["kind"] = "lora" if body.isLora else "checkpoint"
    return await _alice_queued(request, api, native, client)


@route(contract=Contract(answers={200: Answer(AliceDownloadTasks)}, tag=TAG))
async def alice_download_status(request: Request, api: Api, client: str | None) -> Response:
    """Every download (the newest 500), in ALICE's shape."""
    found = await run_in_threadpool(
        lambda: api.store.downloads.list_downloads(limit=MAX_PAGE, owner=scope_of(request))
    )
    return JSONResponse({"object": "list", "data": [alice_task(d) for d in found]})


@route(contract=Contract(answers={200: Answer(AliceDownloadTask)}, tag=TAG))
async def alice_download_status_one(request: Request, api: Api, client: str | None) -> Response:
    """One download, in ALICE's shape."""
    found = await run_in_threadpool(
        api.visible_download, request, request.path_params["download_id"]
    )
    return JSONResponse(alice_task(found))


@route(
    contract=Contract(
        answers={200: Answer(AliceDownloadCancelled)}, errors={409: _FINISHED}, tag=TAG
    )
)
async def alice_cancel_download(request: Request, api: Api, client: str | None) -> Response:
    """Cancel a download (a running one stops at its worker's next report)."""
    found = await run_in_threadpool(
        api.visible_download, request, request.path_params["download_id"]
    )
    found = await run_in_threadpool(api.store.downloads.cancel_download, found.id)
    # Running, it stops at its worker's next report: cancelled as far as the caller goes.
    return JSONResponse({"status": "cancelled", "task_id": found.id})
