"""OpenAI's images API: generations, and edits as its SDK sends them (multipart); the
answers in OpenAI's shapes (URLs or base64)."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncGenerator
from typing import Any

from PIL import Image as PILImage
from starlette.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import errors, inputs
from ..models import Source
from ..records import JobRecord
from ..spec import JobSpec, load_json, parse_spec
from .context import Api, route
from .http import read_bytes, require_object, wait_for_job
from .openai import enqueue_job, finished_or_raise

# OpenAI image-API fields that have no meaning here and are accepted and ignored.
_IGNORED_IMAGE_FIELDS = (
    "quality", "style", "user", "background", "moderation", "output_format",
    "output_compression", "partial_images", "stream", "response_format", "input_fidelity",
)  # fmt: skip


@route()
async def image_generations(request: Request, api: Api, client: str | None) -> Response:
    """The OpenAI images API: `prompt`, `model`, `n`, `size`, `response_format`, plus
    the spec's own fields."""
    body = require_object(await api.read_body(request))
    response_format = body.get("response_format") or "url"
    if response_format not in ("url", "b64_json"):
        raise errors.InvalidParameters(
            "response_format must be url or b64_json", field="response_format"
        )
    fields = {k: v for k, v in body.items() if k not in _IGNORED_IMAGE_FIELDS}
    if fields.get("size") == "auto":  # OpenAI's default: here, the model's native size
        del fields["size"]
    spec = parse_spec(fields, api.settings.generation)  # "WxH" sizes included
    job = await enqueue_job(request, api, spec, Source.OPENAI, client)
    return await _images_answer(request, api, job, spec, response_format)


async def _images_answer(
    request: Request, api: Api, job: JobRecord, spec: JobSpec, response_format: str
) -> Response:
    """Wait for the job; answer as OpenAI's images API does (URLs or base64)."""
    timeout = api.settings.server.request_timeout_s
    done = finished_or_raise(await wait_for_job(api.store, job.id, timeout))
    data: list[dict[str, Any]] = []
    if response_format == "url":
        data = [
            {"url": url, "revised_prompt": spec.prompt} for url in api.image_urls(request, done)
        ]
    else:
        for image in (done.result or {}).get("images", []):
            png = await run_in_threadpool(api.image_path(image["file"]).read_bytes)
            data.append({"b64_json": base64.b64encode(png).decode(), "revised_prompt": spec.prompt})
    return JSONResponse({"created": int(done.created_at.timestamp()), "data": data})


@route()
async def image_edits(request: Request, api: Api, client: str | None) -> Response:
    """OpenAI's image edits (multipart, as its SDK sends them): `image`, `mask`
    (optional), `prompt`, `n`, `size`, `response_format`, `model`, plus any request
    field. With a mask, inpainting where the mask is fully transparent; without one,
    where `image` is, if it has transparent pixels; else img2img."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "multipart/form-data":
        raise errors.UnsupportedMediaType("the body must be multipart/form-data, as OpenAI's")
    server = api.settings.server
    body = await read_bytes(request, server.max_image_body_bytes, server.body_timeout_s)
    form = await _multipart(request, body)
    files = {k: v for k, v in form.items() if isinstance(v, bytes)}
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    image = files.pop("image", None) or files.pop("image[]", None)
    if image is None:
        raise errors.InvalidParameters(
            "image is required (a PNG, JPEG or WebP file)", field="image"
        )
    mask = files.pop("mask", None)
    if files:
        raise errors.InvalidParameters(f"unknown file {next(iter(files))!r}", field="image")
    response_format = fields.pop("response_format", None) or "url"
    if response_format not in ("url", "b64_json"):
        raise errors.InvalidParameters(
            "response_format must be url or b64_json", field="response_format"
        )
    values: dict[str, Any] = {
        k: _form_value(k, v) for k, v in fields.items() if k not in _IGNORED_IMAGE_FIELDS
    }
    if values.get("size") == "auto":
        del values["size"]
    pixels = api.settings.generation.max_input_pixels
    init, repaint = await run_in_threadpool(edit_inputs, image, mask, pixels)
    values["init_image"] = base64.b64encode(init).decode()
    if repaint is not None:
        values["mask_image"] = base64.b64encode(repaint).decode()
    values, staged = await run_in_threadpool(api.take_images, values)
    spec = parse_spec(values, api.settings.generation)
    job = await enqueue_job(request, api, spec, Source.OPENAI, client, staged)
    return await _images_answer(request, api, job, spec, response_format)


async def _multipart(request: Request, body: bytes) -> dict[str, str | bytes]:
    """The form's fields (text) and files (bytes), from a body read within its limit."""

    async def chunks() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        parser = MultiPartParser(request.headers, chunks(), max_files=4, max_fields=64)
        form = await parser.parse()
    except (MultiPartException, ValueError, KeyError) as exc:
        raise errors.InvalidParameters(f"the multipart body cannot be read: {exc}") from None
    parts: dict[str, str | bytes] = {}
    for name, value in form.multi_items():
        if name in parts:
            raise errors.InvalidParameters(f"{name} is given more than once", field=name)
        parts[name] = value if isinstance(value, str) else await value.read()
    await form.close()
    return parts


_FORM_TEXT = ("prompt", "negative_prompt", "model", "size", "scheduler", "user", "quality")


def _form_value(name: str, text: str) -> Any:
    """A form field's text as the request field it stands for: numbers and lists
    from their JSON spelling, names and prompts as they are."""
    if name in _FORM_TEXT:
        return text
    try:
        return load_json(text)
    except ValueError:
        return text


def edit_inputs(image: bytes, mask: bytes | None, max_pixels: int) -> tuple[bytes, bytes | None]:
    """OpenAI's edit inputs as the spool's: the image (as sent), and a mask where white
    marks the fully transparent pixels of `mask` (or of `image`, without a mask; a mask
    without transparency is read as the native one: white repaints); None for img2img
    (no mask, and an image without transparent pixels)."""
    decoded = inputs.decode("image", image, max_pixels)
    source = mask if mask is not None else image
    if mask is not None:
        marks = inputs.decode("mask", mask, max_pixels)
        if (marks.width, marks.height) != (decoded.width, decoded.height):
            raise errors.InvalidParameters(
                f"mask is {marks.width}x{marks.height} and image {decoded.width}x"
                f"{decoded.height}: they must be the same size",
                field="mask",
            )
    with PILImage.open(io.BytesIO(source)) as opened:
        has_alpha = opened.mode in ("RGBA", "LA", "PA") or "transparency" in opened.info
        if not has_alpha:
            if mask is None:
                return image, None  # img2img
            # A mask without transparency: white repaints, as the native mask_image.
            repaint = opened.convert("L")
        else:
            alpha = opened.convert("RGBA").getchannel("A")
            repaint = alpha.point(lambda a: 255 if a == 0 else 0)
    if mask is None and repaint.getbbox() is None:  # nothing transparent: img2img
        return image, None
    buffer = io.BytesIO()
    repaint.save(buffer, "PNG")
    return image, buffer.getvalue()
