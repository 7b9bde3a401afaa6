"""AUTOMATIC1111's API (`/sdapi/v1/txt2img`, `/img2img`; DESIGN section 14): a thin
translator. Its bodies become a `JobSpec` queued like every other door's (source
`a1111`), the answer waits for the job and is shaped as A1111 shapes it (base64 images
in the client's `samples_format`, `parameters`, `info` as a JSON string with the seeds
and infotexts). Sampler and schedule type, hires fix and clip skip map onto the spec's
own fields; the client's options (a1111_options.py) fill in what a body leaves out."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from typing import Any

from PIL import Image, ImageOps
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .... import __version__, errors, inputs
from ....records import JobRecord
from ....samplers import SCHEDULES, from_a1111, to_a1111
from ....spec import JobSpec, parse_spec
from ...edge.context import Api, owner_of, route
from ...edge.http import require_object
from .. import formats as image_formats
from ..pipeline import base64_text, finished, images_of, png_of, submit
from .lists import infotext_settings
from .options import (
    A1111,
    OwnerOptions,
    check_changes,
    checkpoint_title,
    error_answer,
    keep,
    owner_options,
)

# A1111's API defaults for what a body leaves out (its request models'), echoed back
# in `parameters` with what the body gave.
COMMON: dict[str, Any] = {
    "prompt": "",
    "negative_prompt": "",
    "styles": [],
    "seed": -1,
    "subseed": -1,
    "subseed_strength": 0,
    "seed_resize_from_h": -1,
    "seed_resize_from_w": -1,
    "sampler_name": None,
    "scheduler": None,
    "batch_size": 1,
    "n_iter": 1,
    "steps": 50,
    "cfg_scale": 7.0,
    "width": 512,
    "height": 512,
    "restore_faces": None,
    "tiling": None,
    "do_not_save_samples": False,
    "do_not_save_grid": False,
    "eta": None,
    "denoising_strength": 0.75,
    "override_settings": None,
    "override_settings_restore_afterwards": True,
    "refiner_checkpoint": None,
    "refiner_switch_at": None,
    "disable_extra_networks": False,
    "comments": None,
    "sampler_index": "Euler",
    "script_name": None,
    "script_args": [],
    "send_images": True,
    "save_images": False,
    "alwayson_scripts": {},
    "infotext": None,
}
TXT2IMG: dict[str, Any] = {
    **COMMON,
    "enable_hr": False,
    "firstphase_width": 0,
    "firstphase_height": 0,
    "hr_scale": 2.0,
    "hr_upscaler": None,
    "hr_second_pass_steps": 0,
    "hr_resize_x": 0,
    "hr_resize_y": 0,
    "hr_checkpoint_name": None,
    "hr_sampler_name": None,
    "hr_scheduler": None,
    "hr_prompt": "",
    "hr_negative_prompt": "",
    "force_task_id": None,
}
IMG2IMG: dict[str, Any] = {
    **COMMON,
    "init_images": None,
    "resize_mode": 0,
    "image_cfg_scale": None,
    "mask": None,
    "mask_blur_x": 4,
    "mask_blur_y": 4,
    "mask_blur": None,
    "mask_round": True,
    "inpainting_fill": 0,
    "inpaint_full_res": True,
    "inpaint_full_res_padding": 0,
    "inpainting_mask_invert": 0,
    "initial_noise_multiplier": None,
    "latent_mask": None,
    "force_task_id": None,
}
# What A1111 can do and this server cannot: refused when asked for, never ignored.
_UNSUPPORTED = {
    "restore_faces": "face restoration",
    "tiling": "tiling",
    "script_name": "scripts",
    "alwayson_scripts": "extensions' scripts",
    "refiner_checkpoint": "a refiner",
    "subseed_strength": "variation seeds",
    "firstphase_width": "the old hires fix's first-pass size",
    "firstphase_height": "the old hires fix's first-pass size",
    "latent_mask": "a separate latent mask",
}
_SAME = ("", "Use same checkpoint", "Use same sampler", "Use same scheduler")
# A1111 takes numbers as text too ("7.0"), and whole numbers as floats (15.0).
_WHOLE = ("steps", "width", "height", "batch_size", "n_iter", "seed", "hr_second_pass_steps",
          "hr_resize_x", "hr_resize_y", "clip_skip", "seed_resize_from_w",
          "seed_resize_from_h")  # fmt: skip
_REAL = ("cfg_scale", "distilled_cfg_scale", "denoising_strength", "hr_scale", "subseed_strength")


_FLAGS = ("enable_hr", "send_images", "save_images", "restore_faces", "tiling",
          "override_settings_restore_afterwards", "inpainting_mask_invert",
          "do_not_save_samples", "do_not_save_grid")  # fmt: skip
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


def _numbers(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body with numbers given as text read as numbers, whole floats as ints where
    A1111 wants an integer, and true/false given as text as booleans (its request
    models coerce all three)."""
    fields = dict(body)
    for name in _FLAGS:
        value = fields.get(name)
        if isinstance(value, str):
            text = value.strip().lower()
            if text not in _TRUE + _FALSE:
                raise errors.InvalidParameters(
                    f"{name} must be true or false, got {value!r}", field=name
                )
            fields[name] = text in _TRUE
    for name in (*_WHOLE, *_REAL):
        value = fields.get(name)
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise errors.InvalidParameters(
                    f"{name} must be a number, got {value!r}", field=name
                ) from None
        if name in _WHOLE and isinstance(value, float) and value.is_integer():
            value = int(value)
        if value is not None:
            fields[name] = value
    return fields


