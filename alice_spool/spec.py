"""`JobSpec`: parse, normalise and validate one generation request (pure, no I/O)."""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import random
import re
import secrets
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

from . import samplers
from .errors import InvalidParameters
from .fields import (
    CLIP_SKIP_MAX,
    GUIDANCE_MAX,
    LORAS_MAX,
    N_MAX,
    PIXELS_MAX,
    PROMPT_MAX_CHARS,
    SEED_MAX,
    SEQUENCE_MAX,
    STEPS_MAX,
    normalise_model_id,
    normalise_scheduler,
    normalise_vae_id,
    parse_dimension,
    parse_idempotency_key,
    parse_integer,
    parse_loras,
    parse_number,
    parse_priority,
    parse_size,
    parse_string,
    type_name,
)

# Re-exported: the limits and field parsers that other modules import from here.
from .fields import IDEMPOTENCY_KEY_MAX_CHARS as IDEMPOTENCY_KEY_MAX_CHARS
from .fields import LORA_PREFIX as LORA_PREFIX
from .fields import LORA_SCALE_MAX as LORA_SCALE_MAX
from .fields import LORA_SCALE_MIN as LORA_SCALE_MIN
from .fields import LORAS_LIMIT as LORAS_LIMIT
from .fields import MODEL_PREFIX as MODEL_PREFIX
from .fields import PRIORITY_MAX as PRIORITY_MAX
from .fields import PRIORITY_MIN as PRIORITY_MIN
from .fields import SIZE_MAX as SIZE_MAX
from .fields import SIZE_MIN as SIZE_MIN
from .fields import SIZE_MULTIPLE as SIZE_MULTIPLE
from .fields import VAE_PREFIX as VAE_PREFIX
from .fields import check_priority_cap as check_priority_cap
from .fields import normalise_lora_id as normalise_lora_id
from .hires import HiresFix, check_hires, parse_hires

# Every scheduler name a job may hold: a sampler alone, or a sampler and a schedule type.
SCHEDULERS: tuple[str, ...] = samplers.NAMES

DEFAULT_STRENGTH = 0.75
_IMAGE_REFERENCE = re.compile(r"sha256:[0-9a-f]{64}")


# The request defaults of DESIGN section 4, defined here only (config.py's
# [generation] settings start from them).
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE_SCALE = 7.5
DEFAULT_SCHEDULER = "dpm++_sde_karras"


class GenerationDefaults(Protocol):
    """What the parser needs from the `[generation]` settings (config.py provides it)."""

    @property
    def default_model(self) -> str: ...
    @property
    def default_steps(self) -> int: ...
    @property
    def default_guidance_scale(self) -> float: ...
    @property
    def default_scheduler(self) -> str: ...
    @property
    def max_steps(self) -> int: ...
    @property
    def max_pixels(self) -> int: ...
    @property
    def max_n(self) -> int: ...
    @property
    def max_loras(self) -> int: ...


# Seeds need to be unpredictable to nobody, only different: a fast generator will do.
_SEEDS = random.Random(secrets.randbits(128))


def random_seed() -> int:
    return _SEEDS.getrandbits(32)


@dataclass(frozen=True)
class BuiltinDefaults:
    """The defaults of DESIGN section 4, used when no configuration is at hand."""

    default_model: str = ""
    default_steps: int = DEFAULT_STEPS
    default_guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    default_scheduler: str = DEFAULT_SCHEDULER
    max_steps: int = STEPS_MAX
    max_pixels: int = PIXELS_MAX
    max_n: int = N_MAX
    max_loras: int = LORAS_MAX


BUILTIN_DEFAULTS = BuiltinDefaults()


