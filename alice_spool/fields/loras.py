"""A request's LoRAs: the `loras` field, ALICE's `lora_paths` and `lora_scales`, and the
prompt's `<lora:name:scale>` tags, gathered into one set (pure, no I/O)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidParameters
from .parsers import (
    LORA_SCALE_MAX,
    LORA_SCALE_MIN,
    normalise_lora_id,
    parse_number,
    parse_string,
    type_name,
)

# `<lora:name:scale>` in a prompt (A1111's and ALICE's tag); the scale is optional.
_LORA_TAG = re.compile(r"<lora:([^:<>]+?)(?::([^:<>]*))?>", re.IGNORECASE)
# What a tag taken out leaves: a run of spaces, a space before a comma.
_SPACES, _SPACED_COMMA = re.compile(r"\s{2,}"), re.compile(r"\s+,")


def _lora_scale(name: str, value: Any) -> float:
    if value is None:
        return 1.0
    return parse_number(name, value, LORA_SCALE_MIN, LORA_SCALE_MAX)


# A LoRA as a request names it: (lora/<name>, scale, the field that named it).
NamedLora = tuple[str, float, str]


def parse_lora_entries(given: Any) -> tuple[tuple[str, float], ...]:
    """The `loras` field: `[{"name", "scale"}]`, or names (scale 1)."""
    if not isinstance(given, list):
        raise InvalidParameters(
            f"loras must be a list of {{name, scale}} objects, got {type_name(given)}",
            field="loras",
        )
    found = []
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
                f"{where}: unknown field {min(map(str, unknown))!r}", field="loras"
            )
        found.append(
            (
                normalise_lora_id(entry.get("name"), "loras"),
                _lora_scale("loras", entry.get("scale")),
            )
        )
    return tuple(found)


def parse_lora_scales(scales: Any) -> tuple[float, ...]:
    """ALICE's `lora_scales`: a number (or null: 1) per `lora_paths` entry."""
    if not isinstance(scales, list):
        raise InvalidParameters(
            "lora_scales must be a list of numbers, one per lora_paths entry", field="lora_scales"
        )
    return tuple(_lora_scale("lora_scales", value) for value in scales)


def parse_lora_paths(paths: Any) -> tuple[str, ...]:
    """ALICE's `lora_paths`: file names, whose last component (less `.safetensors`)
    names the LoRA."""
    if not isinstance(paths, list):
        raise InvalidParameters("lora_paths must be a list of file names", field="lora_paths")
    found = []
    for path in paths:
        text = parse_string("lora_paths", path, max_chars=1024, required=True)
        stem = re.split(r"[/\\]", text)[-1].removesuffix(".safetensors")
        found.append(normalise_lora_id(stem, "lora_paths"))
    return tuple(found)


def paired_scales(paths: tuple[str, ...], scales: tuple[float, ...]) -> list[NamedLora]:
    """`lora_paths` with their `lora_scales`, as ALICE takes them: scales padded with 1;
    a scale without a path applies to nothing."""
    return [
        (lora_id, scales[index] if index < len(scales) else 1.0, "lora_paths")
        for index, lora_id in enumerate(paths)
    ]


def lora_set(
    prompt: str, named: list[NamedLora], max_loras: int
) -> tuple[str, tuple[tuple[str, float], ...]]:
    """(the prompt without its `<lora:name:scale>` tags, the LoRA set) from the LoRAs the
    fields named and the prompt's tags. A LoRA named twice is an error, as are more than
    `max_loras`."""
    found = list(named)

    def tag(match: re.Match[str]) -> str:
        scale_text = (match.group(2) or "").strip()
        try:
            scale = float(scale_text) if scale_text else None
        except ValueError:
            raise InvalidParameters(
                f"prompt: the scale of {match.group(0)} is not a number", field="prompt"
            ) from None
        lora_id = normalise_lora_id(match.group(1).strip(), "prompt")
        found.append((lora_id, _lora_scale("prompt", scale), "prompt"))
        return ""

    text = _LORA_TAG.sub(tag, prompt)
    if text != prompt:
        text = _SPACED_COMMA.sub(",", _SPACES.sub(" ", text)).strip(" ,")
        if not text.strip():
            raise InvalidParameters("prompt has nothing but LoRA tags", field="prompt")
    seen: set[str] = set()
    for lora_id, _, field in found:
        if lora_id in seen:
            raise InvalidParameters(f"{lora_id} is given more than once", field=field)
        seen.add(lora_id)
    if len(found) > max_loras:
        raise InvalidParameters(
            f"{len(found)} LoRAs; the limit is {max_loras} (generation.max_loras)",
            field=found[-1][2],
        )
    return text, tuple(sorted((lora_id, scale) for lora_id, scale, _ in found))


def parse_loras(
    given: Any, paths: Any, scales: Any, prompt: str, max_loras: int
) -> tuple[str, tuple[tuple[str, float], ...]]:
    """(the prompt without its `<lora:name:scale>` tags, the LoRA set) from the `loras`
    field, ALICE's `lora_paths` + `lora_scales` and the prompt's tags."""
    if given is not None and paths is not None:
        raise InvalidParameters("give either loras or lora_paths, not both", field="lora_paths")
    named: list[NamedLora] = []
    if given is not None:
        named += [(lora_id, scale, "loras") for lora_id, scale in parse_lora_entries(given)]
    checked = parse_lora_scales(scales) if scales is not None else ()  # each, used or not
    if paths is not None:
        named += paired_scales(parse_lora_paths(paths), checked)
    return lora_set(prompt, named, max_loras)