def _count(body: Mapping[str, Any], name: str) -> int:
    value = body.get(name)
    value = COMMON[name] if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise errors.InvalidParameters(f"{name} must be a whole number >= 1", field=name)
    return value


def _given(value: Any) -> bool:
    return value not in (None, False, "", 0, {}, [])


def _clip_skip(body: Mapping[str, Any], options: OwnerOptions) -> int:
    """`override_settings.CLIP_stop_at_last_layers`, else `clip_skip` (SD.Next's and
    SillyTavern's), else the client's option."""
    value = body.get("clip_skip")
    override = body.get("override_settings") or {}
    if value is None or "CLIP_stop_at_last_layers" in override:
        return options.clip_skip
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 12:
        raise errors.InvalidParameters(
            "clip_skip must be a whole number from 1 to 12", field="clip_skip"
        )
    return value


def _automatic(body: Mapping[str, Any]) -> bool:
    """Whether the first pass's schedule type was left to A1111's Automatic: none given
    (or Automatic) and none in the sampler's name (`DPM++ 2M Karras`)."""
    if str(body.get("scheduler") or "automatic").strip().lower() != "automatic":
        return False
    name = str(body.get("sampler_name") or body.get("sampler_index") or "").strip().lower()
    spellings = {s.name for s in SCHEDULES} | {s.label.lower() for s in SCHEDULES}
    return not any(name.endswith(" " + spelling) for spelling in spellings - {"automatic"})


def _hires(body: Mapping[str, Any], scheduler: str) -> dict[str, Any]:
    """A1111's hires fix fields as the native `hires` object."""
    if _given(body.get("hr_checkpoint_name")) and body["hr_checkpoint_name"] not in _SAME:
        raise errors.InvalidParameters(
            "a second-pass checkpoint (hr_checkpoint_name) is not supported here",
            field="hr_checkpoint_name",
        )
    hires: dict[str, Any] = {
        "upscaler": body.get("hr_upscaler") or "Latent",
        "steps": body.get("hr_second_pass_steps") or 0,
        "strength": body.get("denoising_strength")
        if body.get("denoising_strength") is not None
        else COMMON["denoising_strength"],
    }
    resize = (body.get("hr_resize_x") or 0, body.get("hr_resize_y") or 0)
    if resize != (0, 0):
        hires.update({"width": resize[0] or None, "height": resize[1] or None, "scale": None})
    else:
        hires["scale"] = body.get("hr_scale") if body.get("hr_scale") is not None else 2.0
    sampler, schedule = body.get("hr_sampler_name"), body.get("hr_scheduler")
    if (sampler not in (None, *_SAME)) or (schedule not in (None, *_SAME)):
        first_sampler, first_schedule = to_a1111(scheduler)
        if schedule in (None, *_SAME) and _automatic(body):
            # A1111 keeps the first pass's "Automatic", which the second pass's sampler
            # then resolves as its own (Euler a first, DPM++ 2M second: Karras).
            first_schedule = "Automatic"
        hires["scheduler"] = from_a1111(
            sampler if sampler not in (None, *_SAME) else first_sampler,
            schedule if schedule not in (None, *_SAME) else first_schedule,
            sampler_field="hr_sampler_name",
            schedule_field="hr_scheduler",
        )
    for field, ours in (("hr_prompt", "prompt"), ("hr_negative_prompt", "negative_prompt")):
        if isinstance(body.get(field), str) and body[field].strip():
            hires[ours] = body[field]
    return hires


