"""The images themselves, for anyone holding an image's URL."""

from __future__ import annotations

import re

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from ... import errors
from ..edge import formats as image_formats
from ..edge.context import Api, route


@route(auth=False)
async def image(request: Request, api: Api, client: str | None) -> Response:
    """A job's PNG, for anyone holding its URL: the URL carries the job's image secret
    (128 random bits of its own), so a known job id opens nothing. The same name with
    `.jpeg` or `.webp` in place of `.png` is that image in that format (the OpenAI
    door's `output_format`), at `?compression=` 0-100 (100 when left out)."""
    params = request.path_params
    stem, _, suffix = params["name"].rpartition(".")
    converted = suffix in ("jpeg", "webp")
    name = f"{stem}.png" if converted else params["name"]
    path = await run_in_threadpool(api.served_image, name, params.get("secret"))
    # private: a shared cache must not keep serving an image its owner deleted
    headers = {"Cache-Control": "private, max-age=86400"}
    if not converted:
        return FileResponse(path, media_type="image/png", headers=headers)
    quality = _compression(request.query_params.get("compression"))
    png = await run_in_threadpool(path.read_bytes)
    data = await run_in_threadpool(image_formats.convert, png, suffix, quality)
    return Response(data, media_type=image_formats.FORMATS[suffix][2], headers=headers)


def _compression(text: str | None) -> int:
    if text is None:
        return 100
    if re.fullmatch("[0-9]{1,3}", text) is None or not 0 <= int(text) <= 100:
        raise errors.InvalidParameters(
            "compression must be a whole number from 0 to 100", field="compression"
        )
    return int(text)
