"""AUTOMATIC1111's bodies as this server's request: its fields, defaults and refusals
mapped onto a `JobSpec`'s (sampler and schedule type, hires fix, clip skip, FLUX.1's
distilled CFG), the client's options filling in what a body leaves out, and refusals
told in its own field names (pure: no I/O)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .... import errors
from ....samplers import SCHEDULES, from_a1111, to_a1111
from .body import SAME, checked
from .options import OwnerOptions

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


def numbers(body: Mapping[str, Any], *, img2img: bool = False) -> dict[str, Any]:
    """The body with each field this server reads checked (body.py), numbers and
    true/false given as text read as numbers and booleans, whole floats as ints where
    A1111 wants an integer (its request models coerce all three)."""
    return checked(body, img2img=img2img)


def _count(body: Mapping[str, Any], name: str) -> int:
    value = body.get(name)
    value = COMMON[name] if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise errors.InvalidParameters(f"{name} must be a whole number >= 1", field=name)
    return value


def is_given(value: Any) -> bool:
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
    """A1111's hires fix fields (checked: body.py) as the native `hires` object."""
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
    if (sampler not in (None, *SAME)) or (schedule not in (None, *SAME)):
        first_sampler, first_schedule = to_a1111(scheduler)
        if schedule in (None, *SAME) and _automatic(body):
            # A1111 keeps the first pass's "Automatic", which the second pass's sampler
            # then resolves as its own (Euler a first, DPM++ 2M second: Karras).
            first_schedule = "Automatic"
        hires["scheduler"] = from_a1111(
            sampler if sampler not in (None, *SAME) else first_sampler,
            schedule if schedule not in (None, *SAME) else first_schedule,
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
    """A1111's body, checked (`numbers`), as this server's request (`parse_spec`
    checks it); for a FLUX.1 model (`family`, the model's it will run on), its guidance
    as Forge reads it."""
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
        if not isinstance(given, list) or not given or given[0] is None:
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