def native(
    body: Mapping[str, Any], *, img2img: bool, options: OwnerOptions, family: str | None = None
) -> dict[str, Any]:
    """A1111's body as this server's request (`parse_spec` checks it); for a FLUX.1
    model (`family`, the model's it will run on), its guidance as Forge reads it."""
    for name, what in _UNSUPPORTED.items():
        if _given(body.get(name)):
            raise errors.InvalidParameters(f"{what} ({name}) is not supported here", field=name)
    for name in ("seed_resize_from_w", "seed_resize_from_h"):
        if isinstance(body.get(name), int | float) and body[name] > 0:
            raise errors.InvalidParameters(
                f"resizing the seed ({name}) is not supported here", field=name
            )
    seed = body.get("seed")
    scheduler = from_a1111(
        body.get("sampler_name") or body.get("sampler_index") or COMMON["sampler_index"],
        body.get("scheduler"),
    )
    fields: dict[str, Any] = {
        "prompt": body.get("prompt") or "",
        "negative_prompt": body.get("negative_prompt") or "",
        "steps": COMMON["steps"] if body.get("steps") is None else body["steps"],
        "guidance_scale": COMMON["cfg_scale"]
        if body.get("cfg_scale") is None
        else body["cfg_scale"],
        "width": body.get("width") or COMMON["width"],
        "height": body.get("height") or COMMON["height"],
        "seed": None if seed in (-1, None, "") else seed,
        "scheduler": scheduler,
        "n": _count(body, "batch_size") * _count(body, "n_iter"),
    }
    if family == "flux":
        del fields["guidance_scale"]
        fields.update(_flux_guidance(body))
    clip_skip = _clip_skip(body, options)
    if clip_skip > 1:
        fields["clip_skip"] = clip_skip
    if options.checkpoint is not None:
        fields["model"] = options.checkpoint
    if options.vae is not None:
        fields["vae"] = options.vae
    if not img2img and body.get("enable_hr"):
        fields["hires"] = _hires(body, scheduler)
    if img2img:
        given = body.get("init_images")
        if not isinstance(given, list) or not given:
            raise errors.InvalidParameters(
                "init_images must be a list with one base64 image", field="init_images"
            )
        if len(given) > 1:
            raise errors.InvalidParameters("one init image a request here", field="init_images")
        fields["init_image"] = given[0]
        if body.get("mask") is not None:
            fields["mask_image"] = body["mask"]
        strength = body.get("denoising_strength")
        fields["strength"] = COMMON["denoising_strength"] if strength is None else strength
    return fields


def _flux_guidance(body: Mapping[str, Any]) -> dict[str, Any]:
    """Forge's FLUX.1 fields: `distilled_cfg_scale` is the model's distilled guidance
    (left to the model when absent: 3.5 for dev), and `cfg_scale` the true CFG, which
    runs the negative prompt: 1 (off) unless above it, as Forge runs it."""
    fields: dict[str, Any] = {}
    distilled = body.get("distilled_cfg_scale")
    if distilled is not None:
        fields["guidance_scale"] = distilled
    cfg = body.get("cfg_scale")
    number = isinstance(cfg, int | float) and not isinstance(cfg, bool)
    if cfg is not None and not (number and 0 <= cfg <= 1):
        # above 1: true CFG; not a number, negative, NaN or over the limit: refused by
        # the parser, naming cfg_scale
        fields["true_cfg_scale"] = cfg
    return fields