@dataclass(frozen=True)
class JobSpec:
    """One normalised generation request.

    `model`, `width` and `height` are None when the request left them to the server
    (the default model, the model's native size); `seed` is None until a random one is drawn.
    """

    prompt: str
    negative_prompt: str = ""
    model: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    seed: int | None = None
    scheduler: str = DEFAULT_SCHEDULER
    n: int = 1
    priority: int = 0
    # LoRA adapters as (lora/<name>, scale), sorted by name: the set, not an order.
    loras: tuple[tuple[str, float], ...] = ()
    # Image inputs, as `sha256:<hex>` of the files stored with the job (inputs.py).
    init_image: str | None = None
    mask_image: str | None = None  # white = repaint, black = keep
    strength: float | None = None  # img2img/inpainting: how much to change (0 < s <= 1)
    hires: HiresFix | None = None  # txt2img in two passes (hires.py)
    # A1111's CLIP_stop_at_last_layers: 2..12 stops that many layers from the end
    # (diffusers' clip_skip is one less); 1, the last layer, is stored as None.
    clip_skip: int | None = None
    # A VAE of <models>/vae/ (vae/<name>) in place of the model's own; None: its own.
    vae: str | None = None
    # Classifier-free guidance over the negative prompt for a model whose guidance_scale
    # is distilled (FLUX.1: diffusers' `true_cfg_scale`); None: off (1 means off too).
    true_cfg_scale: float | None = None
    # The T5 prompt length in tokens (FLUX.1, SD 3.x); None: the pipeline's own.
    max_sequence_length: int | None = None
    # What a client's own API asked for that the server records as it was sent and does
    # not act on otherwise (the OpenAI doors: the model name asked for when it was an
    # alias, `user`, `style`, `quality`, `output_format`, ...): sorted (name, value)
    # pairs. Set by the doors, never a request field of its own.
    client_fields: tuple[tuple[str, str | int], ...] = ()
    # The fields among FAMILY_FIELDS the request left to the model, filled with the
    # server's defaults meanwhile: the door puts the model family's own in their place
    # once it knows the model (registry.with_model), and empties this. Never stored.
    left_to_model: tuple[str, ...] = field(default=(), compare=False)

    @property
    def mode(self) -> str:
        if self.init_image is None:
            return "txt2img" if self.hires is None else "hires"
        return "inpaint" if self.mask_image is not None else "img2img"

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in _SPEC_FIELDS if name not in _TRANSIENT}
        data["loras"] = [{"name": name, "scale": scale} for name, scale in self.loras]
        data["hires"] = self.hires.to_dict() if self.hires is not None else None
        data["client_fields"] = dict(self.client_fields)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        """Rebuild a spec that was stored by `to_dict` (trusted input: no validation)."""
        values = {k: v for k, v in data.items() if k in _STORED}
        values["loras"] = tuple(
            (entry["name"], float(entry["scale"])) for entry in values.get("loras") or ()
        )  # the others added later are None, or absent from older records
        if values.get("hires") is not None:
            values["hires"] = HiresFix.from_dict(values["hires"])
        values["client_fields"] = tuple(sorted((values.get("client_fields") or {}).items()))
        return cls(**values)

    @property
    def lora_names(self) -> list[str]:
        return [name for name, _ in self.loras]

    def fingerprint(self) -> str:
        """A stable hash of the request, used to tell a repeated request from a different
        one. The fields are strings, numbers and None, whose `repr` is stable, in a fixed
        order; hires as its (name, value) pairs that differ from their defaults."""
        values = tuple(
            getattr(self, name) for name in _SPEC_FIELDS if name not in _LATER + _TRANSIENT
        )
        # The fields added later count only when set: a plain request hashes as before.
        later = {name: getattr(self, name) for name in _LATER if getattr(self, name)}
        # What the server noted it ignored is not what the request asked for.
        asked = tuple((k, v) for k, v in self.client_fields if k != IGNORED)
        if asked:
            later["client_fields"] = asked
        else:
            later.pop("client_fields", None)
        if self.hires is not None:
            later["hires"] = self.hires.fingerprint_items()
        values += tuple(later.items())
        return hashlib.sha256(repr(values).encode()).hexdigest()

    def with_seed(self) -> JobSpec:
        """This spec with a seed: its own, or a freshly drawn random one (recorded)."""
        if self.seed is not None:
            return self
        return replace(self, seed=random_seed())

    def batch_key(self) -> tuple[object, ...]:
        """Specs with equal keys can run in one pipeline call: same model, size, steps,
        scheduler, guidance and LoRA set (prompts, seeds and image counts may differ)."""
        key: tuple[object, ...] = (
            self.model,
            self.width,
            self.height,
            self.steps,
            self.scheduler,
            self.guidance_scale,
        )
        # Only a spec with LoRAs or an input image adds them, so that the digests of
        # plain jobs queued before these existed still match new plain jobs.
        if self.loras:
            key = (*key, ("loras", self.loras))
        if self.init_image is not None:
            key = (*key, (self.mode, self.strength))
        if self.hires is not None:
            key = (*key, ("hires", self.hires.batch_key()))
        if self.clip_skip is not None:
            key = (*key, ("clip_skip", self.clip_skip))
        if self.vae is not None:
            key = (*key, ("vae", self.vae))
        if self.true_cfg_scale is not None:
            key = (*key, ("true_cfg_scale", self.true_cfg_scale))
        if self.max_sequence_length is not None:
            key = (*key, ("max_sequence_length", self.max_sequence_length))
        return key

    def batch_digest(self) -> str:
        """`batch_key` as a short stable string: the store's column for finding jobs that
        can share a pipeline call."""
        return hashlib.sha256(repr(self.batch_key()).encode()).hexdigest()[:32]

    def image_seeds(self) -> list[int]:
        """The seed of each of the `n` images: consecutive, wrapping at 2**32."""
        if self.seed is None:
            raise ValueError("the spec has no seed yet; call with_seed() first")
        return [(self.seed + i) % (SEED_MAX + 1) for i in range(self.n)]


