"""Model search: CivitAI and the Hub searched through their APIs,
natively (`GET /v1/models/search`) and in ALICE's shapes (`POST /v1/models/search/...`),
and CivitAI's preview images passed through (`/v1/models/thumbnail`)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ... import errors, urls
from ...downloads import civitai, huggingface
from ...downloads.plan import SearchPage
from ..edge.context import Api, route
from ..edge.contract import Answer, Contract, Query
from ..edge.errors import error_response
from ..edge.schemas import BLANK
from .download_bodies import HttpUrl, Matching, OneOf, Text, Whole
from .downloads import SEARCH_LIMIT, TAG, AliceBody

MAX_QUERY = 200
MAX_HUB_SKIP = civitai.PAGE_MODE_END  # past it one search would walk the Hub's listing
SOURCES_FAILED = "CivitAI or the Hugging Face Hub did not answer as it should"


# -- what the searches take -----------------------------------------------------------------


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in word)


_TYPE = "(?:" + "|".join(_any_case(t) for t in civitai.TYPES) + ")"
_PART = f"[{BLANK}]*(?:{_TYPE}[{BLANK}]*)?"
# CivitAI's type names in any case, comma-separated; blank parts are left out.
CivitaiTypes = Annotated[
    str,
    Matching(
        f"^{_PART}(?:,{_PART})*$",
        f"CivitAI's type names, any case, comma-separated: {', '.join(civitai.TYPES)}",
    ),
]


def _types(values: list[str]) -> list[str]:
    """CivitAI's own names of the types in `values` (each checked as `CivitaiTypes`)."""
    by_lower = {t.lower(): t for t in civitai.TYPES}
    parts = (part.strip() for value in values for part in value.split(","))
    return list(dict.fromkeys(by_lower[part.lower()] for part in parts if part))


CivitaiSort = Annotated[str, OneOf(civitai.SORTS, "CivitAI's order")]
HubSort = Annotated[str, OneOf(huggingface.SORTS, "the Hub's order")]
AnySort = Annotated[
    str,
    OneOf(
        civitai.SORTS + huggingface.SORTS,
        "CivitAI's orders, or the Hub's; a source leaves an order it does not have for its own",
    ),
]
Cursor = Annotated[
    str, Matching("^[!-~]{0,200}$", "the next_cursor of the previous page (empty: the first)")
]
Flag = Annotated[str, Matching("^(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|1|0)$", "true or false")]


class SearchQuery(Query):
    source: Literal["civitai", "huggingface"] = "civitai"
    query: Text = Field("", max_length=MAX_QUERY, description="words to find (empty: browse)")
    types: list[CivitaiTypes] = Field(
        default_factory=list, description="CivitAI's types, repeated or comma-separated"
    )
    sort: AnySort | None = None
    nsfw: Flag = "false"
    cursor: Cursor = ""
    limit: int = Field(20, ge=1, le=SEARCH_LIMIT)


class NoSuchPage(Exception):
    """The cursor names no page of this search: it is not one this search gives."""


def _check_number(cursor: str, low: int, high: int) -> None:
    """`NoSuchPage` unless a paging cursor is a number in low..high."""
    if not cursor.isascii() or not cursor.isdigit() or not low <= int(cursor) <= high:
        raise NoSuchPage(f"cursor {cursor!r} names no page of this search")


