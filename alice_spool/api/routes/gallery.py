"""The gallery in ALICE's shapes: each image of a succeeded job,
`<job id>-<i>`, listed for its owner (an admin sees all; a public image everyone, until
its share expires), with privacy, tags and delete. The image URLs themselves stay
unguessable capability URLs that need no key (SAM fetches them without one)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ... import errors
from ...library import removal
from ...records import GalleryItem
from ...store.gallery import MAX_TAG_LENGTH, MAX_TAGS, clean_tags
from ..edge.context import Api, image_url, owner_of, principal_of, route, scope_of
from ..edge.http import is_plain_text, query_flag, query_int, query_list, require_object, typed

MAX_PAGE = 200
SHARE_HOURS = (1, 168)  # ALICE's expiresInHours
DEFAULT_SHARE_HOURS = 24
MAX_TEXT = 200  # a search or a model id: longer is no prompt's part worth finding


def _image_id(request: Request) -> str:
    return str(request.path_params["image_id"])  # its form checked by the route's convertor


def _view(api: Api, request: Request, item: GalleryItem) -> dict[str, Any]:
    mine = item.owner == owner_of(request)
    principal = principal_of(request)
    if item.owner is None and (principal is None or principal.admin):
        mine = True  # the admin's own: the inbox's and the CLI's images
    url = image_url(api.base_url(request), item.file, item.image_secret)
    return item.to_alice(url, is_owner=mine)


def _when(text: str | None, field: str) -> datetime | None:
    """An ISO 8601 date or time as UTC; 400 naming `field` if it is none, or if it is
    no time in UTC (year 1 at +14:00 is in year 0 there, which has no datetime)."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (ValueError, OverflowError):
        raise errors.InvalidParameters(
            f"{field} must be an ISO 8601 date or time, in years 1..9999 in UTC", field=field
        ) from None


def _text(query: QueryParams, field: str) -> str | None:
    """A free-text filter (the search, the model): at most `MAX_TEXT` characters, none
    a control character."""
    text = query.get(field) or None
    if text is not None and (len(text) > MAX_TEXT or not is_plain_text(text)):
        raise errors.InvalidParameters(
            f"{field} is text of at most {MAX_TEXT} characters, without control characters",
            field=field,
        )
    return text


@route()
async def list_gallery(request: Request, api: Api, client: str | None) -> Response:
    """Images, newest first: a user's own and everyone's public ones (an admin's key:
    all). `include_public=false`: only one's own; `include_private=false`: only those
    shared now. Filters: `tags` (comma list, at most 20 of at most 50 characters: every
    one of them), `search` (in the prompt, any case), `model`, `since`/`until` (ISO
    8601); paging with `limit` (1..200, 50) and `offset`."""
    query = request.query_params
    found = query_list(request, "tags", max_items=MAX_TAGS, max_length=MAX_TAG_LENGTH)
    tags = list(dict.fromkeys(tag.lower() for tag in found))
    limit = query_int(request, "limit", 50, 1, MAX_PAGE)
    offset = query_int(request, "offset", 0, 0, 10**9)
    since, until = _when(query.get("since"), "since"), _when(query.get("until"), "until")
    search, model = _text(query, "search"), _text(query, "model")
    if model is not None and "/" not in model:
        model = f"sd/{model}"
    page = await run_in_threadpool(
        lambda: api.store.gallery.gallery_page(
            scope=scope_of(request),
            own_only=not query_flag(query.get("include_public"), "include_public", True),
            public_only=not query_flag(query.get("include_private"), "include_private", True),
            tags=tags,
            search=search,
            model=model,
            since=since,
            until=until,
            limit=limit,
            offset=offset,
        )
    )
    return JSONResponse(
        {
            "object": "list",
            "data": [_view(api, request, item) for item in page.items],
            "total": page.total,
            "limit": limit,
            "offset": offset,
        }
    )


@route()
async def get_image(request: Request, api: Api, client: str | None) -> Response:
    """One image of the gallery, if the key may see it."""
    image_id = _image_id(request)
    item = await run_in_threadpool(
        lambda: api.store.gallery.gallery_image(image_id, scope=scope_of(request))
    )
    return JSONResponse(_view(api, request, item))


@route()
async def set_privacy(request: Request, api: Api, client: str | None) -> Response:
    """`{"isPublic": true, "expiresInHours": 1..168}` (24 if left out): listed for
    everyone until then; `{"isPublic": false}`: private again. Its owner or an admin
    only (another's public image: 403)."""
    image_id = _image_id(request)
    body = require_object(await api.read_body(request))
    public = typed(body, "isPublic", bool)
    if public is None:
        raise errors.InvalidParameters("isPublic (true or false) is required", field="isPublic")
    hours = typed(body, "expiresInHours", (int, float))
    if hours is None:
        hours = DEFAULT_SHARE_HOURS
    if not SHARE_HOURS[0] <= hours <= SHARE_HOURS[1]:
        raise errors.InvalidParameters(
            f"expiresInHours must be {SHARE_HOURS[0]}..{SHARE_HOURS[1]}", field="expiresInHours"
        )
    until = datetime.now(UTC) + timedelta(hours=hours) if public else None
    item = await run_in_threadpool(
        lambda: api.store.gallery.set_privacy(image_id, until, scope=scope_of(request))
    )
    return JSONResponse(
        {
            "success": True,
            "is_public": item.public,
            "expires_at": _view(api, request, item)["expiresAt"],
        }
    )


@route()
async def set_tags(request: Request, api: Api, client: str | None) -> Response:
    """`{"tags": [...]}`: the image's tags from now on (lower-cased, each at most 50
    characters, at most 20)."""
    image_id = _image_id(request)
    body = require_object(await api.read_body(request))
    if "tags" not in body:
        raise errors.InvalidParameters("tags is required", field="tags")
    tags = clean_tags(body["tags"])
    item = await run_in_threadpool(
        lambda: api.store.gallery.set_tags(image_id, tags, scope=scope_of(request))
    )
    return JSONResponse({"success": True, "tags": list(item.tags)})


@route()
async def delete_image(request: Request, api: Api, client: str | None) -> Response:
    """Delete an image: its file (its URL 404s from now on) and its record."""
    image_id = _image_id(request)
    await run_in_threadpool(
        lambda: removal.delete_image(api.store, api.outbox, image_id, scope=scope_of(request))
    )
    return JSONResponse({"success": True})


@route()
async def list_tags(request: Request, api: Api, client: str | None) -> Response:
    """The tags of the images the key may see, most used first: `{tags: [{name, count}],
    total}`."""
    found = await run_in_threadpool(lambda: api.store.gallery.gallery_tags(scope=scope_of(request)))
    tags = [{"name": name, "count": count} for name, count in found]
    return JSONResponse({"tags": tags, "total": len(tags)})


@route(manage=True)
async def stats(request: Request, api: Api, client: str | None) -> Response:
    """Every image (an admin's key): `{total, public, private, expired}` (expired: shared
    once, the share over)."""
    return JSONResponse(await run_in_threadpool(api.store.gallery.gallery_stats))
