"""AUTOMATIC1111's txt2img and img2img: its body, translated (`translate`), is queued
like every other door's job (source `a1111`); the answer waits for the job and is shaped
as A1111 shapes it (base64 images in the client's `samples_format`, `parameters`, `info`
as a JSON string with the seeds and infotexts)."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

from PIL import Image, ImageOps
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .... import __version__, errors, inputs
from ....records import JobRecord
from ....samplers import to_a1111
from ....spec import JobSpec, parse_spec
from ...edge import formats as image_formats
from ...edge.context import Api, owner_of, route
from ...edge.contract import Answer, Contract
from ...edge.http import require_object
from ..pipeline import base64_text, finished, images_of, png_of, submit
from .answers import generated
from .body import EXAMPLE_IMAGE, img2img_schema, txt2img_schema
from .lists import infotext_settings
from .options import (
    A1111,
    TAG,
    OwnerOptions,
    check_changes,
    checkpoint_title,
    keep,
    owner_options,
)
from .translate import IMG2IMG, TXT2IMG, in_their_terms, is_given, native, numbers


def _inverted(fields: dict[str, Any], staged: inputs.Staged) -> dict[str, Any]:
    """`inpainting_mask_invert`: the mask as stored, black and white swapped."""
    mask = staged.images.get("mask_image")
    if mask is None:
        raise errors.InvalidParameters(
            "inpainting_mask_invert needs a mask", field="inpainting_mask_invert"
        )
    with Image.open(io.BytesIO(mask.data)) as image:
        flipped = ImageOps.invert(image.convert("L"))
    out = io.BytesIO()
    flipped.save(out, format="PNG")
    decoded = inputs.Decoded("mask_image", out.getvalue(), "png", mask.width, mask.height)
    staged.images["mask_image"] = decoded
    return {**fields, "mask_image": f"sha256:{decoded.sha256}"}


def _family_of(api: Api, checkpoint: str | None) -> str | None:
    """The family of the model a request will run on (None: not installed, which the
    queueing refuses, naming it)."""
    try:
        if checkpoint is not None:
            return api.registry.get(checkpoint).family
        return api.registry.default(api.settings.generation.default_model).family
    except errors.SpoolError:
        return None


# What `info` has fields of its own for: not repeated in `extra_generation_params`.
_FIXED = {"Steps", "Sampler", "CFG scale", "Seed", "Size", "Model", "Denoising strength",
          "Clip skip", "VAE hash", "VAE"}  # fmt: skip


def _first_pass_size(spec: JobSpec, result: Mapping[str, Any]) -> tuple[Any, Any]:
    """The size the first pass made: the request's, else the record's, else the image's."""
    first_pass = result.get("first_pass") or {}
    images = result.get("images") or [{}]
    width = spec.width or first_pass.get("width") or images[0].get("width")
    height = spec.height or first_pass.get("height") or images[0].get("height")
    return width, height


def _strength(spec: JobSpec, body: Mapping[str, Any]) -> Any:
    """img2img's strength, else the hires pass's, else what the body said."""
    if spec.strength is not None:
        return spec.strength
    return spec.hires.strength if spec.hires is not None else body.get("denoising_strength")


def _info(
    done: JobRecord,
    spec: JobSpec,
    body: Mapping[str, Any],
    texts: list[str],
    family: str | None = None,
) -> dict[str, Any]:
    """A1111's `info` (its `Processed.js()`): the first pass's size, the seeds, the
    infotext of each image (`texts`: as its PNG carries it), and the settings beyond the
    fixed ones in `extra_generation_params` (schedule type, hires fix, LoRA hashes)."""
    result = done.result or {}
    images = result.get("images") or []
    vae = result.get("vae") or {}
    seeds = [int(image.get("seed", 0)) for image in images]
    width, height = _first_pass_size(spec, result)
    sampler, _ = to_a1111(spec.scheduler)
    extra = (
        {k: v for k, v in infotext_settings(texts[0]).items() if k not in _FIXED} if texts else {}
    )
    return {
        "prompt": spec.prompt,
        "all_prompts": [spec.prompt] * len(images),
        "negative_prompt": spec.negative_prompt,
        "all_negative_prompts": [spec.negative_prompt] * len(images),
        "seed": seeds[0] if seeds else spec.seed,
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * len(images),
        "subseed_strength": 0,
        "width": width,
        "height": height,
        "sampler_name": sampler,
        # FLUX.1's (Forge's): the true CFG, 1 when off; its guidance is in the infotext
        "cfg_scale": spec.guidance_scale if family != "flux" else spec.true_cfg_scale or 1,
        "steps": spec.steps,
        "batch_size": body.get("batch_size") or 1,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": checkpoint_title(done.model or ""),
        "sd_model_hash": None,
        "sd_vae_name": vae.get("file_name"),
        "sd_vae_hash": str(vae.get("sha256") or "")[:10] or None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": _strength(spec, body),
        "extra_generation_params": extra,
        "index_of_first_image": 0,
        "infotexts": texts,
        "styles": [],
        "job_timestamp": done.created_at.strftime("%Y%m%d%H%M%S"),
        "clip_skip": spec.clip_skip or 1,
        "is_using_inpainting_conditioning": spec.mask_image is not None,
        "version": f"alice-spool {__version__}",
        "job_id": done.id,
    }


