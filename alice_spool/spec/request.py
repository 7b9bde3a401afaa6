"""A generation request as the doors hand it over, declared once as a typed model: each
field's rule, the rules between fields, the limits a configuration sets, and the JSON
schema /openapi.json shows (pure, no I/O; parsing.py turns a request into a `JobSpec`)."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import operator
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Self, TypeVar, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..errors import InvalidParameters
from ..fields import (
    CLIP_SKIP_MAX,
    GUIDANCE_MAX,
    IDEMPOTENCY_KEY_MAX_CHARS,
    LORAS_MAX,
    N_MAX,
    PRIORITY_MAX,
    PRIORITY_MIN,
    PROMPT_MAX_CHARS,
    SEED_MAX,
    SEQUENCE_MAX,
    STEPS_MAX,
    TEXT_PATTERN,
    Dimension,
    ImageReference,
    Integer,
    LoraPaths,
    Loras,
    LoraScales,
    ModelId,
    Number,
    SchedulerName,
    SchemaGenerator,
    Size,
    Strength,
    Text,
    VaeId,
    first_refusal,
    lora_set,
    paired_scales,
    refusal,
    refused,
    type_name,
    with_settings,
)
from ..hires import Hires, HiresFix, check_hires
from .settings import (
    BUILTIN_DEFAULTS,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_SCHEDULER,
    DEFAULT_STEPS,
    BuiltinDefaults,
    GenerationDefaults,
)

DEFAULT_STRENGTH = 0.75  # img2img's and inpainting's


def denoising_steps(steps: int, strength: float) -> int:
    """How many of `steps` an img2img or inpainting run takes: diffusers starts
    `int(steps * strength)` steps from the end (its pipelines' `get_timesteps`)."""
    return min(int(steps * strength), steps)


def least_strength(steps: int) -> float:
    """The least strength that leaves `steps` one step to run, int(steps x it) >= 1, in
    floating point as `denoising_steps` (and diffusers) computes it."""
    least = 1 / steps
    while steps * least < 1:
        least = math.nextafter(least, 2.0)
    while steps * math.nextafter(least, 0.0) >= 1:
        least = math.nextafter(least, 0.0)
    return least


def check_denoising_steps(steps: int, strength: float) -> None:
    """An img2img or inpainting request must leave at least one step to run; with
    none, diffusers fails (every time, on every try)."""
    if denoising_steps(steps, strength) >= 1:
        return
    try:
        fewest = math.ceil(1 / strength)
    except OverflowError:  # a strength so small (5e-324) that no step count is enough
        raise InvalidParameters(
            f"strength {strength:g} leaves no denoising step at any steps: raise it",
            field="strength",
        ) from None
    while denoising_steps(fewest, strength) < 1:  # float rounding: 49 * (1 / 49) < 1
        fewest += 1
    raise InvalidParameters(
        f"strength {strength:g} with steps {steps} leaves no denoising step "
        f"(int(steps x strength) = 0): raise steps to at least {fewest}, or strength "
        f"so that steps x strength is at least 1",
        field="strength",
    )


def _describe_body(schema: dict[str, Any]) -> None:
    """What the schema says of the body as a whole: a prompt (the body a door takes
    input images with says more), and fields that are instead of each other."""
    schema["required"] = ["prompt"]
    instead: list[dict[str, Any]] = [{"required": ["n", "num_images"]}]
    instead += [  # `size` is instead of `width` and `height`, never with them
        {
            "required": ["size", side],
            "properties": {"size": {"type": "string"}, side: {"type": "number"}},
        }
        for side in ("width", "height")
    ]
    instead.append(  # one spelling of LoRAs or the other
        {
            "required": ["loras", "lora_paths"],
            "properties": {"loras": {"type": "array"}, "lora_paths": {"type": "array"}},
        }
    )
    schema["not"] = {"anyOf": instead}


_LORAS_TEXT = (
    "LoRAs from <models>/loras/ (GET /v1/loras), each named once; prompt tags "
    "<lora:name:scale> count too"
)
_TRUE_CFG_TEXT = (
    "FLUX.1: classifier-free guidance over the negative prompt, which its distilled "
    "guidance (guidance_scale) lacks; above 1 it runs the model twice a step, and a FLUX.1 "
    "request with a negative_prompt needs it; 1 or null: off. Other families' "
    "guidance_scale is that already: there it is ignored, and the job records so "
    "(client_fields.ignored)"
)
_SEQUENCE_TEXT = (
    "FLUX.1 and SD 3.x: the prompt's length in T5 tokens (FLUX.1 schnell at most 256); "
    "null: the pipeline's own (512 or 256). Ignored, and recorded so, by families without "
    "a T5 encoder"
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Prompt(Text):
    """The prompt: blank only with an input image (`_as_a_whole` checks the body as a
    whole), which the schema leaves to the doors: there it is never blank."""

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pattern": TEXT_PATTERN}


class GenerationRequest(BaseModel):
    """One generation request, its fields in the order they are checked (the first
    refusal is the one reported). Null is a field left out. Validated, it is normalised:
    every LoRA in `loras` (the prompt without its tags), `size` in `width` and `height`,
    `strength` set with an input image only. Its limits are the built-in ones;
    `spec_model(defaults)` gives a configuration's."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_describe_body)
    settings: ClassVar[GenerationDefaults] = BUILTIN_DEFAULTS

    prompt: Annotated[
        str,
        _Prompt(max_chars=PROMPT_MAX_CHARS, nullable=False),
        Field(description="not blank; no NUL characters"),
    ] = ""
    loras: Annotated[
        tuple[tuple[str, float], ...] | None,
        Loras(most=LORAS_MAX),
        Field(description=_LORAS_TEXT),
    ] = None
    lora_scales: Annotated[
        tuple[float, ...] | None,
        LoraScales(),
        Field(
            description="ALICE's: the scale of each lora_paths entry (1 when missing; one "
            "without an entry applies to nothing)"
        ),
    ] = None
    lora_paths: Annotated[
        tuple[str, ...] | None,
        LoraPaths(most=LORAS_MAX),
        Field(description="ALICE's: LoRA file names (the name is the file's)"),
    ] = None
    negative_prompt: Annotated[
        str | None, Text(max_chars=PROMPT_MAX_CHARS, shown=""), Field(description="no NULs")
    ] = None
    model: Annotated[
        str | None,
        ModelId(),
        Field(description="an installed model; the default model when left out or empty"),
    ] = None
    width: Annotated[
        int | None, Dimension(), Field(description="the model's native size when left out")
    ] = None
    height: Annotated[
        int | None, Dimension(), Field(description="the model's native size when left out")
    ] = None
    size: Annotated[
        tuple[int, int] | None, Size(), Field(description="WIDTHxHEIGHT, instead of both")
    ] = None
    steps: Annotated[
        int | None,
        Integer(low=1, high=STEPS_MAX, shown=DEFAULT_STEPS),
        Field(description="the model family's default, else the server's, when left out"),
    ] = None
    guidance_scale: Annotated[
        float | None,
        Number(low=0.0, high=GUIDANCE_MAX, shown=DEFAULT_GUIDANCE_SCALE),
        Field(description="the model family's default, else the server's, when left out"),
    ] = None
    seed: Annotated[
        int | None,
        Integer(low=-1, high=SEED_MAX),
        Field(description="random when -1 or left out (and recorded)"),
    ] = None
    scheduler: Annotated[
        str | None,
        SchedulerName(shown=DEFAULT_SCHEDULER, null_listed=True),
        Field(description="also as other SD tools spell them (DPM++ 2M Karras, Euler a)"),
    ] = None
    n: Annotated[int | None, Integer(low=1, high=N_MAX, shown=1), Field(description="images")] = (
        None
    )
    num_images: Annotated[
        int | None, Integer(low=1, high=N_MAX), Field(description="n, by another name")
    ] = None
    priority: Annotated[
        int | None,
        Integer(low=PRIORITY_MIN, high=PRIORITY_MAX, shown=0),
        Field(
            description="higher runs first; a user's key may set at most "
            "users.max_priority (an admin's key any)"
        ),
    ] = None
    init_image: Annotated[str | None, ImageReference()] = None
    mask_image: Annotated[str | None, ImageReference()] = None  # white: repaint
    strength: Annotated[
        float | None,
        Strength(shown=DEFAULT_STRENGTH),
        Field(description="with an input image: how much to change it"),
    ] = None
    hires: Annotated[
        HiresFix | None,
        Hires(),
        Field(
            description="hires fix (txt2img only): a second pass, as img2img, at a larger "
            "size: settings, a scale (2x, 1.5) or a size (1024x768); true: the defaults"
        ),
    ] = None
    clip_skip: Annotated[
        int | None,
        Integer(low=1, high=CLIP_SKIP_MAX, shown=1),
        Field(description="A1111's: stop at the Nth CLIP layer from the end (1: the last)"),
    ] = None
    vae: Annotated[
        str | None,
        VaeId(),
        Field(
            description="a VAE from <models>/vae/ (vae/<name>, or its file name) in place "
            "of the model's own; null, Automatic or None: the model's own"
        ),
    ] = None
    true_cfg_scale: Annotated[
        float | None,
        Number(low=1.0, high=GUIDANCE_MAX, shown=1),
        Field(description=_TRUE_CFG_TEXT),
    ] = None
    max_sequence_length: Annotated[
        int | None, Integer(low=1, high=SEQUENCE_MAX), Field(description=_SEQUENCE_TEXT)
    ] = None

    @model_validator(mode="before")
    @classmethod
    def _as_a_whole(cls, data: Any) -> Any:
        """An object of known fields; `n` or `num_images`; a prompt, unless there is an
        input image (img2img and inpainting may go without, as an image variation
        does); `loras` or `lora_paths`."""
        if not isinstance(data, Mapping):
            raise refused(f"a request must be a JSON object, got {type_name(data)}", None)
        known = cls.__pydantic_fields__
        if not data.keys() <= known.keys():
            key = next(key for key in data if key not in known)
            hint = difflib.get_close_matches(str(key), list(known), n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise refused(f"unknown field {str(key)!r}{suggestion}", str(key))
        if "n" in data and "num_images" in data:
            first, second = (key for key in data if key in ("n", "num_images"))
            raise refused(f"give either {first!r} or {second!r}, not both", second)
        if data.get("init_image") is None:
            if "prompt" not in data:
                raise refused("prompt is required", "prompt")
            if isinstance(data["prompt"], str) and not data["prompt"].strip():
                raise refused("prompt must not be empty", "prompt")
        if data.get("loras") is not None and data.get("lora_paths") is not None:
            raise refused("give either loras or lora_paths, not both", "lora_paths")
        return data

    @field_validator("size", mode="before")
    @classmethod
    def _size_or_sides(cls, value: Any, info: ValidationInfo) -> Any:
        sides = info.data.get("width"), info.data.get("height")
        if value is not None and sides != (None, None):
            raise refused("give either size or width and height, not both", "size")
        return value

    @model_validator(mode="after")
    def _between_fields(self) -> Self:
        try:
            self._gather_loras()
            self._take_size()
            self._take_images()
            self._check_hires()
        except InvalidParameters as exc:
            raise refusal(exc) from None
        return self

    def _gather_loras(self) -> None:
        """Every LoRA named, in `loras`: the field's, `lora_paths` with their
        `lora_scales`, and the prompt's tags (taken out of the prompt)."""
        given = (self.loras, self.lora_paths, self.lora_scales)
        if given == (None, None, None) and "<" not in self.prompt:
            return  # (most requests: no LoRAs, and nothing to change)
        named = [(lora_id, scale, "loras") for lora_id, scale in self.loras or ()]
        named += paired_scales(self.lora_paths or (), self.lora_scales or ())
        self.prompt, self.loras = lora_set(self.prompt, named, self.settings.max_loras)
        if self.lora_paths is not None or self.lora_scales is not None:
            self.lora_paths = self.lora_scales = None

    def _take_size(self) -> None:
        if self.size is not None:
            (self.width, self.height), self.size = self.size, None
        width, height, limit = self.width, self.height, self.settings.max_pixels
        if width is not None and height is not None and width * height > limit:
            raise InvalidParameters(
                f"width x height = {width * height} pixels; the limit is {limit}", field="width"
            )

    def _take_images(self) -> None:
        """A mask goes with an init image; strength is an input image's (0.75 unless
        given), and must leave a step to run when the steps are given (else it is
        checked when the model's are known: registry.for_family)."""
        if self.init_image is None:
            if self.mask_image is not None:
                raise InvalidParameters("mask_image needs an init_image", field="mask_image")
            if self.strength is not None:
                self.strength = None  # without an image there is nothing to keep
            return
        if self.strength is None:
            self.strength = DEFAULT_STRENGTH
        if self.steps is not None:
            check_denoising_steps(self.steps, self.strength)

    def _check_hires(self) -> None:
        """Hires is txt2img's. Its target size is checked when the job runs, against the
        first pass's size then known: a limit on two fields together is more than the
        schema says, and what /openapi.json says is taken is taken."""
        if self.hires is None:
            return
        if self.init_image is not None:
            raise InvalidParameters("hires is for txt2img, not with an init_image", field="hires")
        steps = self.steps if self.steps is not None else self.settings.default_steps
        check_hires(self.hires, None, None, steps, max_pixels=self.settings.max_pixels)


class JobRequest(GenerationRequest):
    """A request from a file, the CLI or POST /v1/jobs: a generation request and its `id`."""

    id: Annotated[
        str | None,
        Text(max_chars=IDEMPOTENCY_KEY_MAX_CHARS, required=True),
        Field(description="idempotency key: not blank; no NUL characters"),
    ] = None


# -- a configuration's limits -------------------------------------------------------------

_SETTINGS = tuple(f.name for f in dataclasses.fields(BuiltinDefaults))
_settings_of = operator.attrgetter(*_SETTINGS)


def _follow(settings: GenerationDefaults) -> dict[str, dict[str, Any]]:
    """What each field takes from the [generation] settings: its limits, and the
    defaults the schema shows."""
    return {
        "loras": {"most": settings.max_loras},
        "lora_paths": {"most": settings.max_loras},
        "steps": {"high": settings.max_steps, "shown": settings.default_steps},
        "guidance_scale": {"shown": settings.default_guidance_scale},
        "scheduler": {"shown": settings.default_scheduler},
        "n": {"high": settings.max_n},
        "num_images": {"high": settings.max_n},
        "hires": {"max_steps": settings.max_steps},
    }


@functools.lru_cache(maxsize=32)
def _model(base: type[GenerationRequest], values: tuple[Any, ...]) -> type[GenerationRequest]:
    settings = BuiltinDefaults(*values)
    if settings == BUILTIN_DEFAULTS:
        return base
    return with_settings(base, _follow(settings), settings=settings)


def spec_model(defaults: GenerationDefaults = BUILTIN_DEFAULTS) -> type[GenerationRequest]:
    """The request model of these settings' limits and defaults (made once for each)."""
    return _model(GenerationRequest, _settings_of(defaults))


def request_model(defaults: GenerationDefaults = BUILTIN_DEFAULTS) -> type[JobRequest]:
    """`spec_model` with the request's `id`: the body of POST /v1/jobs, a line of a
    JSONL file in the inbox."""
    return cast(type[JobRequest], _model(JobRequest, _settings_of(defaults)))


_Request = TypeVar("_Request", bound=GenerationRequest)


def validate(model: type[_Request], data: Any) -> _Request:
    """`data` as `model` validates and normalises it; refused, the first error as the
    `InvalidParameters` that names its field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise first_refusal(exc) from None


def request_json_schema(defaults: GenerationDefaults = BUILTIN_DEFAULTS) -> dict[str, Any]:
    """The JSON schema of a request's body (`request_model`) with these settings' limits
    and defaults, as /openapi.json shows it. Its input images are not in it: each door
    takes them in forms of its own (inputs.py), and passes on what it stored."""
    return request_model(defaults).model_json_schema(schema_generator=SchemaGenerator)
