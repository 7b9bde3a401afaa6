"""A request's fields one at a time: their limits and parsers, each refusal an
`InvalidParameters` naming the field (pure, no I/O; spec.py and hires.py build on them)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from . import samplers
from .errors import InvalidParameters

# The limits of a request's fields ([generation] settings in config.py stay within them).
PROMPT_MAX_CHARS = 4000
SIZE_MIN, SIZE_MAX, SIZE_MULTIPLE = 64, 2048, 8
STEPS_MAX = 150
GUIDANCE_MAX = 30.0
SEED_MAX = 2**32 - 1
N_MAX = 16
PRIORITY_MIN, PRIORITY_MAX = -100, 100
CLIP_SKIP_MAX = 12  # A1111's CLIP_stop_at_last_layers slider
# The T5 encoder's prompt length (tokens) that FLUX.1 and SD 3.x take at most.
SEQUENCE_MAX = 512
PIXELS_MAX = SIZE_MAX * SIZE_MAX
IDEMPOTENCY_KEY_MAX_CHARS = 255
MODEL_PREFIX = "sd/"
LORA_PREFIX = "lora/"
VAE_PREFIX = "vae/"
LORAS_MAX = 4  # generation.max_loras's default
LORAS_LIMIT = 16  # and the most it may be
LORA_SCALE_MIN, LORA_SCALE_MAX = -4.0, 4.0
# `<lora:name:scale>` in a prompt (A1111's and ALICE's tag); the scale is optional.
_LORA_TAG = re.compile(r"<lora:([^:<>]+?)(?::([^:<>]*))?>", re.IGNORECASE)
# A model name is one path component: no separators, no control characters, no leading dot.
_MODEL_NAME = re.compile(r"[^/\\\x00-\x1f.][^/\\\x00-\x1f]{0,199}")


def type_name(value: Any) -> str:
    """What a refused value is, in JSON's words (`a string`, `null`, `an object`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def parse_string(name: str, value: Any, *, max_chars: int, required: bool) -> str:
    """A string, stripped: at most `max_chars`, no NULs; empty only if not `required`."""
    if not isinstance(value, str):
        raise InvalidParameters(f"{name} must be a string, got {type_name(value)}", field=name)
    text = value.strip()
    if required and not text:
        raise InvalidParameters(f"{name} must not be empty", field=name)
    if len(text) > max_chars:
        raise InvalidParameters(
            f"{name} is {len(text)} characters long; the limit is {max_chars}", field=name
        )
    if "\x00" in text:
        raise InvalidParameters(f"{name} must not contain NUL characters", field=name)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidParameters(f"{name} is not valid Unicode text", field=name) from None
    return text


def parse_integer(name: str, value: Any, low: int, high: int) -> int:
    """A whole number (`3.0` too, never a boolean) from `low` to `high`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParameters(f"{name} must be an integer, got {type_name(value)}", field=name)
    if isinstance(value, float):
        if not value.is_integer():
            raise InvalidParameters(f"{name} must be a whole number, got {value}", field=name)
        value = int(value)
    if not low <= value <= high:
        raise InvalidParameters(f"{name} must be between {low} and {high}, got {value}", field=name)
    return value


def parse_number(name: str, value: Any, low: float, high: float) -> float:
    """A finite number (never a boolean) from `low` to `high`, as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParameters(f"{name} must be a number, got {type_name(value)}", field=name)
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidParameters(
            f"{name} must be between {low:g} and {high:g}, got {value}", field=name
        )
    return value


def parse_dimension(name: str, value: Any) -> int:
    """An image side: SIZE_MIN..SIZE_MAX pixels, a multiple of SIZE_MULTIPLE."""
    size = parse_integer(name, value, SIZE_MIN, SIZE_MAX)
    if size % SIZE_MULTIPLE:
        raise InvalidParameters(
            f"{name} must be a multiple of {SIZE_MULTIPLE}, got {size}", field=name
        )
    return size


def normalise_model_id(value: Any, name: str = "model") -> str:
    """`sd/<name>` from `<name>` or `sd/<name>`; a name is one safe path component."""
    text = parse_string(name, value, max_chars=200 + len(MODEL_PREFIX), required=True)
    bare = text.removeprefix(MODEL_PREFIX)
    if not _MODEL_NAME.fullmatch(bare):
        raise InvalidParameters(
            f"{name} {text!r} is not a valid model id (expected sd/<name>, where the name "
            "has no slashes and does not start with a dot)",
            field=name,
        )
    return MODEL_PREFIX + bare


def _named_file(name: str, text: str, bare: str, prefix: str, what: str) -> str:
    """`<prefix><bare>`, where `bare` must be one safe path component."""
    if not _MODEL_NAME.fullmatch(bare) or bare != bare.strip():
        raise InvalidParameters(
            f"{name}: {text!r} is not a valid {what} name (expected {prefix}<name>, where the "
            "name has no slashes and does not start with a dot)",
            field=name,
        )
    return prefix + bare


def normalise_lora_id(value: Any, name: str = "loras") -> str:
    """`lora/<name>` from `<name>` or `lora/<name>`; a name is one safe path component."""
    text = parse_string(name, value, max_chars=200 + len(LORA_PREFIX), required=True)
    return _named_file(name, text, text.removeprefix(LORA_PREFIX), LORA_PREFIX, "LoRA")


def normalise_vae_id(value: Any, name: str = "vae") -> str | None:
    """`vae/<name>` from `<name>`, `vae/<name>` or A1111's file name (`<name>.safetensors`);
    None (the model's own VAE) for null, `Automatic` and `None`, as A1111 names it."""
    if value is None:
        return None
    text = parse_string(name, value, max_chars=200 + len(VAE_PREFIX), required=True)
    if text.lower() in ("automatic", "none"):
        return None
    bare = text.removeprefix(VAE_PREFIX).removesuffix(".safetensors")
    return _named_file(name, text, bare, VAE_PREFIX, "VAE")


