"""The download routes: queue a model download from Hugging Face,
CivitAI or a URL (202; the workers inside `serve`/`api` run it), list, read, follow
(server-sent events) and cancel them (searching the sources: search.py). ALICE's routes
give the same in ALICE's shapes (reference/alice-today.md)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

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
from ..edge.http import WAKE_AT_LEAST_S, query_int, query_list, require_object, typed, watching

MAX_PAGE = 500
SEARCH_LIMIT = 100


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


@route()
async def create_download(request: Request, api: Api, client: str | None) -> Response:
    """Queue a download: 202 with it and its `Location`."""
    body = require_object(await api.read_body(request))
    made = await _queue(request, api, body, client)
    headers = {"Location": f"/v1/downloads/{made.id}"}
    return JSONResponse(made.to_dict(), status_code=202, headers=headers)


def _statuses(request: Request) -> list[DownloadStatus] | None:
    statuses = query_list(
        request, "status", max_items=len(DownloadStatus), max_length=20, commas=False
    )
    known = {s.value for s in DownloadStatus}
    for status in statuses:
        if status not in known:
            raise errors.InvalidParameters(f"unknown status {status!r}", field="status")
    return [DownloadStatus(s) for s in statuses] or None


@route()
async def list_downloads(request: Request, api: Api, client: str | None) -> Response:
    """Downloads, newest first; `status` (repeatable) filters, `limit` (1..500)."""
    statuses, limit = _statuses(request), query_int(request, "limit", 100, 1, MAX_PAGE)
    found = await run_in_threadpool(
        lambda: api.store.downloads.list_downloads(
            statuses=statuses, limit=limit, owner=scope_of(request)
        )
    )
    return JSONResponse({"object": "list", "data": [d.to_dict() for d in found]})


@route()
async def get_download(request: Request, api: Api, client: str | None) -> Response:
    found = await run_in_threadpool(
        api.visible_download, request, request.path_params["download_id"]
    )
    return JSONResponse(found.to_dict())


@route()
async def cancel_download(request: Request, api: Api, client: str | None) -> Response:
    """Queued: cancelled at once. Running: its worker stops at its next report and
    removes the partial files. Finished: 409."""
    found = await run_in_threadpool(
        api.visible_download, request, request.path_params["download_id"]
    )
    found = await run_in_threadpool(api.store.downloads.cancel_download, found.id)
    return JSONResponse(found.to_dict())


@route()
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


# -- search -------------------------------------------------------------------------------


_ALICE_STATUS = {
    DownloadStatus.QUEUED: "queued",
    DownloadStatus.DOWNLOADING: "downloading",
    DownloadStatus.VERIFYING: "downloading",
    DownloadStatus.SUCCEEDED: "completed",
    DownloadStatus.FAILED: "failed",
    DownloadStatus.CANCELLED: "cancelled",
}


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


def alice_body(body: Any, fields: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    body = dict(require_object(body))
    for key, kinds in fields.items():
        if (value := typed(body, key, kinds)) is not None:
            body[key] = value  # 20.0 as 20
    return body


async def _alice_queued(
    request: Request, api: Api, body: dict[str, Any], client: str | None
) -> Response:
    made = await _queue(request, api, body, client)
    return JSONResponse(
        {"status": "queued", "task_id": made.id, "task": alice_task(made)},
        status_code=202,
        headers={"Location": f"/v1/downloads/{made.id}"},
    )


def _alice_name(filename: Any) -> str | None:
    if filename is None:
        return None
    if not isinstance(filename, str) or not filename.strip():
        raise errors.InvalidParameters("filename must be a file name", field="filename")
    stem = filename.strip().rsplit("/", 1)[-1].removesuffix(".safetensors")
    return safe_name(stem, fallback="model")


@route()
async def alice_download_civitai(request: Request, api: Api, client: str | None) -> Response:
    """`{modelId, versionId?, fileId?, modelType?}`: the type comes from CivitAI."""
    body = alice_body(
        await api.read_body(request),
        {"modelId": (int, str), "versionId": (int, str), "fileId": (int, str), "modelType": str},
    )
    native = {
        "source": "civitai",
        "model_id": body.get("modelId"),
        "version_id": body.get("versionId"),
        "file_id": body.get("fileId"),
    }
    return await _alice_queued(
        request, api, {k: v for k, v in native.items() if v is not None}, client
    )


@route()
async def alice_download_huggingface(request: Request, api: Api, client: str | None) -> Response:
    """`{modelId, filename?, revision?}`."""
    body = alice_body(
        await api.read_body(request), {"modelId": str, "filename": str, "revision": str}
    )
    native = {
        "source": "huggingface",
        "repo": body.get("modelId"),
        "file": body.get("filename"),
        "revision": body.get("revision"),
    }
    if native["repo"] is None:
        raise errors.InvalidParameters("modelId is required: org/name", field="modelId")
    return await _alice_queued(
        request, api, {k: v for k, v in native.items() if v is not None}, client
    )


@route()
async def alice_download_url(request: Request, api: Api, client: str | None) -> Response:
    """`{url, filename?, isLora?}`."""
    body = alice_body(await api.read_body(request), {"url": str, "filename": str, "isLora": bool})
    native: dict[str, Any] = {"source": "url", "url": body.get("url")}
    if (name := _alice_name(body.get("filename"))) is not None:
        native["name"] = name
    if body.get("isLora") is not None:
        native["kind"] = "lora" if body["isLora"] else "checkpoint"
    return await _alice_queued(request, api, native, client)


@route()
async def alice_download_status(request: Request, api: Api, client: str | None) -> Response:
    found = await run_in_threadpool(
        lambda: api.store.downloads.list_downloads(limit=MAX_PAGE, owner=scope_of(request))
    )
    return JSONResponse({"object": "list", "data": [alice_task(d) for d in found]})


@route()
async def alice_download_status_one(request: Request, api: Api, client: str | None) -> Response:
    found = await run_in_threadpool(
        api.visible_download, request, request.path_params["download_id"]
    )
    return JSONResponse(alice_task(found))


@route()
async def alice_cancel_download(request: Request, api: Api, client: str | None) -> Response:
    found = await run_in_threadpool(
        api.visible_download, request, request.path_params["download_id"]
    )
    found = await run_in_threadpool(api.store.downloads.cancel_download, found.id)
    # Running, it stops at its worker's next report: cancelled as far as the caller goes.
    return JSONResponse({"status": "cancelled", "task_id": found.id})