_SPEC_FIELDS = tuple(f.name for f in fields(JobSpec))
# The client_fields entry in which the door notes what the model's family had no use for
# (registry.for_family): recorded with the job, not part of what it asked for.
IGNORED = "ignored"
# Not in the first fingerprints.
_LATER = (
    "loras", "init_image", "mask_image", "strength", "hires", "clip_skip", "vae",
    "true_cfg_scale", "max_sequence_length", "client_fields",
)  # fmt: skip
# Not part of what a job asks for: never stored, never in its fingerprint.
_TRANSIENT = ("left_to_model",)
# The request fields a JobSpec has (its client_fields are the doors' to set).
SPEC_FIELDS = tuple(n for n in _SPEC_FIELDS if n not in ("client_fields", *_TRANSIENT))
# What a model family may have its own default for (families.py).
FAMILY_FIELDS = ("steps", "guidance_scale", "scheduler")
_STORED = frozenset(_SPEC_FIELDS) - frozenset(_TRANSIENT)


@dataclass(frozen=True)
class Request:
    """A request as it arrives in a file or on the command line: a spec and its `id`."""

    spec: JobSpec
    idempotency_key: str | None = None


# -- the request ------------------------------------------------------------------------

_FIELDS = SPEC_FIELDS
_ALIASES = {"num_images": "n"}
# "WxH" for width and height, as the OpenAI images API has it; ALICE's LoRA fields.
_SHORTHANDS = ("size", "lora_paths", "lora_scales")