def encoded(png: bytes, options: OwnerOptions) -> str:
    """An image for the answer, base64, in the client's `samples_format`: the PNG as
    written (its infotext in a `parameters` chunk), or JPEG or WebP with the infotext
    in the EXIF UserComment, as A1111 sends them."""
    data = image_formats.convert(
        png, options.samples_format, options.jpeg_quality, lossless=options.webp_lossless
    )
    return base64_text(data)


async def _generate(request: Request, api: Api, client: str | None, *, img2img: bool) -> Response:
    body = numbers(require_object(await api.read_body(request, images=img2img)), img2img=img2img)
    owner = owner_of(request)
    override = body.get("override_settings") or {}
    stored = await run_in_threadpool(owner_options, api, owner)
    options = stored.overridden(override)
    family = await run_in_threadpool(_family_of, api, options.checkpoint)
    fields = native(body, img2img=img2img, options=options, family=family)
    try:
        fields, staged = await api.submissions.stage_images(fields)
        if img2img and is_given(body.get("inpainting_mask_invert")):
            fields = await run_in_threadpool(_inverted, fields, staged)
        spec = parse_spec(fields, api.settings.generation)
    except errors.InvalidParameters as exc:
        raise in_their_terms(exc, family) from None
    restore = body.get("override_settings_restore_afterwards") is not False
    # (checked before the job is queued: a refused request changes nothing)
    lasting = None if restore or not override else await check_changes(api, override)
    try:
        job = await submit(request, api, spec, A1111, client, staged)
    except errors.InvalidParameters as exc:
        raise in_their_terms(exc, family) from None
    except errors.ModelNotFound as exc:  # the checkpoint this client chose, or overrode
        details = {**exc.details, "field": "sd_model_checkpoint"}
        raise errors.ModelNotFound(exc.message, **details) from None
    if lasting is not None:
        await keep(api, request, lasting)  # A1111 leaves them set
    done = await finished(api, job.id)
    images: list[str] = []
    texts: list[str] = []
    for image in images_of(done):
        png = await png_of(api, image)
        texts.append(await run_in_threadpool(image_formats.infotext, png))
        if body.get("send_images", True) is not False:
            images.append(await run_in_threadpool(encoded, png, options))
    known = IMG2IMG if img2img else TXT2IMG
    parameters = {**known, **{k: v for k, v in body.items() if k in known}}
    if img2img:  # (the images are not sent back)
        parameters.update(init_images=None, mask=None)
    info = _info(done, done.spec, body, texts, family)
    return JSONResponse({"images": images, "parameters": parameters, "info": json.dumps(info)})


_WAITS = {
    404: "the checkpoint, a LoRA or the VAE is not installed",
    409: "the job was cancelled (interrupt, skip) while the request waited",
    422: "an override_settings value of the wrong type",
    504: "the job did not finish in server.request_timeout_s (it stays queued: /v1/jobs)",
}


@route(
    shape=A1111,
    contract=Contract(
        body=txt2img_schema,
        answers={200: Answer(generated("A1111Txt2Img", list(TXT2IMG)))},
        errors=_WAITS,
        example={
            "prompt": "a lighthouse at dusk",
            "steps": 20,
            "sampler_name": "Euler a",
            "width": 512,
            "height": 512,
            "seed": 7,
        },
        tag=TAG,
    ),
)
async def txt2img(request: Request, api: Api, client: str | None) -> Response:
    """AUTOMATIC1111's txt2img: queued like any job (hires fix a two-pass job of its
    own), answered when it is done with the images as base64, `parameters` and `info`
    (a JSON string)."""
    return await _generate(request, api, client, img2img=False)


@route(
    shape=A1111,
    contract=Contract(
        body=img2img_schema,
        answers={200: Answer(generated("A1111Img2Img", list(IMG2IMG)))},
        errors=_WAITS,
        example={
            "prompt": "a red fox",
            "init_images": [EXAMPLE_IMAGE],
            "denoising_strength": 0.6,
            "width": 64,
            "height": 64,
        },
        tag=TAG,
    ),
)
async def img2img(request: Request, api: Api, client: str | None) -> Response:
    """AUTOMATIC1111's img2img: `init_images` (one), `mask` (white repaints;
    `inpainting_mask_invert` swaps), `denoising_strength`."""
    return await _generate(request, api, client, img2img=True)
