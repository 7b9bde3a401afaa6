"""Hires fix: a txt2img job made in two passes (first pass, upscale, img2img at the
target size), as AUTOMATIC1111 does it: its settings, the request field that gives them
(a typed model, or a shorthand), and sizes (pure)."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import InvalidParameters
from .fields import (
    PIXELS_MAX,
    PROMPT_MAX_CHARS,
    SIZE_MAX,
    SIZE_MIN,
    STEPS_MAX,
    Choice,
    FieldType,
    Integer,
    Number,
    SchedulerName,
    SchemaGenerator,
    Text,
    first_refusal,
    parse_integer,
    parse_number,
    refused,
    type_name,
    with_settings,
)

DEFAULT_SCALE = 2.0  # A1111's hr_scale
DEFAULT_UPSCALER = "Latent"  # A1111's latent_upscale_default_mode
DEFAULT_STRENGTH = 0.7  # A1111's "Denoising strength" slider under Hires. fix
SCALE_MAX = 4.0
# Diffusers' schedulers take at most this many steps (the model's training timesteps).
SCHEDULER_STEPS_MAX = 1000


@dataclass(frozen=True)
class Upscaler:
    """One of A1111's hires upscalers: in latent space (`torch.nn.functional.interpolate`
    with `mode` and `antialias`) or on the decoded image (PIL, `mode` None)."""

    name: str
    latent: bool
    mode: str | None = None
    antialias: bool = False


# As A1111 lists them for hires fix: its latent_upscale_modes, then its image upscalers
# that need no model files.
UPSCALERS: tuple[Upscaler, ...] = (
    Upscaler("Latent", True, "bilinear"),
    Upscaler("Latent (antialiased)", True, "bilinear", antialias=True),
    Upscaler("Latent (bicubic)", True, "bicubic"),
    Upscaler("Latent (bicubic antialiased)", True, "bicubic", antialias=True),
    Upscaler("Latent (nearest)", True, "nearest"),
    Upscaler("Latent (nearest-exact)", True, "nearest-exact"),
    Upscaler("None", False),
    Upscaler("Lanczos", False),
    Upscaler("Nearest", False),
)
_BY_NAME = {upscaler.name.lower(): upscaler for upscaler in UPSCALERS}


def upscaler(name: str) -> Upscaler:
    """The upscaler of a canonical name (as a parsed `HiresFix` holds it)."""
    return _BY_NAME[name.lower()]


@dataclass(frozen=True)
class HiresFix:
    """The second pass of a hires job. The target size is `scale` times the first pass,
    or `width` and/or `height` (one: the other follows the first pass's aspect; both: the
    upscale covers them and the middle is kept); see `target_size`."""

    scale: float | None = DEFAULT_SCALE
    width: int | None = None
    height: int | None = None
    upscaler: str = DEFAULT_UPSCALER
    steps: int = 0  # the second pass's steps; 0: as many as the first pass
    strength: float = DEFAULT_STRENGTH  # the second pass's denoising strength
    scheduler: str | None = None  # None: the first pass's
    prompt: str | None = None  # None: the job's
    negative_prompt: str | None = None  # None: the job's

    @property
    def latent(self) -> bool:
        return upscaler(self.upscaler).latent

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HiresFix:
        """Rebuild settings stored by `to_dict` (trusted input: no validation)."""
        return cls(**{k: v for k, v in data.items() if k in _FIELD_SET})

    def fingerprint_items(self) -> tuple[tuple[str, Any], ...]:
        """The settings that differ from their defaults, sorted by name: what a job's
        fingerprint hashes, so that a field added later (with a default) leaves the
        fingerprints of stored jobs as they were (the dataclass's `repr` would not)."""
        defaults = {f.name: f.default for f in fields(self)}
        return tuple(sorted((k, v) for k, v in self.to_dict().items() if v != defaults[k]))

    def batch_key(self) -> tuple[object, ...]:
        """What jobs sharing a second pass must agree on (their prompts may differ)."""
        return (
            self.scale,
            self.width,
            self.height,
            self.upscaler,
            self.steps,
            self.strength,
            self.scheduler,
        )


FIELDS = tuple(f.name for f in fields(HiresFix))
_FIELD_SET = frozenset(FIELDS)
# The shorthands, exactly (the request schema of /openapi.json says the same): a scale
# of 1 to 4, or a target side of 64 to 2048 (0: from the other side), not both 0.
_SIDE = r"(?:0|6[4-9]|[7-9][0-9]|[1-9][0-9]{2}|1[0-9]{3}|20[0-3][0-9]|204[0-8])"
_BY = "[xX\u00d7]"
SHORTHAND = rf"(?!0{_BY}0$)(?:(?:[1-3](?:\.[0-9]+)?|4(?:\.0+)?){_BY}|{_SIDE}{_BY}{_SIDE})"
_SCALE = re.compile(rf"([0-9.]+){_BY}")
_SIZE = re.compile(rf"([0-9]+){_BY}([0-9]+)")


def parse_hires(value: Any, *, max_steps: int = STEPS_MAX) -> HiresFix | None:
    """The `hires` request field: an object of `HiresFix`'s fields (unknown ones
    refused), a shorthand `"2x"`, `"1.5x"` or `"1024x768"`, a bare scale, `true` (the
    defaults) or `false` / null (none). Every refusal names the field (`hires.steps`)."""
    return None if value is None else Hires(max_steps=max_steps).check("hires", value)


def min_strength(max_steps: int) -> float:
    """The least second-pass strength above 0: at `max_steps` second-pass steps (the
    most a request may ask), img2img runs `steps / strength` scheduler steps, and the
    schedulers have `SCHEDULER_STEPS_MAX` (rounded up to a thousandth)."""
    return math.ceil((max_steps + 1) / SCHEDULER_STEPS_MAX * 1000) / 1000


# -- the request field ------------------------------------------------------------------


_SCALE = re.compile(rf"([0-9.]+){_BY}")
_SIZE = re.compile(rf"([0-9]+){_BY}([0-9]+)")


@dataclass(frozen=True, kw_only=True)
class Hires(FieldType):
    """The `hires` request field (hires.parse_hires): settings (`HiresSettings`), a
    shorthand, a bare scale, `true` (the defaults) or `false` (none); second-pass steps
    up to `max_steps`."""

    max_steps: int = STEPS_MAX

    def check(self, name: str, value: Any) -> HiresFix | None:
        if value is False:
            return None
        if value is True:
            return HiresFix()
        if isinstance(value, str):
            return _shorthand(value, name)
        if isinstance(value, int | float):
            return HiresFix(scale=_scale(f"{name}.scale", value))
        if not isinstance(value, Mapping):
            raise InvalidParameters(
                f"{name} must be an object, or a string like 2x or 1024x768; "
                f"got {type_name(value)}",
                field=name,
            )
        try:
            return hires_model(self.max_steps).model_validate(value).fix()
        except ValidationError as exc:
            raise first_refusal(exc) from None

    def describe(self) -> dict[str, Any]:
        settings = hires_model(self.max_steps).model_json_schema(schema_generator=SchemaGenerator)
        return {
            "anyOf": [
                settings,
                {"type": "string", "pattern": f"^{SHORTHAND}$", "example": "2x"},
                {"type": "number", "minimum": 1, "maximum": SCALE_MAX},
                {"type": "boolean"},
                {"type": "null"},
            ]
        }


def _shorthand(text: str, name: str) -> HiresFix:
    if not re.fullmatch(SHORTHAND, text):
        raise InvalidParameters(
            f"{name} must look like 2x, 1.5x (a scale of 1 to 4) or 1024x768 (sides of "
            f"{SIZE_MIN} to {SIZE_MAX}; 0: from the other side), got {text[:40]!r}",
            field=name,
        )
    if match := _SIZE.fullmatch(text):
        return HiresFix(
            scale=None,
            width=_side(f"{name}.width", int(match.group(1))),
            height=_side(f"{name}.height", int(match.group(2))),
        )
    if match := _SCALE.fullmatch(text):
        return HiresFix(scale=_scale(f"{name}.scale", float(match.group(1))))
    raise InvalidParameters(
        f"{name} must look like 2x, 1.5x or 1024x768, got {text[:40]!r}", field=name
    )


def _scale(name: str, value: Any) -> float:
    """1 to 4 (1: a second pass at the first pass's size, as A1111 allows)."""
    return parse_number(name, value, 1.0, SCALE_MAX)


def _side(name: str, value: Any) -> int | None:
    """A target side: rounded down to a multiple of 8 when used, as A1111's latents are."""
    if value is None or (value == 0 and not isinstance(value, bool)):  # 0: "the other side"
        return None
    return parse_integer(name, value, SIZE_MIN, SIZE_MAX)


# -- the settings ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Side(FieldType):
    """A target side (`_side`); 0, as null, takes it from the other side."""

    def check(self, name: str, value: Any) -> int | None:
        return _side(name, value)

    def describe(self) -> dict[str, Any]:
        return {
            "anyOf": [
                {"type": "integer", "minimum": SIZE_MIN, "maximum": SIZE_MAX},
                {"enum": [0, None]},
            ]
        }


@dataclass(frozen=True, kw_only=True)
class SecondPassStrength(FieldType):
    """0 (the upscale alone, as A1111 runs a hires fix at 0), or from `min_strength`
    of the most second-pass steps a request may ask (`max_steps`) to 1."""

    max_steps: int = STEPS_MAX

    def check(self, name: str, value: Any) -> float:
        strength = parse_number(name, value, 0.0, 1.0)
        lowest = min_strength(self.max_steps)
        if 0 < strength < lowest:
            raise InvalidParameters(
                f"{name} must be 0 (the upscale alone) or from {lowest:g} to 1, got "
                f"{strength:g}: less would need more than {SCHEDULER_STEPS_MAX} scheduler "
                f"steps for {self.max_steps} second-pass steps",
                field=name,
            )
        return strength

    def describe(self) -> dict[str, Any]:
        lowest = min_strength(self.max_steps)
        return {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": 0},
                {"type": "number", "minimum": lowest, "maximum": 1},
                {"type": "null"},
            ]
        }


