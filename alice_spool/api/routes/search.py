"""Model search: CivitAI and the Hub searched through their APIs,
natively (`GET /v1/models/search`) and in ALICE's shapes (`POST /v1/models/search/...`),
and CivitAI's preview images passed through (`/v1/models/thumbnail`)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ... import errors, urls
from ...downloads import civitai, huggingface
from ...downloads.plan import SearchPage
from ..edge.context import Api, route
from ..edge.http import query_flag, query_int, query_list
from .downloads import SEARCH_LIMIT, alice_body


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


def _alice_civitai_item(item: dict[str, Any], base: str) -> dict[str, Any]:
    """One CivitAI model in ALICE's search answer, each file with CivitAI's own link
    (without a token: it needs the caller's own key; downloads through us need none)."""
    return {
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


@route()
async def alice_search_civitai(request: Request, api: Api, client: str | None) -> Response:
    body = alice_body(
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
    data = [_alice_civitai_item(item, base) for item in page.data]
    more = page.next_cursor is not None
    return JSONResponse(
        {"object": "list", "data": data, "page": number, "has_more": more, "cached": False}
    )


@route()
async def alice_search_huggingface(request: Request, api: Api, client: str | None) -> Response:
    body = alice_body(
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