def _lora_scale(name: str, value: Any) -> float:
    if value is None:
        return 1.0
    return parse_number(name, value, LORA_SCALE_MIN, LORA_SCALE_MAX)


def parse_loras(
    given: Any, paths: Any, scales: Any, prompt: str, max_loras: int
) -> tuple[str, tuple[tuple[str, float], ...]]:
    """(the prompt without its `<lora:name:scale>` tags, the LoRA set) from the `loras`
    field (`[{"name", "scale"}]`, or names), ALICE's `lora_paths` + `lora_scales` (a
    path's file name is the LoRA's name) and the prompt's tags. A LoRA named twice is
    an error, as are more than `max_loras`."""
    found: list[tuple[str, float, str]] = []  # (id, scale, the field it came from)
    if given is not None and paths is not None:
        raise InvalidParameters("give either loras or lora_paths, not both", field="lora_paths")
    if given is not None:
        if not isinstance(given, list):
            raise InvalidParameters(
                f"loras must be a list of {{name, scale}} objects, got {type_name(given)}",
                field="loras",
            )
        for index, entry in enumerate(given):
            where = f"loras[{index}]"
            if isinstance(entry, str):
                entry = {"name": entry}
            if not isinstance(entry, Mapping):
                raise InvalidParameters(
                    f"{where} must be an object with a name and a scale", field="loras"
                )
            unknown = set(entry) - {"name", "scale"}
            if unknown:
                raise InvalidParameters(
                    f"{where}: unknown field {sorted(map(str, unknown))[0]!r}", field="loras"
                )
            found.append(
                (
                    normalise_lora_id(entry.get("name"), "loras"),
                    _lora_scale("loras", entry.get("scale")),
                    "loras",
                )
            )
    if scales is not None and not isinstance(scales, list):
        raise InvalidParameters(
            "lora_scales must be a list of numbers, one per lora_paths entry", field="lora_scales"
        )
    for value in scales or ():  # every scale checked, one without a path too
        _lora_scale("lora_scales", value)
    if paths is not None:
        # As ALICE takes them: scales padded with 1; one without a path applies to nothing.
        if not isinstance(paths, list):
            raise InvalidParameters("lora_paths must be a list of file names", field="lora_paths")
        for index, path in enumerate(paths):
            text = parse_string("lora_paths", path, max_chars=1024, required=True)
            stem = re.split(r"[/\\]", text)[-1].removesuffix(".safetensors")
            scale = scales[index] if scales is not None and index < len(scales) else None
            found.append(
                (
                    normalise_lora_id(stem, "lora_paths"),
                    _lora_scale("lora_scales", scale),
                    "lora_paths",
                )
            )

    def tag(match: re.Match[str]) -> str:
        scale_text = (match.group(2) or "").strip()
        try:
            scale = float(scale_text) if scale_text else None
        except ValueError:
            raise InvalidParameters(
                f"prompt: the scale of {match.group(0)} is not a number", field="prompt"
            ) from None
        found.append(
            (
                normalise_lora_id(match.group(1).strip(), "prompt"),
                _lora_scale("prompt", scale),
                "prompt",
            )
        )
        return ""

    text = _LORA_TAG.sub(tag, prompt)
    if text != prompt:
        text = re.sub(r"\s+,", ",", re.sub(r"\s{2,}", " ", text)).strip(" ,")
        if not text.strip():
            raise InvalidParameters("prompt has nothing but LoRA tags", field="prompt")
    seen: dict[str, str] = {}
    for lora_id, _, field in found:
        if lora_id in seen:
            raise InvalidParameters(f"{lora_id} is given more than once", field=field)
        seen[lora_id] = field
    if len(found) > max_loras:
        raise InvalidParameters(
            f"{len(found)} LoRAs; the limit is {max_loras} (generation.max_loras)",
            field=found[-1][2],
        )
    return text, tuple(sorted((lora_id, scale) for lora_id, scale, _ in found))


def normalise_scheduler(value: Any, name: str = "scheduler") -> str:
    """A scheduler name, case-insensitive, also in the spelling other SD tools use
    (`DPM++ 2M Karras`, `Euler a`, `dpmpp_sde`, `DDIM Normal`)."""
    return samplers.normalise(parse_string(name, value, max_chars=64, required=True), name)


def parse_priority(value: Any, name: str = "priority") -> int:
    return parse_integer(name, value, PRIORITY_MIN, PRIORITY_MAX)


def check_priority_cap(priority: int, cap: int, name: str = "priority") -> None:
    """A user's key may set a priority up to `cap` (`users.max_priority`), no higher."""
    if priority > cap:
        raise InvalidParameters(
            f"{name} {priority} is above {cap}, the highest a user's key may set "
            "(users.max_priority)",
            field=name,
        )


def parse_size(value: Any, name: str = "size") -> tuple[int, int]:
    """`"WxH"` (as the OpenAI images API writes it) -> (width, height)."""
    text = parse_string(name, value, max_chars=32, required=True)
    match = re.fullmatch(r"(\d{1,5})\s*[xX\u00d7]\s*(\d{1,5})", text)
    if not match:
        raise InvalidParameters(f"{name} must look like 512x512, got {text!r}", field=name)
    return parse_dimension(name, int(match.group(1))), parse_dimension(name, int(match.group(2)))


def parse_idempotency_key(value: Any, name: str = "id") -> str:
    return parse_string(name, value, max_chars=IDEMPOTENCY_KEY_MAX_CHARS, required=True)
