"""OpenAI's image-API fields as this server honours them (pure: no I/O).

Each field OpenAI's reference documents is either honoured or knowingly recorded and not
acted on, and a value outside what OpenAI allows is a 400 naming the field, as OpenAI
answers it:

- `quality` picks the number of steps from the model family's row of `QUALITY_STEPS`
  (`auto` and `standard`: the model's default steps); a request's own `steps` wins.
- `output_format` (`png`, `jpeg`, `webp`) and `output_compression` (0-100, the encoder's
  quality; 100 by default) make the answer's images in that format, the generation
  parameters kept (PNG text chunk; JPEG and WebP EXIF UserComment). `gif` and `svg`, and
  the fields only they use, are refused: this server makes neither.
- `background`: `opaque` and `auto` are what every installed family makes; `transparent`
  is refused unless the model can make one (none can yet).
- `style`, `moderation`, `user`, `safety_identifier`, `input_fidelity`, `complexity` are
  recorded with the job (its `client_fields`), as is the model name asked for when it
  was an alias. `moderation` will follow the content policy once there is one.
- `stream` and `partial_images`: the answer as server-sent events (no partial images:
  the final image only, one event per image).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .... import errors
from ....fields import parse_string
from ...edge.formats import FORMATS

QUALITIES = ("low", "medium", "high", "xhigh", "max", "auto", "standard", "hd")
# Steps for each quality, by model family (rows for more families come with them).
QUALITY_STEPS: dict[str, dict[str, int]] = {
    "sd": {"low": 12, "medium": 20, "high": 30, "hd": 40, "xhigh": 40, "max": 50},
    # SD 3.x and FLUX.1 dev (28 steps by default)
    "flow": {"low": 14, "medium": 20, "high": 28, "hd": 40, "xhigh": 40, "max": 50},
    # FLUX.1 schnell, distilled to 1-4 steps
    "schnell": {"low": 1, "medium": 2, "high": 4, "hd": 4, "xhigh": 4, "max": 4},
}


def _row(family: str | None, variant: str | None) -> dict[str, int]:
    if family == "flux" and variant == "schnell":
        return QUALITY_STEPS["schnell"]
    return QUALITY_STEPS["flow" if family in ("sd3", "flux") else "sd"]


# What the answer says it made, from the steps that ran: the highest quality reached.
_ANSWERED = ("low", "medium", "high", "xhigh", "max")

STYLES = ("vivid", "natural")
BACKGROUNDS = ("transparent", "opaque", "auto")
MODERATIONS = ("low", "auto")
FIDELITIES = ("high", "low")
COMPLEXITIES = ("low", "medium", "high")
RESPONSE_FORMATS = ("url", "b64_json")
PARTIAL_IMAGES_MAX = 3
# How much a variation changes its image (img2img with no prompt); `strength` overrides.
VARIATION_STRENGTH = 0.6
IDENTIFIER_MAX_CHARS = 512
# Formats OpenAI lists that this server does not make, and the fields only they use.
_NOT_MADE = ("gif", "svg")
_ONLY_FOR_NOT_MADE = ("frame_count", "frame_duration_ms", "svg", "markup")
# Recorded with the job as sent (client_fields).
_RECORDED = (
    "user", "safety_identifier", "style", "quality", "moderation", "background",
    "output_format", "output_compression", "input_fidelity", "complexity",
)  # fmt: skip
# Every field this module reads: the rest of a body is the spool's own request fields.
FIELDS = (
    *_RECORDED, "response_format", "stream", "partial_images", *_ONLY_FOR_NOT_MADE,
)  # fmt: skip


@dataclass(frozen=True)
class OpenAIFields:
    """What an images request asked for beyond the spool's own request fields."""

    response_format: str | None = None  # None: the named model's API's default
    output_format: str = "png"  # a key of image_formats.FORMATS
    output_compression: int = 100
    quality: str | None = None
    background: str | None = None
    stream: bool = False
    partial_images: int = 0
    recorded: tuple[tuple[str, str | int], ...] = ()

    @property
    def suffix(self) -> str:
        """The file suffix of the answer's images (`png`, `jpeg`, `webp`)."""
        return FORMATS[self.output_format][1]


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise errors.InvalidParameters(
            f"{name} must be one of {', '.join(allowed)}, got {value!r}", field=name
        )
    return value


