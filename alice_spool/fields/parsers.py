"""A request's values one at a time: their limits and parsers, each refusal an
`InvalidParameters` naming the field (pure, no I/O)."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from typing import Any

from .. import samplers
from ..errors import InvalidParameters

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


def normalise_scheduler(value: Any, name: str = "scheduler") -> str:
    """A scheduler name, case-insensitive, also in the spelling other SD tools use
    (`DPM++ 2M Karras`, `Euler a`, `dpmpp_sde`, `DDIM Normal`)."""
    return _scheduler(parse_string(name, value, max_chars=64, required=True), name)


# Requests name a handful of schedulers, each time in the same spelling: the answers are
# remembered (a refusal is not, so it is worked out, and worded, each time).
_scheduler = functools.lru_cache(maxsize=1024)(samplers.normalise)


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
