"""The images themselves, for anyone holding an image's URL."""

from __future__ import annotations

from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from ..edge import formats as image_formats
from ..edge.context import Api, route
from ..edge.contract import Answer, Contract, Query

_BINARY = {"type": "string", "format": "binary"}


class ImageQuery(Query):
    compression: int = Field(
        100, ge=0, le=100, description="a .jpeg or .webp image's quality (a .png ignores it)"
    )


@route(
    auth=False,
    contract=Contract(
        query=ImageQuery,
        answers={
            200: Answer(
                _BINARY,
                "The image: PNG; for a .jpeg or .webp name, that image as JPEG or WebP",
                media="image/png",
                also={"image/jpeg": _BINARY, "image/webp": _BINARY},
            )
        },
    ),
)
async def image(request: Request, api: Api, client: str | None, query: ImageQuery) -> Response:
    """A job's PNG, for anyone holding its URL: the URL carries the job's image secret
    (128 random bits of its own), so a known job id opens nothing. The same name with
    `.jpeg` or `.webp` in place of `.png` is that image in that format (the OpenAI
    door's `output_format`), at `?compression=` 0-100 (100 when left out)."""
    params = request.path_params
    stem, _, suffix = params["name"].rpartition(".")
    converted = suffix in ("jpeg", "webp")
    name = f"{stem}.png" if converted else params["name"]
    path = await run_in_threadpool(api.image_files.served, name, params.get("secret"))
    # private: a shared cache must not keep serving an image its owner deleted
    headers = {"Cache-Control": "private, max-age=86400"}
    if not converted:
        return FileResponse(path, media_type="image/png", headers=headers)
    png = await run_in_threadpool(path.read_bytes)
    data = await run_in_threadpool(image_formats.convert, png, suffix, query.compression)
    return Response(data, media_type=image_formats.FORMATS[suffix][2], headers=headers)