def _search(
    api: Api,
    source: str,
    query: str,
    *,
    types: list[str],
    sort: str | None,
    nsfw: bool,
    limit: int,
    cursor: str,
) -> SearchPage:
    """One page of a search, CivitAI's or the Hub's. Browsing CivitAI pages by number
    (as far as CivitAI lists by number); a CivitAI search by CivitAI's own cursor; the
    Hub by how many were shown (at most MAX_HUB_SKIP)."""
    if source == "civitai":
        limit = min(limit, civitai.MAX_LIMIT)
        if cursor and not query:
            _check_number(cursor, 1, civitai.PAGE_MODE_END // limit)
        return civitai.search(
            api.sources,
            query,
            types=types,
            sort=sort if sort in civitai.SORTS else None,
            nsfw=nsfw,
            limit=limit,
            cursor=cursor or None,
        )
    if cursor:
        _check_number(cursor, 0, MAX_HUB_SKIP)
    page = huggingface.search(
        api.sources,
        query,
        sort=sort if sort in huggingface.SORTS else "downloads",
        limit=limit,
        cursor=cursor or None,
    )
    further = page.next_cursor is not None and int(page.next_cursor) <= MAX_HUB_SKIP
    return SearchPage(page.data, page.next_cursor if further else None)


class CivitaiFile(BaseModel):
    id: int | None
    name: str | None
    size_kb: float | None
    type: str | None
    format: str | None
    primary: bool


class CivitaiVersion(BaseModel):
    id: int | None
    name: str | None
    base_model: str | None
    trained_words: list[str]
    files: list[CivitaiFile]


class CivitaiResult(BaseModel):
    """A CivitAI model as a search shows it."""

    source: Literal["civitai"]
    id: int | None
    name: str | None
    type: str | None
    installs_as: Literal["checkpoint", "lora"] | None
    nsfw: bool
    creator: str | None
    tags: list[str]
    thumbnail: str | None
    images: list[str]
    downloads: int | None
    rating: float | None
    versions: list[CivitaiVersion]


class HubResult(BaseModel):
    """A Hugging Face repository as a search shows it."""

    source: Literal["huggingface"]
    id: str
    name: str
    type: Literal["lora", "diffusers"]
    author: str
    downloads: int | None
    likes: int | None
    tags: list[str]
    pipeline_tag: str | None
    last_modified: str | None
    gated: bool


class ModelSearchResults(BaseModel):
    object: Literal["list"]
    data: list[CivitaiResult | HubResult]
    next_cursor: str | None = Field(description="null on the last page")


@route(
    contract=Contract(
        query=SearchQuery,
        answers={200: Answer(ModelSearchResults)},
        errors={404: "the cursor names no page of this search", 502: SOURCES_FAILED},
    )
)
async def search_models(
    request: Request, api: Api, client: str | None, query: SearchQuery
) -> Response:
    """Search CivitAI or the Hub: `{"data": [...], "next_cursor"}` (null on the last
    page). `types` and `nsfw` are CivitAI's; a cursor from another search is a 404."""
    try:
        page = await run_in_threadpool(
            lambda: _search(
                api,
                query.source,
                query.query,
                types=_types(query.types),
                sort=query.sort,
                nsfw=query.nsfw.lower() in ("true", "1"),
                limit=query.limit,
                cursor=query.cursor,
            )
        )
    except NoSuchPage as exc:
        return error_response("page_not_found", str(exc), status=404, param="cursor")
    return JSONResponse({"object": "list", "data": page.data, "next_cursor": page.next_cursor})


THUMBNAIL_HOSTS = ("image.civitai.com",)  # where CivitAI keeps its preview images
MAX_THUMBNAIL_BYTES = 8 << 20
_IMAGE_TYPES = {
    b"\x89PNG": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"RIFF": "image/webp",
    b"GIF8": "image/gif",
}


class ThumbnailQuery(Query):
    url: HttpUrl = Field(
        description="a search result's thumbnail: on CivitAI's image host, or the "
        "configured CivitAI's (models.civitai_url)"
    )


@route(
    contract=Contract(
        query=ThumbnailQuery,
        answers={200: Answer(description="the image", media="image/*")},
        errors={
            403: "not CivitAI's image host (forbidden_url), or an address that may not be fetched",
            502: "CivitAI's image host failed, or answered with something not an image",
        },
    )
)
async def thumbnail(
    request: Request, api: Api, client: str | None, query: ThumbnailQuery
) -> Response:
    """A search result's preview image, fetched by this server from CivitAI's image
    host (or the configured CivitAI), never from anywhere else (403): the web UI shows
    thumbnails under its own strict policy, and a browser never contacts CivitAI."""
    url: str = query.url
    base = urlsplit(api.settings.models.civitai_url).hostname or ""
    if (urlsplit(url).hostname or "").lower() not in (base, *THUMBNAIL_HOSTS):
        return _refused("only CivitAI's preview images are fetched")
    rules = urls.UrlRules.trusting(api.settings.models.civitai_url)  # its origin only
    timeout_s = api.settings.models.fetch_timeout_s
    try:
        body = await run_in_threadpool(
            lambda: urls.fetch(
                url, rules, max_bytes=MAX_THUMBNAIL_BYTES, field="url", timeout_s=timeout_s
            )
        )
    except errors.ForbiddenUrl as exc:  # a hop to an address the rules refuse
        return _refused(exc.message)
    except errors.InvalidParameters as exc:  # CivitAI failed: not the request's fault
        raise errors.SourceUnavailable(f"the preview could not be fetched: {exc.message}") from None
    kind = next((t for magic, t in _IMAGE_TYPES.items() if body.startswith(magic)), None)
    if kind is None:
        raise errors.SourceUnavailable("url: the preview is not an image")
    return Response(body, media_type=kind, headers={"Cache-Control": "private, max-age=86400"})


def _refused(message: str) -> Response:
    return error_response("forbidden_url", message, status=403, param="url")


# -- ALICE's routes, in ALICE's shapes ---------------------------------------------------


class AliceCivitaiSearch(AliceBody):
    query: Text = Field("", max_length=MAX_QUERY)
    types: list[CivitaiTypes] | CivitaiTypes | None = None
    sort: CivitaiSort | None = None
    nsfw: bool | None = None
    limit: Whole = Field(20, ge=1, le=civitai.MAX_LIMIT)
    page: Whole = Field(1, ge=1, le=50)


class AliceCivitaiFile(BaseModel):
    id: int | None
    name: str | None
    sizeKB: float | None
    downloadUrl: str = Field(description="CivitAI's own link: it needs the caller's key")


class AliceCivitaiVersion(BaseModel):
    id: int | None
    name: str | None
    baseModel: str | None
    files: list[AliceCivitaiFile]


class AliceCivitaiModel(BaseModel):
    id: int | None
    name: str | None
    type: str | None
    creator: str | None
    images: list[str]
    rating: float | None
    download_count: int | None
    tags: list[str]
    nsfw: bool
    versions: list[AliceCivitaiVersion]


class AliceCivitaiPage(BaseModel):
    object: Literal["list"]
    data: list[AliceCivitaiModel]
    page: int
    has_more: bool
    cached: bool


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
                        "downloadUrl": f"{base}/api/download/models/{version['id']}"
                        f"?fileId={f['id']}",
                    }
                    for f in version["files"]
                ],
            }
            for version in item["versions"]
        ],
    }