def _reject_unknown(data: Mapping[Any, Any], allowed: tuple[str, ...]) -> None:
    for key in data:
        if key in allowed:
            continue
        text = str(key)
        hint = difflib.get_close_matches(text, allowed, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise InvalidParameters(f"unknown field {text!r}{suggestion}", field=text)


def parse_spec(
    data: Any,
    defaults: GenerationDefaults = BUILTIN_DEFAULTS,
    *,
    allowed_extra: tuple[str, ...] = (),
) -> JobSpec:
    """Validate a request object and return its normalised `JobSpec`.

    Unknown fields are errors (typo protection) unless named in `allowed_extra`, which
    the caller then reads itself. Every error is an `InvalidParameters` naming the field.
    The prompt may be left out or empty only with an init_image (img2img and
    inpainting with no prompt, as an image variation is).
    """
    if not isinstance(data, Mapping):
        raise InvalidParameters(f"a request must be a JSON object, got {type_name(data)}")
    _reject_unknown(data, _FIELDS + tuple(_ALIASES) + _SHORTHANDS + allowed_extra)
    values: dict[str, tuple[str, Any]] = {}  # field -> (name as written, value)
    for key, value in data.items():
        target = _ALIASES.get(key, key)
        if target not in _FIELDS:
            continue
        if target in values:
            raise InvalidParameters(
                f"give either {values[target][0]!r} or {key!r}, not both", field=key
            )
        values[target] = (key, value)

    def given(name: str) -> tuple[str, Any] | None:
        entry = values.get(name)
        return None if entry is None or entry[1] is None else entry

    with_image = given("init_image") is not None  # img2img may have no prompt
    if "prompt" not in values and not with_image:
        raise InvalidParameters("prompt is required", field="prompt")
    asked = values["prompt"][1] if "prompt" in values else ""
    prompt = parse_string("prompt", asked, max_chars=PROMPT_MAX_CHARS, required=not with_image)
    entry = given("loras")
    prompt, loras = parse_loras(
        entry[1] if entry else None,
        data.get("lora_paths"),
        data.get("lora_scales"),
        prompt,
        defaults.max_loras,
    )

    negative = ""
    if entry := given("negative_prompt"):
        negative = parse_string(entry[0], entry[1], max_chars=PROMPT_MAX_CHARS, required=False)

    model: str | None = None
    if (entry := given("model")) and not (isinstance(entry[1], str) and not entry[1].strip()):
        model = normalise_model_id(entry[1], entry[0])
    elif defaults.default_model:
        model = normalise_model_id(defaults.default_model, "generation.default_model")

    width = parse_dimension(e[0], e[1]) if (e := given("width")) else None
    height = parse_dimension(e[0], e[1]) if (e := given("height")) else None
    if data.get("size") is not None:
        if width is not None or height is not None:
            raise InvalidParameters("give either size or width and height, not both", field="size")
        width, height = parse_size(data["size"])
    if width is not None and height is not None and width * height > defaults.max_pixels:
        raise InvalidParameters(
            f"width x height = {width * height} pixels; the limit is {defaults.max_pixels}",
            field="width",
        )

    steps = parse_integer(e[0], e[1], 1, defaults.max_steps) if (e := given("steps")) else None
    guidance = (
        parse_number(e[0], e[1], 0.0, GUIDANCE_MAX) if (e := given("guidance_scale")) else None
    )

    seed: int | None = None
    if entry := given("seed"):
        seed = parse_integer(entry[0], entry[1], -1, SEED_MAX)
        if seed == -1:  # -1 (or -1.0): a random seed, as A1111 and ALICE take it
            seed = None

    scheduler = (
        normalise_scheduler(e[1], e[0]) if (e := given("scheduler")) else defaults.default_scheduler
    )
    n = parse_integer(e[0], e[1], 1, defaults.max_n) if (e := given("n")) else 1
    priority = parse_priority(e[1], e[0]) if (e := given("priority")) else 0

    init_image, mask_image, strength = _image_fields(given)
    left = tuple(name for name in FAMILY_FIELDS if given(name) is None)
    if strength is not None and steps is not None:  # else once the model's steps are known
        check_denoising_steps(steps, strength)
    steps = steps if steps is not None else defaults.default_steps
    hires = _hires_field(given, init_image, width, height, steps, defaults)
    clip_skip = parse_integer(e[0], e[1], 1, CLIP_SKIP_MAX) if (e := given("clip_skip")) else None
    vae = normalise_vae_id(e[1], e[0]) if (e := given("vae")) else None
    true_cfg = (
        parse_number(e[0], e[1], 1.0, GUIDANCE_MAX) if (e := given("true_cfg_scale")) else None
    )
    sequence = (
        parse_integer(e[0], e[1], 1, SEQUENCE_MAX) if (e := given("max_sequence_length")) else None
    )
    return JobSpec(
        prompt=prompt,
        negative_prompt=negative,
        model=model,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=guidance if guidance is not None else float(defaults.default_guidance_scale),
        seed=seed,
        scheduler=scheduler,
        n=n,
        priority=priority,
        loras=loras,
        init_image=init_image,
        mask_image=mask_image,
        strength=strength,
        hires=hires,
        clip_skip=clip_skip if clip_skip != 1 else None,  # 1: the last layer, no skip
        vae=vae,
        true_cfg_scale=true_cfg if true_cfg != 1.0 else None,  # 1: no true CFG
        max_sequence_length=sequence,
        left_to_model=left,
    )


def _hires_field(
    given: Callable[[str], tuple[str, Any] | None],
    init_image: str | None,
    width: int | None,
    height: int | None,
    steps: int,
    defaults: GenerationDefaults,
) -> HiresFix | None:
    """The `hires` field (hires.py), for txt2img only; its target is checked against
    the size limits here when the first pass's size is known, else when the job runs."""
    entry = given("hires")
    hires = parse_hires(entry[1], max_steps=defaults.max_steps) if entry else None
    if hires is None:
        return None
    if init_image is not None:
        raise InvalidParameters("hires is for txt2img, not with an init_image", field="hires")
    # (Its target size is checked when the job runs, against the first pass's size then
    # known: a limit on two fields together is more than a request schema can say, and
    # what /openapi.json says is taken is taken.)
    check_hires(hires, None, None, steps, max_pixels=defaults.max_pixels)
    return hires


def _image_fields(
    given: Callable[[str], tuple[str, Any] | None],
) -> tuple[str | None, str | None, float | None]:
    """init_image and mask_image, as the door's image intake (inputs.take) left them:
    `sha256:<hex>` of an image it decoded and stored; and strength, with an image."""
    references: list[str | None] = []
    for role in ("init_image", "mask_image"):
        entry = given(role)
        if entry is None:
            references.append(None)
            continue
        if not (isinstance(entry[1], str) and _IMAGE_REFERENCE.fullmatch(entry[1])):
            raise InvalidParameters(f"{role} is not taken here (no image inputs)", field=role)
        references.append(entry[1])
    init_image, mask_image = references
    if mask_image is not None and init_image is None:
        raise InvalidParameters("mask_image needs an init_image", field="mask_image")
    strength = None
    if (entry := given("strength")) is not None:
        strength = parse_number(entry[0], entry[1], 0.0, 1.0)
        if strength <= 0:
            raise InvalidParameters(
                f"{entry[0]} must be more than 0 and at most 1, got {strength:g}", field=entry[0]
            )
    if init_image is None:
        strength = None  # without an image there is nothing to keep
    elif strength is None:
        strength = DEFAULT_STRENGTH
    return init_image, mask_image, strength


def denoising_steps(steps: int, strength: float) -> int:
    """How many of `steps` an img2img or inpainting run takes: diffusers starts
    `int(steps * strength)` steps from the end (its pipelines' `get_timesteps`)."""
    return min(int(steps * strength), steps)


def check_denoising_steps(steps: int, strength: float) -> None:
    """An img2img or inpainting request must leave at least one step to run; with
    none, diffusers fails (every time, on every try)."""
    if denoising_steps(steps, strength) >= 1:
        return
    fewest = math.ceil(1 / strength)
    while denoising_steps(fewest, strength) < 1:  # float rounding: 49 * (1 / 49) < 1
        fewest += 1
    raise InvalidParameters(
        f"strength {strength:g} with steps {steps} leaves no denoising step "
        f"(int(steps x strength) = 0): raise steps to at least {fewest}, or strength "
        f"so that steps x strength is at least 1",
        field="strength",
    )


def parse_request(data: Any, defaults: GenerationDefaults = BUILTIN_DEFAULTS) -> Request:
    """A request from a file or the CLI: a spec plus an optional `id` (its idempotency key)."""
    spec = parse_spec(data, defaults, allowed_extra=("id",))
    key = None
    if isinstance(data, Mapping) and data.get("id") is not None:
        key = parse_idempotency_key(data["id"], "id")
    return Request(spec=spec, idempotency_key=key)


def load_json(text: str) -> Any:
    """`json.loads` for text from outside: every way it can refuse the text is a
    ValueError that says why in a few words (a syntax error, nesting deeper than the
    interpreter recurses, an integer of more digits than Python converts)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except ValueError:  # int() refuses over sys.get_int_max_str_digits() digits
        raise ValueError(
            f"a number in the JSON has more than {sys.get_int_max_str_digits()} digits"
        ) from None


def parse_json(text: str, where: str) -> Any:
    """JSON text -> value; a refusal names `where` (a file name, a line)."""
    try:
        return load_json(text)
    except ValueError as exc:
        raise InvalidParameters(f"{where}: {exc}") from None


def parse_jsonl(
    text: str,
    name: str,
    defaults: GenerationDefaults = BUILTIN_DEFAULTS,
    *,
    prepare: Callable[[Any], Any] | None = None,
) -> list[Request]:
    """A JSONL batch: one request per line, blank lines skipped. The first bad line is
    an error naming its number (`name line N: ...`), so a batch is all or nothing.
    `prepare`: applied to each line's value before it is parsed (the image intake)."""
    requests = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name} line {number}"
        try:
            value = parse_json(line, where)
            requests.append(parse_request(prepare(value) if prepare else value, defaults))
        except InvalidParameters as exc:
            message = exc.message if exc.message.startswith(where) else f"{where}: {exc.message}"
            raise InvalidParameters(message, field=exc.field, line=number) from None
    if not requests:
        raise InvalidParameters(f"{name} holds no requests")
    return requests
