"""OpenAI's images API as OpenAI's own clients call it: generations, edits and variations
(multipart, as its SDK sends them), OpenAI's model names (aliases.py), its fields
(fields.py), and answers in the shape of the API the model name belongs to:
gpt-image names get base64 images with `usage`, DALL-E names and this server's own model
ids get URLs (by default) with `revised_prompt`."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace
from typing import Any, Literal

from PIL import Image as PILImage
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema
from starlette.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .... import aliases, errors, inputs
from ....library.registry import ModelInfo
from ....records import JobRecord
from ....spec import JobSpec, load_json, parse_spec
from ...edge import formats as image_formats
from ...edge.context import Api, route
from ...edge.contract import Answer, Contract, SchemaSource
from ...edge.http import read_bytes, require_object, wait_for_job
from ..pipeline import base64_text, finished, finished_or_raise, images_of, png_of
from . import fields as openai_fields
from .chat import QUEUES, TAG, HeldEvents, enqueue_held
from .fields import OpenAIFields

# gpt-image answers count tokens; nothing is counted here.
_NO_USAGE = {
    "input_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "output_tokens": 0,
    "output_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "total_tokens": 0,
}


class ImageItem(BaseModel):
    """One image: its URL or its base64, in the asked format."""

    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["url"]}, {"required": ["b64_json"]}]}
    )

    url: str | SkipJsonSchema[None] = Field(None, description="response_format url")
    b64_json: str | SkipJsonSchema[None] = Field(None, description="response_format b64_json")
    revised_prompt: str | SkipJsonSchema[None] = Field(
        None, description="DALL-E's and this server's model names: the prompt as it ran"
    )


class TokenDetails(BaseModel):
    image_tokens: int
    text_tokens: int


class ImageUsage(BaseModel):
    """gpt-image's token counts: nothing is counted here."""

    input_tokens: int
    input_tokens_details: TokenDetails
    output_tokens: int
    output_tokens_details: TokenDetails
    total_tokens: int


class ImagesAnswer(BaseModel):
    """OpenAI's images response, in the shape of the API the model name belongs to
    (gpt-image names add their settings and `usage`), with the model that ran and the
    job's id."""

    created: int
    data: list[ImageItem]
    model: str | None
    job_id: str = Field(description="its record: GET /v1/jobs/<id>")
    background: Literal["opaque"] | SkipJsonSchema[None] = None
    output_format: Literal["png", "jpeg", "webp"] | SkipJsonSchema[None] = None
    quality: Literal["low", "medium", "high", "xhigh", "max"] | SkipJsonSchema[None] = Field(
        None, description="the highest quality the steps that ran reach"
    )
    size: str | SkipJsonSchema[None] = Field(None, description="WxH, or auto when not known")
    usage: ImageUsage | SkipJsonSchema[None] = None


def _contract(
    *, body: SchemaSource | None = None, form: SchemaSource | None = None, example: Any = None
) -> Contract:
    """The images routes' contract: a JSON body or a form, the images or their events."""
    made = (
        "Done: the images (with `stream`: one `<kind>.completed` event per image, or an "
        "`error` one if the job fails or is not done in server.request_timeout_s)"
    )
    errors = dict(QUEUES)
    if form is not None:
        errors[415] = "the body is not multipart/form-data"
    return Contract(
        body=body,
        form=form,
        example=example,
        answers={200: Answer(ImagesAnswer, made, also={"text/event-stream": None})},
        errors=errors,
        tag=TAG,
    )


@dataclass(frozen=True)
class Asked:
    """The model a request's `model` stands for, and what it asked beyond the spec."""

    name: aliases.Resolved
    model: ModelInfo
    fields: OpenAIFields

    @property
    def gpt_image(self) -> bool:
        return self.name.kind == "gpt-image"

    @property
    def response_format(self) -> str:
        """`b64_json` always for gpt-image names (their API has nothing else), else the
        request's, `url` by default."""
        if self.gpt_image:
            return "b64_json"
        return self.fields.response_format or "url"

    def recorded(self) -> tuple[tuple[str, str | int], ...]:
        """What the job records of the request as sent (its `client_fields`)."""
        named = (("model", self.name.alias),) if self.name.alias else ()
        return tuple(sorted((*named, *self.fields.recorded)))


def model_for(api: Api, name: Any) -> tuple[aliases.Resolved, ModelInfo]:
    """The installed model a request's `model` names: an alias's, the default one for
    OpenAI's image model names (and none given), else the named one; a name that is
    none of these is `model_not_found` listing the installed models and the aliases.
    (Reads the models directory: call it from a worker thread.)"""
    if name is not None and not isinstance(name, str):
        raise errors.InvalidParameters("model must be a model name or id", field="model")
    settings = api.settings
    resolved = aliases.resolve(name, settings.models.aliases)
    try:
        if resolved.model is None:
            return resolved, api.registry.default(settings.generation.default_model)
        return resolved, api.registry.get(resolved.model)
    except errors.ModelNotFound as exc:
        names = ", ".join(sorted({*settings.models.aliases, *aliases.OPENAI_IMAGE_MODELS}))
        raise errors.ModelNotFound(f"{exc.message}; aliases: {names}", **exc.details) from None


