"""The download routes (DESIGN section 11): queue a model download from Hugging Face,
CivitAI or a URL (202; the workers inside `serve`/`api` run it), list, read, follow
(server-sent events) and cancel them, and search both sources. ALICE's routes give the
same in ALICE's shapes (reference/alice-today.md); its CivitAI links carry no token."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import errors, urls
from ..downloads import civitai, huggingface, requests
from ..downloads.files import safe_name
from ..downloads.plan import SearchPage
from ..models import DownloadStatus
from ..records import DownloadRecord
from .context import Api, bucket_of, owner_of, route, scope_of
from .http import (
    WAKE_AT_LEAST_S,
    query_flag,
    query_int,
    query_list,
    require_object,
    typed,
    watching,
)

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
        return api.store.queue_download(
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
        lambda: api.store.list_downloads(statuses=statuses, limit=limit, owner=scope_of(request))
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
    found = await run_in_threadpool(api.store.cancel_download, found.id)
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
                found = await run_in_threadpool(api.store.get_download, download_id)
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


def _types(values: list[str]) -> list[str]:
    """CivitAI's type names, repeated or comma-separated, matched without case."""
    by_lower = {t.lower(): t for t in civitai.TYPES}
    chosen = []
    for value in values:
        for part in filter(None, (p.strip() for p in value.split(","))):
            if part.lower() not in by_lower:
                raise errors.InvalidParameters(
                    f"unknown type {part!r}: one of {', '.join(civitai.TYPES)}", field="types"
                )
            chosen.append(by_lower[part.lower()])
    return chosen


def _search(
    api: Api,
    source: str,
    query: str,
    *,
    types: list[str],
    sort: str | None,
    nsfw: bool,
    limit: int,
    cursor: str | None,
) -> SearchPage:
    if len(query) > 200:
        raise errors.InvalidParameters("query must be at most 200 characters", field="query")
    if cursor is not None and (len(cursor) > 200 or not cursor.isprintable()):
        raise errors.InvalidParameters("cursor is not one this server gave", field="cursor")
    if source == "civitai":
        if sort is not None and sort not in civitai.SORTS:
            raise errors.InvalidParameters(
                f"sort must be one of {', '.join(civitai.SORTS)}", field="sort"
            )
        if cursor is not None and not query and not cursor.isdigit():
            raise errors.InvalidParameters("cursor is not one this server gave", field="cursor")
        return civitai.search(
            api.sources,
            query,
            types=types,
            sort=sort,
            nsfw=nsfw,
            limit=min(limit, civitai.MAX_LIMIT),
            cursor=cursor,
        )
    if source == "huggingface":
        if sort is not None and sort not in huggingface.SORTS:
            raise errors.InvalidParameters(
                f"sort must be one of {', '.join(huggingface.SORTS)}", field="sort"
            )
        if cursor is not None and not cursor.isdigit():
            raise errors.InvalidParameters("cursor is not one this server gave", field="cursor")
        return huggingface.search(
            api.sources, query, sort=sort or "downloads", limit=limit, cursor=cursor
        )
    raise errors.InvalidParameters("source must be civitai or huggingface", field="source")


@route()
async def search_models(request: Request, api: Api, client: str | None) -> Response:
    """`?source=civitai|huggingface&query=&types=&sort=&nsfw=false&cursor=&limit=` ->
    `{"data": [...], "next_cursor"}` (null on the last page)."""
    params = request.query_params
    page = await run_in_threadpool(
        lambda: _search(
            api,
            params.get("source", "civitai"),
            params.get("query", ""),
            types=_types(query_list(request, "types", max_items=len(civitai.TYPES), max_length=40)),
            sort=params.get("sort") or None,
            nsfw=query_flag(params.get("nsfw"), "nsfw"),
            limit=query_int(request, "limit", 20, 1, SEARCH_LIMIT),
            cursor=params.get("cursor") or None,
        )
    )
    return JSONResponse({"object": "list", "data": page.data, "next_cursor": page.next_cursor})


THUMBNAIL_HOSTS = ("image.civitai.com",)  # where CivitAI keeps its preview images
MAX_THUMBNAIL_BYTES = 8 << 20
_IMAGE_TYPES = {
    b"\x89PNG": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"RIFF": "image/webp",
    b"GIF8": "image/gif",
}


@route()
async def thumbnail(request: Request, api: Api, client: str | None) -> Response:
    """A search result's preview image, fetched by this server from CivitAI's image
    host (or the configured CivitAI), never from anywhere else: the web UI shows
    thumbnails under its own strict policy, and a browser never contacts CivitAI."""
    url = request.query_params.get("url", "")
    base = urlsplit(api.settings.models.civitai_url).hostname or ""
    try:
        host = (urlsplit(url).hostname or "").lower() if url else ""
    except ValueError:  # "http://[::1": not a URL at all
        raise errors.InvalidParameters("url is not a valid URL", field="url") from None
    if host not in (base, *THUMBNAIL_HOSTS):
        raise errors.ForbiddenUrl("only CivitAI's preview images are fetched", field="url")
    rules = urls.UrlRules.trusting(api.settings.models.civitai_url)  # its origin only
    timeout_s = api.settings.models.fetch_timeout_s
    body = await run_in_threadpool(
        lambda: urls.fetch(
            url, rules, max_bytes=MAX_THUMBNAIL_BYTES, field="url", timeout_s=timeout_s
        )
    )
    kind = next((t for magic, t in _IMAGE_TYPES.items() if body.startswith(magic)), None)
    if kind is None:
        raise errors.InvalidParameters("url: the preview is not an image", field="url")
    return Response(body, media_type=kind, headers={"Cache-Control": "private, max-age=86400"})