@route(
    contract=Contract(
        takes_body=AliceCivitaiSearch,
        example={"query": "", "types": ["LORA"], "sort": "Highest Rated"},
        answers={200: Answer(AliceCivitaiPage)},
        errors={502: "CivitAI did not answer as it should"},
        tag=TAG,
    )
)
async def alice_search_civitai(
    request: Request, api: Api, client: str | None, body: AliceCivitaiSearch
) -> Response:
    """CivitAI's models, a page by its number: browsing pages as CivitAI numbers them
    (as far as it does: further pages are empty); a search walks CivitAI's cursors to
    the page."""
    given = body.types or []
    types = _types([given] if isinstance(given, str) else given)
    limit, number, query = body.limit, body.page, body.query

    def ask(cursor: str) -> SearchPage:
        return _search(
            api,
            "civitai",
            query,
            types=types,
            sort=body.sort,
            nsfw=bool(body.nsfw),
            limit=limit,
            cursor=cursor,
        )

    def work() -> SearchPage:
        if not query:  # browsing: pages by number, as far as CivitAI numbers them
            if number * limit > civitai.PAGE_MODE_END:
                return SearchPage([], None)
            return ask(str(number))
        page = ask("")
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


class AliceHubSearch(AliceBody):
    query: Text = Field("", max_length=MAX_QUERY)
    filterTags: list[Text] | None = Field(None, description="repositories with every one")
    sort: HubSort | None = None
    limit: Whole = Field(20, ge=1, le=SEARCH_LIMIT)


class AliceHubModel(BaseModel):
    id: str
    author: str
    last_modified: str | None
    downloads: int | None
    likes: int | None
    tags: list[str]
    pipeline_tag: str | None


class AliceHubPage(BaseModel):
    object: Literal["list"]
    data: list[AliceHubModel]


@route(
    contract=Contract(
        takes_body=AliceHubSearch,
        example={"query": "stable diffusion", "sort": "downloads"},
        answers={200: Answer(AliceHubPage)},
        errors={502: "the Hugging Face Hub did not answer as it should"},
        tag=TAG,
    )
)
async def alice_search_huggingface(
    request: Request, api: Api, client: str | None, body: AliceHubSearch
) -> Response:
    """The Hub's text-to-image diffusers repositories, in ALICE's shape."""
    tags = set(body.filterTags or [])
    page = await run_in_threadpool(
        lambda: _search(
            api,
            "huggingface",
            body.query,
            types=[],
            sort=body.sort,
            nsfw=False,
            limit=body.limit,
            cursor="",
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
        if tags <= set(item["tags"])
    ]
    return JSONResponse({"object": "list", "data": data})