async def _asked(api: Api, fields: dict[str, Any], openai: OpenAIFields) -> Asked:
    """The request's model resolved (its id put in `fields`), its quality as steps where
    it gives no steps, and what the model cannot make refused."""
    name, model = await run_in_threadpool(model_for, api, fields.get("model"))
    fields["model"] = model.id
    if openai.background == "transparent":
        raise errors.InvalidParameters(
            f"{model.id} cannot make a transparent background; ask for opaque or auto",
            field="background",
        )
    if fields.get("steps") is None:
        steps = openai_fields.quality_steps(
            openai.quality, model.family, model.variant, api.settings.generation.max_steps
        )
        if steps is not None:  # else the model's own default
            fields["steps"] = steps
    return Asked(name, model, openai)


@route(
    contract=_contract(
        body=openai_fields.generations_schema,
        example={"prompt": "a red fox", "size": "512x512", "n": 1},
    )
)
async def image_generations(request: Request, api: Api, client: str | None) -> Response:
    """The OpenAI images API: `prompt`, `model` (an installed model, an alias, or one of
    OpenAI's image model names), `n`, `size` (WxH or auto), `quality`, `output_format`,
    `output_compression`, `response_format`, `stream`, OpenAI's other fields (recorded),
    plus the spool's own request fields."""
    body = require_object(await api.read_body(request))
    openai, fields = openai_fields.take(body)
    if fields.get("size") == "auto":  # OpenAI's default: here, the model's native size
        del fields["size"]
    asked = await _asked(api, fields, openai)
    spec = replace(parse_spec(fields, api.settings.generation), client_fields=asked.recorded())
    return await _run(request, api, client, spec, asked, "image_generation")


@route(contract=_contract(form=openai_fields.edits_form))
async def image_edits(request: Request, api: Api, client: str | None) -> Response:
    """OpenAI's image edits (multipart, as its SDK sends them): `image`, `mask`
    (optional), `prompt`, `n`, `size`, `response_format`, `model`, OpenAI's other
    fields, plus any request field. With a mask, inpainting where the mask is fully
    transparent; without one, where `image` is, if it has transparent pixels; else
    img2img."""
    form = await _form(request, api)
    image, mask = _files(form, mask=True)
    openai, fields = openai_fields.take(form.fields)
    if fields.get("size") == "auto":  # the input's size
        del fields["size"]
    asked = await _asked(api, fields, openai)
    pixels = api.settings.generation.max_input_pixels
    init, repaint = await run_in_threadpool(edit_inputs, image, mask, pixels)
    fields["init_image"] = base64.b64encode(init).decode()
    if repaint is not None:
        fields["mask_image"] = base64.b64encode(repaint).decode()
    fields, staged = await api.submissions.stage_images(fields)
    spec = replace(parse_spec(fields, api.settings.generation), client_fields=asked.recorded())
    return await _run(request, api, client, spec, asked, "image_edit", staged)


@route(contract=_contract(form=openai_fields.variations_form))
async def image_variations(request: Request, api: Api, client: str | None) -> Response:
    """OpenAI's image variations (multipart): `image`, `n`, `size`, `response_format`,
    `model`, `user`, plus any request field: img2img of the image with no prompt, at
    `strength` 0.6 unless the request gives one."""
    form = await _form(request, api)
    image, _ = _files(form, mask=False)
    if "prompt" in form.fields:
        raise errors.InvalidParameters(
            "a variation takes no prompt; /v1/images/edits changes an image by one",
            field="prompt",
        )
    openai, fields = openai_fields.take(form.fields)
    if openai.stream:
        raise errors.InvalidParameters(
            "a variation is not streamed (OpenAI's variations have no stream)", field="stream"
        )
    if fields.get("size") == "auto":
        del fields["size"]
    asked = await _asked(api, fields, openai)
    pixels = api.settings.generation.max_input_pixels
    await run_in_threadpool(inputs.decode, "image", image, pixels)
    fields["init_image"] = base64.b64encode(image).decode()
    if fields.get("strength") is None:
        fields["strength"] = openai_fields.VARIATION_STRENGTH
    fields, staged = await api.submissions.stage_images(fields)
    spec = replace(parse_spec(fields, api.settings.generation), client_fields=asked.recorded())
    return await _run(request, api, client, spec, asked, "image_variation", staged)


async def _run(
    request: Request,
    api: Api,
    client: str | None,
    spec: JobSpec,
    asked: Asked,
    event: str,
    staged: inputs.Staged | None = None,
) -> Response:
    """Queue the job; answer when it is done, or as server-sent events (`stream`)."""
    stream = asked.fields.stream
    job, release = await enqueue_held(request, api, spec, client, staged, stream=stream)
    if release is not None:
        timeout = api.settings.server.request_timeout_s
        return HeldEvents(_events(request, api, job, asked, event, timeout), release)
    done = await finished(api, job.id)
    return JSONResponse(await _answer(request, api, done, asked))