# A scale, or a width and/or height: never both (a side of 0 or null is none).
_ONE_TARGET: dict[str, Any] = {
    "anyOf": [
        {
            "required": ["scale", side],
            "properties": {"scale": {"type": "number"}, side: {"type": "integer", "minimum": 1}},
        }
        for side in ("width", "height")
    ]
}
_SIDE_TEXT = (
    f"{SIZE_MIN}..{SIZE_MAX}, rounded down to a multiple of 8; 0 or null: from the other "
    "side and the first pass's aspect"
)
_PROMPT = Text(max_chars=PROMPT_MAX_CHARS, within="hires")


class HiresSettings(BaseModel):
    """The `hires` field as an object: `HiresFix`'s fields, each optional (null: its
    default), in the order they are checked."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"not": _ONE_TARGET})

    width: Annotated[int | None, Side(within="hires"), Field(description=_SIDE_TEXT)] = None
    height: Annotated[int | None, Side(within="hires"), Field(description=_SIDE_TEXT)] = None
    scale: Annotated[
        float | None,
        Number(low=1.0, high=SCALE_MAX, within="hires", shown=DEFAULT_SCALE),
        Field(
            description="the target: the first pass's size times this (not with width or "
            "height; 1: a second pass at the same size)"
        ),
    ] = None
    upscaler: Annotated[
        str | None,
        Choice(choices=tuple(u.name for u in UPSCALERS), within="hires", shown=DEFAULT_UPSCALER),
        Field(description="A1111's names (any case): Latent ones upscale the latents"),
    ] = None
    steps: Annotated[
        int | None,
        Integer(low=0, high=STEPS_MAX, within="hires", shown=0),
        Field(description="the second pass's steps; 0: as many as the first pass"),
    ] = None
    strength: Annotated[
        float | None,
        SecondPassStrength(within="hires", shown=DEFAULT_STRENGTH),
        Field(description="the second pass's denoising strength; 0: the upscale alone"),
    ] = None
    scheduler: Annotated[
        str | None,
        SchedulerName(within="hires", null_listed=True),
        Field(description="the second pass's; null: the first pass's"),
    ] = None
    prompt: Annotated[str | None, _PROMPT, Field(description="null or empty: the job's")] = None
    negative_prompt: Annotated[
        str | None, _PROMPT, Field(description="null or empty: the job's")
    ] = None

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and not _FIELD_SET.issuperset(data):
            unknown = sorted(str(key) for key in data if key not in _FIELD_SET)
            if unknown:
                raise refused(
                    f"unknown field 'hires.{unknown[0]}'; hires takes {', '.join(FIELDS)}",
                    f"hires.{unknown[0]}",
                )
        return data

    @field_validator("scale", mode="before")
    @classmethod
    def _scale_or_sides(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and (info.data.get("width") or info.data.get("height")):
            raise refused("give either hires.scale or hires.width/height, not both", "hires.scale")
        return value

    def fix(self) -> HiresFix:
        """These settings, the defaults in place of what was left out."""
        scale = self.scale
        if scale is None and self.width is None and self.height is None:
            scale = DEFAULT_SCALE
        return HiresFix(
            scale=scale,
            width=self.width,
            height=self.height,
            upscaler=self.upscaler or DEFAULT_UPSCALER,
            steps=self.steps or 0,
            strength=DEFAULT_STRENGTH if self.strength is None else self.strength,
            scheduler=self.scheduler,
            prompt=self.prompt or None,  # "" is A1111's "the same as the first pass"
            negative_prompt=self.negative_prompt or None,
        )


@functools.lru_cache(maxsize=16)
def hires_model(max_steps: int = STEPS_MAX) -> type[HiresSettings]:
    """`HiresSettings` for second passes of up to `max_steps` (generation.max_steps)."""
    if max_steps == STEPS_MAX:
        return HiresSettings
    changes = {"steps": {"high": max_steps}, "strength": {"max_steps": max_steps}}
    return with_settings(HiresSettings, changes)


def _round_down(size: int, multiple: int) -> int:
    return size // multiple * multiple


def cover_size(hires: HiresFix, width: int, height: int, multiple: int = 8) -> tuple[int, int]:
    """The size the first pass is upscaled to: the target, or with both sides given in
    another aspect, the first pass's aspect covering the target (cropped to it after)."""
    if hires.width is None and hires.height is None:
        scale = hires.scale or DEFAULT_SCALE
        to = (int(width * scale), int(height * scale))
    elif hires.height is None:
        assert hires.width is not None
        to = (hires.width, hires.width * height // width)
    elif hires.width is None:
        to = (hires.height * width // height, hires.height)
    elif width / height < hires.width / hires.height:
        to = (hires.width, hires.width * height // width)
    else:
        to = (hires.height * width // height, hires.height)
    return _round_down(to[0], multiple), _round_down(to[1], multiple)


def target_size(hires: HiresFix, width: int, height: int, multiple: int = 8) -> tuple[int, int]:
    """The size of a hires job's images, from its first pass's `width` x `height`:
    rounded down to a multiple of `multiple` (the latents' cell)."""
    if hires.width is not None and hires.height is not None:
        return _round_down(hires.width, multiple), _round_down(hires.height, multiple)
    return cover_size(hires, width, height, multiple)


def second_pass_steps(hires: HiresFix, steps: int) -> int:
    """The steps the second pass runs: its own, or (0) as many as the first pass's;
    none at strength 0 (the upscale alone)."""
    if hires.strength <= 0:
        return 0
    return hires.steps or steps


def img2img_steps(run: int, strength: float) -> int:
    """`num_inference_steps` for an img2img pass that runs exactly `run` steps at
    `strength`: A1111's `int(run / min(strength, 0.999))`, raised where diffusers'
    `int(total * strength)` would come out one short."""
    total = max(run, int(run / min(strength, 0.999)))
    while min(int(total * strength), total) < run:
        total += 1
    return total


def check_hires(
    hires: HiresFix,
    width: int | None,
    height: int | None,
    steps: int,
    *,
    max_pixels: int = PIXELS_MAX,
    name: str = "hires",
) -> None:
    """Refuse a hires job whose target (from a `width` x `height` first pass, when
    known) is out of the size limits, or whose second pass would need more scheduler
    steps than exist."""
    _check_second_pass(hires, steps, name)
    if width is None or height is None:
        return  # the model's native size: checked when the job runs
    target = target_size(hires, width, height)
    if min(target) < SIZE_MIN or max(target) > SIZE_MAX:
        raise InvalidParameters(
            f"{name}: the target size {target[0]}x{target[1]} is outside "
            f"{SIZE_MIN}..{SIZE_MAX} pixels a side",
            field=name,
        )
    if target[0] * target[1] > max_pixels:
        raise InvalidParameters(
            f"{name}: the target size {target[0]}x{target[1]} is "
            f"{target[0] * target[1]} pixels; the limit is {max_pixels}",
            field=name,
        )


def _check_second_pass(hires: HiresFix, steps: int, name: str) -> None:
    run = second_pass_steps(hires, steps)
    if run == 0:
        return  # strength 0: no second pass
    # (the product first: a tiny strength would make the quotient overflow)
    too_many = hires.strength * (SCHEDULER_STEPS_MAX + 1) <= run
    if too_many or img2img_steps(run, hires.strength) > SCHEDULER_STEPS_MAX:
        fewest = math.ceil(run / SCHEDULER_STEPS_MAX * 1000) / 1000
        raise InvalidParameters(
            f"{name}.strength {hires.strength:g} is too low for {run} second-pass steps "
            f"(the scheduler would need more than {SCHEDULER_STEPS_MAX}): use at least "
            f"{fewest:g}, or fewer steps",
            field=f"{name}.strength",
        )
