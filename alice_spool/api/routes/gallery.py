"""The gallery in ALICE's shapes: each image of a succeeded job,
`<job id>-<i>`, listed for its owner (an admin sees all; a public image everyone, until
its share expires), with privacy, tags and delete. The image URLs themselves stay
unguessable capability URLs that need no key (SAM fetches them without one)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    StrictBool,
    StrictFloat,
    WithJsonSchema,
)
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ...library import removal
from ...records import GalleryItem
from ...store.gallery import MAX_TAG_LENGTH, MAX_TAGS, clean_tags
from ..edge.context import Api, owner_of, principal_of, route, scope_of
from ..edge.contract import Answer, Contract, Query
from ..edge.schemas import BLANK, NO_CONTROL
from ..edge.services import image_url
from .answers import Success

MAX_PAGE = 200
SHARE_HOURS = (1, 168)  # ALICE's expiresInHours
DEFAULT_SHARE_HOURS = 24
MAX_TEXT = 200  # a search or a model id: longer is no prompt's part worth finding
ALICE = "OpenAI and ALICE"

# A tag as the server takes it (clean_tags): trimmed of Python's whitespace, then 1..50
# characters, none a control character. A filter's tag is the same where a comma
# separates two, and a blank one is left out.
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_EDGE = rf"[^{BLANK}\x00-\x1f\x7f]"
_TAG = rf"^[{BLANK}]*{_EDGE}(?:[^\x00-\x1f\x7f]{{0,{MAX_TAG_LENGTH - 2}}}{_EDGE})?[{BLANK}]*$"
_FILTER_EDGE = rf"[^{BLANK},\x00-\x1f\x7f]"
_FILTER = (
    rf"^[{BLANK}]*(?:{_FILTER_EDGE}"
    rf"(?:[^,\x00-\x1f\x7f]{{0,{MAX_TAG_LENGTH - 2}}}{_FILTER_EDGE})?)?[{BLANK}]*$"
)


def _flag(value: Any) -> Any:
    """true or false: `true`, `false`, `1`, `0`, in any case."""
    text = str(value).lower()
    if text not in ("true", "false", "1", "0"):
        raise ValueError("must be true or false")
    return text in ("true", "1")


def _utc(value: Any) -> datetime:
    """An ISO 8601 date or time as UTC (without an offset: UTC); one that is no time in
    UTC (year 1 at +14:00 is in year 0 there, which has no datetime) is refused."""
    try:
        found = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return found.replace(tzinfo=UTC) if found.tzinfo is None else found.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError("must be an ISO 8601 date or time, in years 1..9999 in UTC") from None


def _filter_tag(value: str) -> str:
    """A tag to filter by (trimmed already, by the query's reading)."""
    if len(value) > MAX_TAG_LENGTH or _CONTROL.search(value):
        raise ValueError(
            f"each is text of at most {MAX_TAG_LENGTH} characters, without control characters"
        )
    return value


Flag = Annotated[bool, BeforeValidator(_flag)]
When = Annotated[datetime, BeforeValidator(_utc)]
Text = Annotated[str, Field(max_length=MAX_TEXT, pattern=NO_CONTROL)]
FilterTag = Annotated[
    str, AfterValidator(_filter_tag), WithJsonSchema({"type": "string", "pattern": _FILTER})
]
# A tag to set: clean_tags checks it (and says what is wrong); the pattern says the same.
Tag = Annotated[str, WithJsonSchema({"type": "string", "pattern": _TAG})]


class GalleryQuery(Query):
    limit: int = Field(50, ge=1, le=MAX_PAGE, description="page")
    offset: int = Field(0, ge=0, le=10**9, description="page")
    include_public: Flag = Field(True, description="others' shared ones")
    include_private: Flag = Field(True, description="unshared ones")
    tags: list[FilterTag] = Field(
        [],
        max_length=MAX_TAGS,
        description=f"images with every one (any case; at most {MAX_TAGS}, each at most "
        f"{MAX_TAG_LENGTH} characters): repeated, or comma-separated",
    )
    search: Text | None = Field(None, description="in the prompt, any case")
    model: Text | None = Field(None, description="sd/<name>, or the name alone")
    since: When | None = Field(None, description="made at or after (no offset: UTC)")
    until: When | None = Field(None, description="made before (no offset: UTC)")


class Privacy(BaseModel):
    isPublic: StrictBool
    expiresInHours: StrictFloat | None = Field(
        DEFAULT_SHARE_HOURS,
        ge=SHARE_HOURS[0],
        le=SHARE_HOURS[1],
        description="how long it is shared (when isPublic)",
    )


class Tags(BaseModel):
    tags: list[Tag] = Field(
        max_length=MAX_TAGS,
        description=f"lower-cased and trimmed: each 1..{MAX_TAG_LENGTH} characters, "
        "no control character; repeats kept once",
    )


class Image(BaseModel):
    """ALICE's gallery item."""

    id: str  # <job id>-<index>
    filename: str
    url: str  # the image itself, for anyone holding it
    isPublic: bool
    createdAt: str
    expiresAt: str | None  # when its share ends (None: not shared)
    isOwner: bool
    prompt: str
    negativePrompt: str | None
    model: str | None
    steps: int | None
    guidanceScale: float | None
    width: int | None
    height: int | None
    seed: int | None
    scheduler: str | None
    generationTime: float | None
    loras: list[str | None]
    loraScales: list[float]
    tags: list[str]
    jobId: str


class Page(BaseModel):
    object: Literal["list"]
    data: list[Image]
    total: int  # every match, not only this page's
    limit: int
    offset: int


class Shared(Success):
    is_public: bool
    expires_at: str | None


class Tagged(Success):
    tags: list[str]


class TagCount(BaseModel):
    name: str
    count: int


class TagList(BaseModel):
    tags: list[TagCount]
    total: int


class GalleryStats(BaseModel):
    total: int
    public: int  # shared now
    private: int  # never shared, or no longer
    expired: int  # shared once, the share over


def _image_id(request: Request) -> str:
    return str(request.path_params["image_id"])  # its form checked by the route's convertor


def _view(api: Api, request: Request, item: GalleryItem) -> dict[str, Any]:
    mine = item.owner == owner_of(request)
    principal = principal_of(request)
    if item.owner is None and (principal is None or principal.admin):
        mine = True  # the admin's own: the inbox's and the CLI's images
    url = image_url(api.base_url(request), item.file, item.image_secret)
    return item.to_alice(url, is_owner=mine)


@route(contract=Contract(query=GalleryQuery, answers={200: Answer(Page)}, tag=ALICE))
async def list_gallery(
    request: Request, api: Api, client: str | None, query: GalleryQuery
) -> Response:
    """Images, newest first: a user's own and everyone's public ones (an admin's key:
    all). `include_public=false`: only one's own; `include_private=false`: only those
    shared now. Filters: `tags` (comma list, at most 20 of at most 50 characters: every
    one of them), `search` (in the prompt, any case), `model`, `since`/`until` (ISO
    8601); paging with `limit` (1..200, 50) and `offset`."""
    tags = list(dict.fromkeys(tag.lower() for tag in query.tags))
    model = query.model or None
    if model is not None and "/" not in model:
        model = f"sd/{model}"
    page = await run_in_threadpool(
        lambda: api.store.gallery.gallery_page(
            scope=scope_of(request),
            own_only=not query.include_public,
            public_only=not query.include_private,
            tags=tags,
            search=query.search or None,
            model=model,
            since=query.since,
            until=query.until,
            limit=query.limit,
            offset=query.offset,
        )
    )
    return JSONResponse(
        {
            "object": "list",
            "data": [_view(api, request, item) for item in page.items],
            "total": page.total,
            "limit": query.limit,
            "offset": query.offset,
        }
    )


@route(contract=Contract(answers={200: Answer(Image)}, tag=ALICE))
async def get_image(request: Request, api: Api, client: str | None) -> Response:
    """One image of the gallery, if the key may see it."""
    image_id = _image_id(request)
    item = await run_in_threadpool(
        lambda: api.store.gallery.gallery_image(image_id, scope=scope_of(request))
    )
    return JSONResponse(_view(api, request, item))


_ANOTHERS = {403: "another's image (one shared with everyone: seen, but not changed)"}


@route(
    contract=Contract(
        takes_body=Privacy,
        example={"isPublic": True, "expiresInHours": 24},
        answers={200: Answer(Shared)},
        errors=_ANOTHERS,
        tag=ALICE,
    )
)
async def set_privacy(request: Request, api: Api, client: str | None, body: Privacy) -> Response:
    """`{"isPublic": true, "expiresInHours": 1..168}` (24 if left out): listed for
    everyone until then; `{"isPublic": false}`: private again. Its owner or an admin
    only (another's public image: 403)."""
    image_id = _image_id(request)
    hours = DEFAULT_SHARE_HOURS if body.expiresInHours is None else body.expiresInHours
    until = datetime.now(UTC) + timedelta(hours=hours) if body.isPublic else None
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


@route(
    contract=Contract(
        takes_body=Tags,
        example={"tags": ["portrait", "dusk"]},
        answers={200: Answer(Tagged)},
        errors=_ANOTHERS,
        tag=ALICE,
    )
)
async def set_tags(request: Request, api: Api, client: str | None, body: Tags) -> Response:
    """`{"tags": [...]}`: the image's tags from now on (lower-cased, each at most 50
    characters, at most 20)."""
    image_id = _image_id(request)
    tags = clean_tags(body.tags)
    item = await run_in_threadpool(
        lambda: api.store.gallery.set_tags(image_id, tags, scope=scope_of(request))
    )
    return JSONResponse({"success": True, "tags": list(item.tags)})


@route(contract=Contract(answers={200: Answer(Success)}, errors=_ANOTHERS, tag=ALICE))
async def delete_image(request: Request, api: Api, client: str | None) -> Response:
    """Delete an image: its file (its URL 404s from now on) and its record."""
    image_id = _image_id(request)
    await run_in_threadpool(
        lambda: removal.delete_image(api.store, api.outbox, image_id, scope=scope_of(request))
    )
    return JSONResponse({"success": True})


@route(contract=Contract(answers={200: Answer(TagList)}, tag=ALICE))
async def list_tags(request: Request, api: Api, client: str | None) -> Response:
    """The tags of the images the key may see, most used first: `{tags: [{name, count}],
    total}`."""
    found = await run_in_threadpool(lambda: api.store.gallery.gallery_tags(scope=scope_of(request)))
    tags = [{"name": name, "count": count} for name, count in found]
    return JSONResponse({"tags": tags, "total": len(tags)})


@route(manage=True, contract=Contract(answers={200: Answer(GalleryStats)}, tag=ALICE))
async def stats(request: Request, api: Api, client: str | None) -> Response:
    """Every image (an admin's key): `{total, public, private, expired}` (expired: shared
    once, the share over)."""
    return JSONResponse(await run_in_threadpool(api.store.gallery.gallery_stats))