async def _items(
    request: Request, api: Api, done: JobRecord, asked: Asked, *, inline: bool = False
) -> list[dict[str, Any]]:
    """The answer's images: URLs (in the asked format) or base64 of that format
    (`inline`: base64 whatever was asked, as a stream's events carry them)."""
    fields = asked.fields
    items: list[dict[str, Any]] = []
    if asked.response_format == "url" and not inline:
        items = [{"url": _as_format(url, fields)} for url in api.image_urls(request, done)]
    else:
        for image in images_of(done):
            if image.get("deleted") or "file" not in image:
                continue
            png = await png_of(api, image)
            data = await run_in_threadpool(
                image_formats.convert, png, fields.output_format, fields.output_compression
            )
            items.append({"b64_json": base64_text(data)})
    if not asked.gpt_image and not inline and done.spec.prompt:  # DALL-E's only
        for item in items:
            item["revised_prompt"] = done.spec.prompt
    return items


def _as_format(url: str, fields: OpenAIFields) -> str:
    """An image's URL for the asked format: the PNG's, or the same name with the
    format's suffix (made from the PNG when fetched) and its compression if not 100."""
    if fields.suffix == "png":
        return url
    converted = url.removesuffix(".png") + "." + fields.suffix
    if fields.output_compression != 100:
        converted += f"?compression={fields.output_compression}"
    return converted


async def _answer(request: Request, api: Api, done: JobRecord, asked: Asked) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "created": int(done.created_at.timestamp()),
        "data": await _items(request, api, done, asked),
        "model": done.model,  # the model that ran, whatever name was asked for
        "job_id": done.id,  # its record: GET /v1/jobs/<id>
    }
    if asked.gpt_image:
        answer.update(_gpt_image_details(done, asked))
    return answer


def _gpt_image_details(done: JobRecord, asked: Asked) -> dict[str, Any]:
    """What gpt-image's answers add: the settings used, and `usage` (nothing counted)."""
    ran = (done.result or {}).get("spec") or done.spec.to_dict()
    # A record without the size it ran at (not run by a runner): the model's, if known.
    width, height = (ran[side] or asked.model.native_size for side in ("width", "height"))
    return {
        "background": "opaque",
        "output_format": asked.fields.suffix,
        "quality": openai_fields.quality_of(
            int(ran["steps"]), asked.model.family, asked.model.variant
        ),
        "size": f"{width}x{height}" if width and height else "auto",
        "usage": _NO_USAGE,
    }


async def _events(
    request: Request, api: Api, job: JobRecord, asked: Asked, event: str, timeout: float
) -> AsyncIterator[dict[str, str]]:
    """gpt-image's stream, whatever the model name: one `<event>.completed` per image
    (base64 in the asked format) once the job is done (no partial images), or an
    `error` event."""
    try:
        done = finished_or_raise(await wait_for_job(api.store, job.id, timeout))
        items = await _items(request, api, done, asked, inline=True)
    except errors.SpoolError as exc:
        error = {"type": "error", "error": {"code": exc.code, "message": exc.message}}
        yield {"event": "error", "data": json.dumps(error)}
        return
    details = _gpt_image_details(done, asked)
    for item in items:
        completed = {
            "type": f"{event}.completed",
            "created_at": int(done.created_at.timestamp()),
            **{k: v for k, v in details.items() if k != "usage"},
            **item,
            "usage": details["usage"],
        }
        yield {"event": completed["type"], "data": json.dumps(completed)}


@dataclass(frozen=True)
class _Form:
    fields: dict[str, Any]
    files: dict[str, bytes]


async def _form(request: Request, api: Api) -> _Form:
    """A multipart body read within the image body limit: its files, and its text
    fields as the request fields they stand for."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "multipart/form-data":
        raise errors.UnsupportedMediaType("the body must be multipart/form-data, as OpenAI's")
    server = api.settings.server
    body = await read_bytes(request, server.max_image_body_bytes, server.body_timeout_s)
    form = await _multipart(request, body)
    files = {k: v for k, v in form.items() if isinstance(v, bytes)}
    fields = {k: _form_value(k, v) for k, v in form.items() if isinstance(v, str)}
    return _Form(fields, files)


def _files(form: _Form, *, mask: bool) -> tuple[bytes, bytes | None]:
    """The form's `image` (or `image[]`) and, where the route takes one, `mask`."""
    files = dict(form.files)
    image = files.pop("image", None) or files.pop("image[]", None)
    if image is None:
        raise errors.InvalidParameters(
            "image is required (a PNG, JPEG or WebP file)", field="image"
        )
    marks = files.pop("mask", None) if mask else None
    if files:
        raise errors.InvalidParameters(f"unknown file {next(iter(files))!r}", field="image")
    return image, marks


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


def _form_value(name: str, text: str) -> Any:
    """A form field's text as the request field it stands for: numbers and lists
    from their JSON spelling, names and prompts as they are."""
    if name in openai_fields.FORM_TEXT:
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