# -- ALICE's routes, in ALICE's shapes ---------------------------------------------------

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


def _alice_body(body: Any, fields: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    body = dict(require_object(body))
    for key, kinds in fields.items():
        if (value := typed(body, key, kinds)) is not None:
            body[key] = value  # 20.0 as 20
    return body


@route()
async def alice_search_civitai(request: Request, api: Api, client: str | None) -> Response:
    body = _alice_body(
        await api.read_body(request),
        {"query": str, "types": (list, str), "sort": str, "nsfw": bool, "limit": int, "page": int},
    )
    types = body.get("types") or []
    types = _types([types] if isinstance(types, str) else [str(t) for t in types])
    limit = body.get("limit") or 20
    number = body.get("page") or 1
    if not 1 <= limit <= civitai.MAX_LIMIT or not 1 <= number <= 50:
        raise errors.InvalidParameters("limit must be 1..100 and page 1..50", field="limit")
    query = body.get("query") or ""

    def work() -> SearchPage:
        def ask(cursor: str | None) -> SearchPage:
            return _search(
                api,
                "civitai",
                query,
                types=types,
                sort=body.get("sort"),
                nsfw=bool(body.get("nsfw")),
                limit=limit,
                cursor=cursor,
            )

        if not query:
            return ask(str(number))  # browsing pages by number
        page = ask(None)
        for _ in range(number - 1):  # a search pages by cursor: walk to the page asked for
            if page.next_cursor is None:
                return SearchPage([], None)
            page = ask(page.next_cursor)
        return page

    page = await run_in_threadpool(work)
    base = api.settings.models.civitai_url
    data = [
        {
            "id": item["id"],
            "name": item["name"],
            "type": item["type"],
            "creator": item["creator"],
            "images": item["images"],
            "rating": item["rating"],
            "download_count": item["downloads"],
            "tags": item["tags"],
            "nsfw": item["nsfw"],
            "versions": [
                {
                    "id": version["id"],
                    "name": version["name"],
                    "baseModel": version["base_model"],
                    "files": [
                        {
                            "id": f["id"],
                            "name": f["name"],
                            "sizeKB": f["size_kb"],
                            # CivitAI's own link, without a token (it needs the
                            # caller's own key; downloads through us need none)
                            "downloadUrl": f"{base}/api/download/models/{version['id']}"
                            f"?fileId={f['id']}",
                        }
                        for f in version["files"]
                    ],
                }
                for version in item["versions"]
            ],
        }
        for item in page.data
    ]
    more = page.next_cursor is not None
    return JSONResponse(
        {"object": "list", "data": data, "page": number, "has_more": more, "cached": False}
    )


@route()
async def alice_search_huggingface(request: Request, api: Api, client: str | None) -> Response:
    body = _alice_body(
        await api.read_body(request),
        {"query": str, "filterTags": list, "sort": str, "limit": int},
    )
    limit = body.get("limit") or 20
    if not 1 <= limit <= SEARCH_LIMIT:
        raise errors.InvalidParameters(f"limit must be 1..{SEARCH_LIMIT}", field="limit")
    tags = [str(t) for t in body.get("filterTags") or []]
    page = await run_in_threadpool(
        lambda: _search(
            api,
            "huggingface",
            body.get("query") or "",
            types=[],
            sort=body.get("sort"),
            nsfw=False,
            limit=limit,
            cursor=None,
        )
    )
    data = [
        {
            "id": item["id"],
            "author": item["author"],
            "last_modified": item["last_modified"],
            "downloads": item["downloads"],
            "likes": item["likes"],
            "tags": item["tags"],
            "pipeline_tag": item["pipeline_tag"],
        }
        for item in page.data
        if set(tags) <= set(item["tags"])
    ]
    return JSONResponse({"object": "list", "data": data})


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
    body = _alice_body(
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
    body = _alice_body(
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
    body = _alice_body(await api.read_body(request), {"url": str, "filename": str, "isLora": bool})
    native: dict[str, Any] = {"source": "url", "url": body.get("url")}
    if (name := _alice_name(body.get("filename"))) is not None:
        native["name"] = name
    if body.get("isLora") is not None:
        native["kind"] = "lora" if body["isLora"] else "checkpoint"
    return await _alice_queued(request, api, native, client)


@route()
async def alice_download_status(request: Request, api: Api, client: str | None) -> Response:
    found = await run_in_threadpool(
        lambda: api.store.list_downloads(limit=MAX_PAGE, owner=scope_of(request))
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
    found = await run_in_threadpool(api.store.cancel_download, found.id)
    # Running, it stops at its worker's next report: cancelled as far as the caller goes.
    return JSONResponse({"status": "cancelled", "task_id": found.id})