def _whole(name: str, value: Any, low: int, high: int) -> int:
    # (a multipart form's text arrives as the number it spells: _form_value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise errors.InvalidParameters(
            f"{name} must be a whole number from {low} to {high}, got {value!r}", field=name
        )
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise errors.InvalidParameters(f"{name} must be true or false", field=name)
    return value


def _identifier(name: str, value: Any) -> str:
    return parse_string(name, value, max_chars=IDENTIFIER_MAX_CHARS, required=False)


def take(body: Mapping[str, Any]) -> tuple[OpenAIFields, dict[str, Any]]:
    """The OpenAI fields of a request body, checked, and the rest of the body (the
    spool's own request fields, which parse_spec checks). A null field is one left out."""
    given = {k: v for k, v in body.items() if k in FIELDS and v is not None}
    rest = {k: v for k, v in body.items() if k not in FIELDS}
    values: dict[str, Any] = {}
    recorded: dict[str, str | int] = {}
    for name in _ONLY_FOR_NOT_MADE:
        if name in given:
            raise errors.InvalidParameters(
                f"{name} is for output_format gif or svg, which this server does not make",
                field=name,
            )
    if "response_format" in given:
        values["response_format"] = _choice(
            "response_format", given["response_format"], RESPONSE_FORMATS
        )
    if "output_format" in given:
        kind = given["output_format"]
        if kind in _NOT_MADE:
            raise errors.InvalidParameters(
                f"output_format {kind} is not made here: png, jpeg or webp", field="output_format"
            )
        values["output_format"] = _choice("output_format", kind, tuple(FORMATS))
        recorded["output_format"] = values["output_format"]
    if "output_compression" in given:
        values["output_compression"] = _whole(
            "output_compression", given["output_compression"], 0, 100
        )
        recorded["output_compression"] = values["output_compression"]
    for name, allowed in (
        ("quality", QUALITIES),
        ("background", BACKGROUNDS),
        ("style", STYLES),
        ("moderation", MODERATIONS),
        ("input_fidelity", FIDELITIES),
        ("complexity", COMPLEXITIES),
    ):
        if name in given:
            recorded[name] = _choice(name, given[name], allowed)
    for name in ("quality", "background"):
        if name in recorded:
            values[name] = recorded[name]
    for name in ("user", "safety_identifier"):
        if name in given:
            recorded[name] = _identifier(name, given[name])
    if "stream" in given:
        values["stream"] = _flag("stream", given["stream"])
    if "partial_images" in given:
        values["partial_images"] = _whole(
            "partial_images", given["partial_images"], 0, PARTIAL_IMAGES_MAX
        )
    return OpenAIFields(**values, recorded=tuple(sorted(recorded.items()))), rest


def quality_steps(
    quality: str | None, family: str | None, variant: str | None, max_steps: int
) -> int | None:
    """The steps a `quality` asks for on a model of `family` (and `variant`), never more
    than the server allows; None for `auto`, `standard` or none: the model's default
    (its family's, or the server's)."""
    if quality is None or quality in ("auto", "standard"):
        return None
    return min(_row(family, variant)[quality], max_steps)


def quality_of(steps: int, family: str | None, variant: str | None = None) -> str:
    """The quality an answer reports for `steps` on a model of `family`: the highest one
    whose steps were reached (`low` below them all)."""
    row = _row(family, variant)
    reached = [name for name in _ANSWERED if steps >= row[name]]
    return reached[-1] if reached else "low"
