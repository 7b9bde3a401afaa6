"""AUTOMATIC1111's txt2img and img2img bodies, field by field: what each field takes
(its rule checks it, numbers and true/false given as text read as A1111's request models
read them) and the same rule as JSON schema, with the rules between fields (pure).

A field the server does not read is taken and left alone (A1111's own fields of
features it has no use for, a client's extras), and echoed in `parameters` if A1111
has it. What this server cannot do is refused when asked for, never ignored."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .... import errors, samplers
from ....config import Settings
from ....hires import SCALE_MAX, UPSCALERS, min_strength
from ....spec import (
    CLIP_SKIP_MAX,
    GUIDANCE_MAX,
    N_MAX,
    SEED_MAX,
    SIZE_MAX,
    SIZE_MULTIPLE,
    STEPS_MAX,
    least_strength,
)
from .numeric import below_value, span_text, span_value
from .options import changes_schema
from .rules import TRUTHY, Flag, Named, Number, Rule, Side, Taken, Text, Unset, all_text
from .spellings import sampler_pattern, schedule_pattern, words

# A1111's words for "as the first pass" in the hires fix's own choices.
SAME = ("", "Use same checkpoint", "Use same sampler", "Use same scheduler")
DEFAULT_STEPS = 50  # A1111's API default
DEFAULT_STRENGTH = 0.75  # A1111's denoising_strength default


def _sampler(name: str, value: str) -> None:
    samplers.from_a1111(value, None, sampler_field=name)


def _schedule(name: str, value: str) -> None:
    samplers.from_a1111("Euler", value, schedule_field=name)


_UPSCALERS = tuple(u.name for u in UPSCALERS)


def _upscaler(name: str, value: str) -> None:
    if value.strip().lower() not in {u.lower() for u in _UPSCALERS}:
        raise errors.InvalidParameters(
            f"{name} {value!r} is not known; choose one of: {', '.join(_UPSCALERS)}", field=name
        )


def _never(name: str, value: Any) -> None:
    raise errors.InvalidParameters(
        f"a second-pass checkpoint ({name}) is not supported here", field=name
    )


@dataclass(frozen=True)
class Options(Rule):
    """`override_settings`: options for this request (options.py's checks), or null."""

    description: str = (
        "options for this request only (POST /sdapi/v1/options's), unless "
        "override_settings_restore_afterwards is false"
    )

    def check(self, name: str, value: Any) -> Any:
        if value is not None and not isinstance(value, dict):
            raise errors.InvalidParameters(f"{name} must be an object", field=name)
        return value

    def schema(self) -> dict[str, Any]:
        return {"anyOf": [changes_schema(), {"type": "null"}]}


_SAMPLER = Named(
    sampler_pattern(),
    _sampler,
    also=("", None),
    description="A1111's sampler names (GET /sdapi/v1/samplers), any case; a schedule "
    "type after the name (DPM++ 2M Karras) counts unless scheduler names another",
)

# The fields both doors read, in the order they are checked.
SHARED: dict[str, Rule] = {
    "negative_prompt": Text(),
    "seed": Number(-1, SEED_MAX, whole=True, description="-1 or null: random"),
    "subseed_strength": Number(0, 0, unsupported="variation seeds"),
    "seed_resize_from_h": Number(None, 0, unsupported="resizing the seed"),
    "seed_resize_from_w": Number(None, 0, unsupported="resizing the seed"),
    "sampler_name": _SAMPLER,
    "sampler_index": Named(
        sampler_pattern(), _sampler, also=("", None), description="sampler_name's old name"
    ),
    "scheduler": Named(
        schedule_pattern(),
        _schedule,
        description="A1111's schedule types (GET /sdapi/v1/schedulers), any case; blank "
        "or null: Automatic, the sampler's own",
    ),
    "batch_size": Number(1, N_MAX, whole=True),
    "n_iter": Number(1, N_MAX, whole=True),
    "steps": Number(1, STEPS_MAX, whole=True, description="null: 50"),
    "cfg_scale": Number(
        0,
        GUIDANCE_MAX,
        description="null: 7; for a FLUX.1 model true CFG (1 or less: off), as Forge reads it",
    ),
    "distilled_cfg_scale": Number(
        0, GUIDANCE_MAX, description="Forge's: a FLUX.1 model's guidance (null: the model's)"
    ),
    "width": Side(SIZE_MULTIPLE, description="0 or null: 512"),
    "height": Side(SIZE_MULTIPLE, description="0 or null: 512"),
    "clip_skip": Number(
        1,
        CLIP_SKIP_MAX,
        whole=True,
        description="SD.Next's; override_settings.CLIP_stop_at_last_layers wins",
    ),
    "override_settings": Options(),
    "override_settings_restore_afterwards": Flag(description="null: true"),
    "send_images": Flag(description="false: the answer's images are left out"),
    "save_images": Flag(description="taken and not used: every image is kept"),
    "do_not_save_samples": Flag(description="taken and not used"),
    "do_not_save_grid": Flag(description="taken and not used"),
    "restore_faces": Flag(unsupported="face restoration"),
    "tiling": Flag(unsupported="tiling"),
    "script_name": Unset("scripts", ("", None), ({"enum": ["", None]},)),
    "refiner_checkpoint": Unset("a refiner", ("", None), ({"enum": ["", None]},)),
    "latent_mask": Unset("a separate latent mask", ("", None), ({"enum": ["", None]},)),
    "alwayson_scripts": Unset(
        "extensions' scripts",
        ({}, None),
        ({"type": "object", "maxProperties": 0}, {"type": "null"}),
    ),
    "firstphase_width": Unset(
        "the old hires fix's first-pass size", (0, None), ({"enum": [0, None]},)
    ),
    "firstphase_height": Unset(
        "the old hires fix's first-pass size", (0, None), ({"enum": [0, None]},)
    ),
}
# A1111's fields that change nothing here (listed, so that clients see them taken).
TAKEN = ("styles", "subseed", "eta", "s_churn", "s_noise", "s_tmin", "s_tmax",
         "refiner_switch_at", "disable_extra_networks", "comments", "script_args",
         "infotext", "force_task_id")  # fmt: skip
IMG2IMG_TAKEN = ("resize_mode", "image_cfg_scale", "mask_blur_x", "mask_blur_y", "mask_blur",
                 "mask_round", "inpainting_fill", "inpaint_full_res",
                 "inpaint_full_res_padding", "initial_noise_multiplier",
                 "include_init_images")  # fmt: skip

# txt2img's hires fix, read when `enable_hr` is true (sent with every request else).
HIRES: dict[str, Rule] = {
    "hr_upscaler": Named(
        words(_UPSCALERS),
        _upscaler,
        also=("", None),
        description="GET /sdapi/v1/upscalers and latent-upscale-modes, any case; null: Latent",
    ),
    "hr_scale": Number(1, SCALE_MAX, description="null: 2 (hr_resize_x/y instead, if given)"),
    "hr_second_pass_steps": Number(0, STEPS_MAX, whole=True, description="0: as the first pass"),
    "hr_resize_x": Side(1, description="0: from hr_resize_y (or hr_scale); rounded down to 8"),
    "hr_resize_y": Side(1, description="0: from hr_resize_x (or hr_scale); rounded down to 8"),
    "hr_checkpoint_name": Named(
        None, _never, also=(*SAME, None), description="the first pass's only"
    ),
    "hr_sampler_name": Named(sampler_pattern(), _sampler, also=(*SAME, None)),
    "hr_scheduler": Named(schedule_pattern(), _schedule, also=(*SAME, None)),
    "hr_prompt": Text(description="blank: the prompt"),
    "hr_negative_prompt": Text(description="blank: the negative prompt"),
    "denoising_strength": Number(0, 1),  # (0, or from hires.min_strength: the schema's)
}


_PROMPT_NOTE = "<lora:name:scale> tags take LoRAs (GET /sdapi/v1/loras)"
TXT2IMG_ONLY: dict[str, Rule] = {
    "prompt": Text(required=True, description=f"not blank; {_PROMPT_NOTE}"),
    "enable_hr": Flag(description="hires fix: a second pass at a larger size (hr_* fields)"),
    "denoising_strength": Number(0, 1, description="the hires fix's (else taken, not used)"),
}
IMG2IMG_ONLY: dict[str, Rule] = {
    "prompt": Text(description=f"may be blank; {_PROMPT_NOTE}"),
    "denoising_strength": Number(
        0, 1, above=True, description="how much to change the image; null: 0.75"
    ),
    "inpainting_mask_invert": Flag(description="true: repaint the mask's black instead"),
}


def checked(body: Mapping[str, Any], *, img2img: bool) -> dict[str, Any]:
    """The body with each field it reads checked (refusals name the field as sent),
    numbers and true/false given as text read as numbers and booleans; no field holds
    a lone surrogate (`parameters` echoes them)."""
    all_text(body)
    fields = dict(body)
    rules = {**SHARED, **(IMG2IMG_ONLY if img2img else TXT2IMG_ONLY)}
    for name, rule in rules.items():
        if name in fields:
            fields[name] = rule.check(name, fields[name])
    if not img2img and fields.get("enable_hr"):
        for name, rule in HIRES.items():
            if name in fields:
                fields[name] = rule.check(name, fields[name])
    return fields


# -- the bodies' schemas --------------------------------------------------------------

# An input image for the schema to list (a grey 64x64 PNG), as no schema can tell an
# image from other text: any whole PNG, JPEG or WebP is taken.
EXAMPLE_IMAGE = (
    "iVBORw0KGgoAAAANSUhEUgAAAEAAAABACAIAAAAlC+aJAAAAUUlEQVR42u3PMQ0AMAgAMJhqlKAEgVPBQdI6"
    "aFZPXPbiOAEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAYF9HxKvAkKFRHOt"
    "AAAAAElFTkSuQmCC"
)
_IMAGE_TEXT = (
    "a PNG, JPEG or WebP image as base64 (a data: URL too), of at most "
    "generation.max_input_pixels. A schema cannot tell an image from other text: it "
    "lists an example"
)


def image_schema(description: str) -> dict[str, Any]:
    return {
        "type": "string",
        "enum": [EXAMPLE_IMAGE, f"data:image/png;base64,{EXAMPLE_IMAGE}"],
        "description": f"{description}: {_IMAGE_TEXT}",
    }


def _steps_at_most(steps: int) -> dict[str, Any]:
    """At most `steps`, for a value steps' own rule has checked."""
    text = span_value(0, steps, whole=True)
    return {"anyOf": [{"type": "number", "maximum": steps}, {"type": "string", "pattern": text}]}


def _strength_below(least: float) -> dict[str, Any]:
    """Below `least`, for a value denoising_strength's own rule has checked."""
    number = {"type": "number", "exclusiveMaximum": least}
    return {"anyOf": [number, {"type": "string", "pattern": below_value(least)}]}


def _steps_to_run(max_steps: int) -> dict[str, Any]:
    """int(steps x denoising_strength) >= 1: never steps at most k with a strength
    below the least that k takes (a staircase: fewer steps need more); a strength left
    out is 0.75, steps left out are 50."""
    stairs: list[dict[str, Any]] = [
        {
            "required": ["steps", "denoising_strength"],
            "properties": {
                "steps": _steps_at_most(steps),
                "denoising_strength": _strength_below(least_strength(steps)),
            },
        }
        for steps in range(1, max_steps + 1)
    ]
    too_few = [
        steps for steps in range(1, max_steps + 1) if least_strength(steps) > DEFAULT_STRENGTH
    ]
    if too_few:
        strength_left_out = {"denoising_strength": {"type": "null"}}
        stairs.append(
            {
                "required": ["steps"],
                "properties": {"steps": _steps_at_most(max(too_few)), **strength_left_out},
            }
        )
    steps_left_out = {"steps": {"type": "null"}}
    strength = _strength_below(least_strength(DEFAULT_STEPS))
    stairs.append(
        {
            "required": ["denoising_strength"],
            "properties": {**steps_left_out, "denoising_strength": strength},
        }
    )
    return {"not": {"anyOf": stairs}}


def _limited(rules: Mapping[str, Rule], settings: Settings) -> dict[str, Rule]:
    """`rules` with this configuration's limits: the most steps and images."""
    generation = settings.generation
    most = {"steps": generation.max_steps, "hr_second_pass_steps": generation.max_steps,
            "batch_size": generation.max_n, "n_iter": generation.max_n}  # fmt: skip
    return {
        name: replace(rule, high=most[name]) if name in most and isinstance(rule, Number) else rule
        for name, rule in rules.items()
    }


def _at_least(low: float, *, null: bool = False) -> dict[str, Any]:
    """At least `low`, for a value its field's own rule has checked: a number, its
    text (the short pattern), or null where `null`."""
    number = {"type": "number", "minimum": low}
    text = {"type": "string", "pattern": span_value(low, None)}
    return {"anyOf": [number, text, *([{"type": "null"}] if null else [])]}


def _images_at_most(most: int) -> dict[str, Any]:
    """batch_size x n_iter at most `most`: never both at least (b, m) with b x m above it."""
    pairs = [(b, most // b + 1) for b in range(2, most + 1) if most // b + 1 <= most]
    kept = [(b, m) for b, m in pairs if not any(m2 == m and b2 < b for b2, m2 in pairs)]
    if not kept:  # one image at most: each field's own limit says it
        return {}
    return {
        "not": {
            "anyOf": [
                {
                    "required": ["batch_size", "n_iter"],
                    "properties": {"batch_size": _at_least(b), "n_iter": _at_least(m)},
                }
                for b, m in kept
            ]
        }
    }


def _when_true(flag: str, then: dict[str, Any]) -> dict[str, Any]:
    return {"if": {"required": [flag], "properties": {flag: TRUTHY}}, "then": then}


def _second_pass_strength(max_steps: int) -> dict[str, Any]:
    """0, or from hires.min_strength to 1 (the hires fix's own rule)."""
    lowest = min_strength(max_steps)
    zero = {"type": "number", "minimum": 0, "maximum": 0}
    number = {"type": "number", "minimum": lowest, "maximum": 1}
    text = f"{span_text(0, 0)}|{span_text(lowest, 1)}"
    return {"anyOf": [zero, number, {"type": "string", "pattern": text}, {"type": "null"}]}


_RULES_TEXT = (
    "Rules between fields: batch_size x n_iter at most generation.max_n; width x height "
    "at most generation.max_pixels. A FLUX.1 or SD 3.x model takes the Euler sampler only "
    "(with Automatic, Uniform, Karras, Exponential, SGM Uniform, Simple, Normal or Beta), "
    "and a FLUX.1 model a negative_prompt only with cfg_scale above 1."
)


def _properties(rules: Mapping[str, Rule], taken: tuple[str, ...]) -> dict[str, Any]:
    properties = {name: rule.described() for name, rule in rules.items()}
    return properties | {name: Taken().described() for name in taken}


def txt2img_schema(settings: Settings) -> dict[str, Any]:
    """txt2img's body. The hires fix's fields are read when `enable_hr` is true."""
    properties = _properties(_limited({**SHARED, **TXT2IMG_ONLY}, settings), TAKEN)
    hires = _limited(HIRES, settings)
    for name, rule in hires.items():
        properties.setdefault(name, {"description": f"hires fix: {rule.description}".rstrip(": ")})
    then = {name: rule.schema() for name, rule in hires.items()}
    then["denoising_strength"] = _second_pass_strength(settings.generation.max_steps)
    return {
        "type": "object",
        "required": ["prompt"],
        "properties": properties,
        "allOf": [
            _when_true("enable_hr", {"properties": then}),
            _images_at_most(settings.generation.max_n),
        ],
        "description": f"{_RULES_TEXT} The hires fix's target is at most {SIZE_MAX} "
        "pixels a side (checked when its job runs).",
    }


def img2img_schema(settings: Settings) -> dict[str, Any]:
    """img2img's body: one init image, and a mask where it inpaints."""
    properties = _properties(_limited({**SHARED, **IMG2IMG_ONLY}, settings), TAKEN + IMG2IMG_TAKEN)
    properties["init_images"] = {
        "type": "array",
        "minItems": 1,
        "maxItems": 1,
        "items": image_schema("the image to change"),
    }
    properties["mask"] = {
        "anyOf": [
            image_schema("white repaints, black keeps; the init image's size"),
            {"type": "null"},
        ]
    }
    has_mask = {"required": ["mask"], "properties": {"mask": {"not": {"type": "null"}}}}
    return {
        "type": "object",
        "required": ["init_images"],
        "properties": properties,
        "allOf": [
            _images_at_most(settings.generation.max_n),
            _when_true("inpainting_mask_invert", has_mask),
            _steps_to_run(settings.generation.max_steps),
        ],
        "description": f"{_RULES_TEXT} int(steps x denoising_strength) must be at least 1.",
    }
