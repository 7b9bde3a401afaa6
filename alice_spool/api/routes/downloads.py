"""The download routes: queue a model download from Hugging Face,
CivitAI or a URL (202; the workers inside `serve`/`api` run it), list, read, follow
(server-sent events) and cancel them (searching the sources: search.py). ALICE's routes
give the same in ALICE's shapes (reference/alice-today.md). What each body takes is its
model below: the same model checks it and describes it in /openapi.json."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)
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
from ..edge.contract import Answer, Contract, Query
from ..edge.http import WAKE_AT_LEAST_S, watching
from ..edge.schemas import BLANK
from .answers import Download
from .download_bodies import (
    CivitaiId,
    DownloadBody,
    DownloadUrl,
    HubRepo,
    Matching,
    RepoFile,
    Revision,
    Text,
    native_body,
    one_of,
)

MAX_PAGE = 500
SEARCH_LIMIT = 100
TAG = "OpenAI and ALICE"  # ALICE's routes under /v1/models/

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
    model_config = ConfigDict(json_schema_extra=one_of("modelId", "versionId"))

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