# Our request's fields by the names A1111's clients sent them under, for its errors.
_THEIR_NAMES = {
    "hires.upscaler": "hr_upscaler",
    "hires.scale": "hr_scale",
    "hires.width": "hr_resize_x",
    "hires.height": "hr_resize_y",
    "hires.steps": "hr_second_pass_steps",
    "hires.strength": "denoising_strength",
    "hires.scheduler": "hr_sampler_name",
    "hires.prompt": "hr_prompt",
    "hires.negative_prompt": "hr_negative_prompt",
    "hires": "enable_hr",
    "guidance_scale": "cfg_scale",
    "true_cfg_scale": "cfg_scale",
    "strength": "denoising_strength",
    "init_image": "init_images",
    "mask_image": "mask",
    "n": "batch_size",
    "vae": "sd_vae",
}


# A FLUX.1 model's guidance fields, by Forge's names for them.
_THEIR_FLUX_NAMES = {**_THEIR_NAMES, "guidance_scale": "distilled_cfg_scale"}


def in_their_terms(
    exc: errors.InvalidParameters, family: str | None = None
) -> errors.InvalidParameters:
    """A refusal of the translated request, naming the field as the client sent it
    (and true CFG, which a FLUX.1 refusal may mention, as `cfg_scale`)."""
    names = _THEIR_FLUX_NAMES if family == "flux" else _THEIR_NAMES
    field = str(exc.details.get("field") or "")
    message = exc.message
    if family == "flux" and field != "true_cfg_scale":
        message = _renamed(message, "true_cfg_scale", "cfg_scale")
    theirs = names.get(field)
    if theirs is None:
        return exc if message == exc.message else type(exc)(message, **exc.details)
    return type(exc)(_renamed(message, field, theirs), field=theirs)  # the same kind


def _renamed(message: str, ours: str, theirs: str) -> str:
    return re.sub(rf"(?<![\w./]){re.escape(ours)}(?![\w/])", theirs, message)


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
    first_pass = result.get("first_pass") or {}
    width = spec.width or first_pass.get("width") or (images[0].get("width") if images else None)
    height = (
        spec.height or first_pass.get("height") or (images[0].get("height") if images else None)
    )
    sampler, _ = to_a1111(spec.scheduler)
    fixed = {"Steps", "Sampler", "CFG scale", "Seed", "Size", "Model", "Denoising strength",
             "Clip skip", "VAE hash", "VAE"}  # fmt: skip
    extra = (
        {k: v for k, v in infotext_settings(texts[0]).items() if k not in fixed} if texts else {}
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
        "denoising_strength": spec.strength
        if spec.strength is not None
        else (spec.hires.strength if spec.hires is not None else body.get("denoising_strength")),
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
    body = _numbers(require_object(await api.read_body(request, images=img2img)))
    owner = owner_of(request)
    override = body.get("override_settings") or {}
    if not isinstance(override, dict):
        raise errors.InvalidParameters(
            "override_settings must be an object", field="override_settings"
        )
    stored = await run_in_threadpool(owner_options, api, owner)
    options = stored.overridden(override)
    family = await run_in_threadpool(_family_of, api, options.checkpoint)
    fields = native(body, img2img=img2img, options=options, family=family)
    try:
        fields, staged = await run_in_threadpool(api.take_images, fields)
        if img2img and _given(body.get("inpainting_mask_invert")):
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
    parameters.update(init_images=None, mask=None)
    info = _info(done, done.spec, body, texts, family)
    return JSONResponse({"images": images, "parameters": parameters, "info": json.dumps(info)})


@route(shape=error_answer)
async def txt2img(request: Request, api: Api, client: str | None) -> Response:
    """AUTOMATIC1111's txt2img: queued like any job (hires fix a two-pass job of its
    own), answered when it is done with the images as base64, `parameters` and `info`
    (a JSON string)."""
    return await _generate(request, api, client, img2img=False)


@route(shape=error_answer)
async def img2img(request: Request, api: Api, client: str | None) -> Response:
    """AUTOMATIC1111's img2img: `init_images` (one), `mask` (white repaints;
    `inpainting_mask_invert` swaps), `denoising_strength`."""
    return await _generate(request, api, client, img2img=True)
