"""What the OpenAI doors take (pure: no I/O): OpenAI's image-API fields as this server
honours them, the chat's messages and image parameters, and each door's request body as
/openapi.json shows it.

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

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .... import errors, inputs
from ....config import Settings
from ....fields import parse_string
from ....spec import SPEC_FIELDS, GenerationDefaults, parse_spec, request_json_schema
from ...edge.formats import FORMATS
from ...edge.schemas import BLANK, NAME, TEXT, optional

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
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 3.0 is a whole number to JSON Schema, and to us
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


# -- the request bodies, as /openapi.json shows them ------------------------------------------

# A model name as the OpenAI doors take it: blank (the default model), or one safe path
# component, `sd/` optional, with the blanks around it stripped (aliases and OpenAI's
# image model names are such names too).
MODEL_NAME = rf"^[{BLANK}]*$|^[{BLANK}]*(sd/)?{NAME.removesuffix('$')}[{BLANK}]*$"
MODEL_FIELD: dict[str, Any] = {
    "type": ["string", "null"],
    "pattern": MODEL_NAME,
    "example": "dall-e-3",
    "description": "an installed model, an alias ([models.aliases]) or one of OpenAI's image "
    "model names (the default model unless aliased); blank or null: the default model",
}


def image_fields_schema(request: Mapping[str, Any]) -> dict[str, Any]:
    """The schemas of OpenAI's image fields (each may be null: left out), and of `model`
    and `size` as its clients send them, beside the `request` properties they join."""
    choices: dict[str, tuple[str, ...]] = {
        "quality": QUALITIES,
        "style": STYLES,
        "moderation": MODERATIONS,
        "input_fidelity": FIDELITIES,
        "complexity": COMPLEXITIES,
        "response_format": RESPONSE_FORMATS,
        "output_format": tuple(FORMATS),  # gif and svg: refused, never made here
        "background": tuple(b for b in BACKGROUNDS if b != "transparent"),
    }
    described = {
        "quality": "steps from the model family's quality table; a request's steps win",
        "output_format": "the answer's image format (the parameters kept in its metadata)",
        "background": "transparent is refused: no installed model makes one",
        "response_format": "b64_json always for gpt-image names, else url by default",
    }
    identifier = {
        "type": "string",
        "maxLength": IDENTIFIER_MAX_CHARS,
        "pattern": "^[^\\x00]*$",
        "description": "recorded with the job",
    }
    return {
        "model": MODEL_FIELD,
        "size": {
            "anyOf": [request["size"], {"const": "auto"}],
            "description": "WxH, or auto: the model's native size (an edit's or a "
            "variation's: the image's)",
        },
        **{
            name: {"enum": [*values, None], "description": described.get(name, "recorded")}
            for name, values in choices.items()
        },
        "output_compression": optional(
            {"type": "integer", "minimum": 0, "maximum": 100, "default": 100}
        ),
        "user": optional(identifier),
        "safety_identifier": optional(identifier),
        "stream": optional(
            {
                "type": "boolean",
                "description": "server-sent events: one `<kind>.completed` per finished image",
            }
        ),
        "partial_images": optional(
            {
                "type": "integer",
                "minimum": 0,
                "maximum": PARTIAL_IMAGES_MAX,
                "description": "taken; no partial images are sent (the final ones only)",
            }
        ),
    }


def generations_schema(settings: Settings) -> dict[str, Any]:
    """POST /v1/images/generations: a request's own fields (no `id`) and OpenAI's."""
    request = request_json_schema(settings.generation)
    properties = {k: v for k, v in request["properties"].items() if k != "id"}
    return {
        **request,
        "properties": {**properties, **image_fields_schema(properties)},
        "not": _auto_is_no_size(request["not"]),
    }


def _auto_is_no_size(rules: dict[str, Any]) -> dict[str, Any]:
    """The request's rules between fields, where `size` auto is no size at all: it may
    come with `width` and `height`."""
    rules = copy.deepcopy(rules)
    for rule in rules.get("anyOf", []):
        size = rule.get("properties", {}).get("size")
        if size is not None:
            size["not"] = {"const": "auto"}
    return rules


# Request fields a form does not take as text: its files stand for them.
_FILES_FOR = ("id", "prompt", "init_image", "mask_image")
# Form fields taken as the text they are (the others are read as JSON where they parse):
# never null (a form has no null), "null" is their text.
FORM_TEXT = (
    "prompt", "negative_prompt", "model", "size", "scheduler", "user", "safety_identifier",
    "quality", "style", "background", "moderation", "output_format", "response_format",
    "input_fidelity", "complexity",
)  # fmt: skip
_FILE = {"type": "string", "format": "binary", "contentMediaType": "image/*"}


def _never_null(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` without its null (a form's text field is text, even "null")."""
    schema = dict(schema)
    kind = schema.get("type")
    if isinstance(kind, list):
        rest = [k for k in kind if k != "null"]
        schema["type"] = rest[0] if len(rest) == 1 else rest
    if "enum" in schema:
        schema["enum"] = [value for value in schema["enum"] if value is not None]
    if "anyOf" in schema:
        schema["anyOf"] = [_never_null(o) for o in schema["anyOf"] if o.get("type") != "null"]
    return schema


def edits_form(settings: Settings) -> dict[str, Any]:
    """POST /v1/images/edits, multipart as OpenAI's SDK sends it: `image` (and `mask`)
    files, and the request's fields and OpenAI's as text."""
    return _image_form(settings, edits=True)


def variations_form(settings: Settings) -> dict[str, Any]:
    """POST /v1/images/variations, multipart: an `image` file, no prompt and no mask."""
    return _image_form(settings, edits=False)


def _image_form(settings: Settings, *, edits: bool) -> dict[str, Any]:
    request = request_json_schema(settings.generation)
    fields = request["properties"]
    text = {name: field for name, field in fields.items() if name not in _FILES_FOR}
    text["hires"] = {"type": "null", "description": "txt2img's: an image here has none"}
    image = {**_FILE, "description": "PNG, JPEG or WebP"}
    own: dict[str, Any] = {"image": image, "image[]": {**image, "description": "image"}}
    openai = image_fields_schema(fields)
    if edits:
        own["mask"] = {
            **_FILE,
            "description": "the same size as image; its fully transparent pixels are "
            "edited (one without transparency: its white pixels are)",
        }
        own["prompt"] = {
            "type": "string",
            "maxLength": fields["prompt"]["maxLength"],
            "pattern": "^[^\\x00]*$",
            "description": "what to make of the image (blank or left out: img2img of "
            "the image as it is)",
        }
    else:
        openai["stream"] = {"enum": [False, None], "description": "a variation is not streamed"}
        text["strength"] = {
            **fields["strength"],
            "default": VARIATION_STRENGTH,
            "description": "how much the variation differs from the image",
        }
    properties = {**own, **text, **openai}
    for name in FORM_TEXT:
        if name in properties:
            properties[name] = _never_null(properties[name])
    return {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        "oneOf": [{"required": ["image"]}, {"required": ["image[]"]}],
        "not": _auto_is_no_size(request["not"]),
        "description": "text fields: numbers, lists and true or false in their JSON "
        "spelling; `size` auto (or none) is the image's size",
    }


# -- the chat's body -------------------------------------------------------------------------

# Where a chat request carries the image parameters (SAM sends `metadata`).
_CONFIG_KEYS = ("sam_config", "samConfig", "metadata")


# What else the chat's parameter objects may hold: OpenAI's size, ALICE's names.
_CONFIG_EXTRAS = (
    "size", "num_images", "lora_paths", "lora_scales", "input_images", "input_image_urls",
)  # fmt: skip


def _user_text(max_chars: int) -> dict[str, Any]:
    """A message with the prompt: a user's, with text (as a string or a text part)."""
    text = {"type": "string", "pattern": TEXT, "maxLength": max_chars}
    part = {"type": "object", "required": ["type", "text"],
            "properties": {"type": {"const": "text"}, "text": text}}  # fmt: skip
    return {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"const": "user"},
            "content": {"anyOf": [text, {"type": "array", "contains": part}]},
        },
    }


def chat_schema(settings: Settings) -> dict[str, Any]:
    """The chat body: OpenAI's `messages` (the prompt is the last user message's text),
    `model`, `stream`, and the image parameters in `metadata` (SAM), `sam_config` or
    `samConfig` (ALICE); other fields (OpenAI's temperature, ...) are left alone."""
    request = request_json_schema(settings.generation)
    read = {*SPEC_FIELDS, *_CONFIG_EXTRAS} - {"prompt"}
    parameters = {
        "type": ["object", "null"],
        "properties": {k: v for k, v in request["properties"].items() if k in read},
        "not": request["not"],
        "description": "the image parameters: a request's fields (the prompt is the "
        "messages'), and ALICE's input_images (base64) or input_image_urls for img2img; "
        "other keys are left alone. Each object is checked on its own; a field of a later "
        "one (sam_config, samConfig, metadata) replaces an earlier one's, and its other "
        "spellings there (n and num_images, size and width/height, loras and lora_paths)",
    }
    parts = {"type": "array", "items": {"type": "object"}}
    content = {
        "anyOf": [{"type": "string"}, parts, {"type": "null"}],
        "description": "text, OpenAI's content parts, or null",
    }
    message = {
        "type": "object",
        "required": ["role"],
        "properties": {"role": {"type": "string"}, "content": content},
    }
    return {
        "type": "object",
        "required": ["messages"],
        "properties": {
            "model": MODEL_FIELD,
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": message,
                "contains": _user_text(request["properties"]["prompt"]["maxLength"]),
                "description": "the prompt is the last user message's text",
            },
            "stream": {"type": "boolean", "description": "chat.completion.chunk events"},
            **{key: parameters for key in _CONFIG_KEYS},
        },
    }


def last_user_text(messages: Any) -> str:
    """The prompt: the text of the last user message that has any (a string, or its
    text parts joined); every message checked to be an object with a role."""
    if not isinstance(messages, list) or not messages:
        raise errors.InvalidParameters("messages must be a non-empty list", field="messages")
    for index, message in enumerate(messages):  # each one well formed, as OpenAI asks
        where = f"messages[{index}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise errors.InvalidParameters(
                f"{where} must be an object with a role", field="messages"
            )
        content = message.get("content")
        if isinstance(content, list):
            if not all(isinstance(part, dict) for part in content):
                raise errors.InvalidParameters(
                    f"{where}.content parts must be objects", field="messages"
                )
        elif content is not None and not isinstance(content, str):
            raise errors.InvalidParameters(
                f"{where}.content must be text, a list of parts, or null", field="messages"
            )
    for message in reversed(messages):
        if message["role"] == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts: take the text ones
                content = " ".join(
                    part["text"]
                    for part in content
                    if part.get("type") == "text" and isinstance(part.get("text"), str)
                )
            if isinstance(content, str) and content.strip():
                return content
    raise errors.InvalidParameters("no user message with text in messages", field="messages")


# A field of a later parameter object takes the place of an earlier one's, and of its
# other spellings there (a request gives one of each).
_REPLACES = {
    "n": ("num_images",), "num_images": ("n",),
    "size": ("width", "height"), "width": ("size",), "height": ("size",),
    "loras": ("lora_paths", "lora_scales"), "lora_paths": ("loras",), "lora_scales": ("loras",),
    "init_image": ("input_images", "input_image_urls"),
    "input_images": ("init_image", "input_image_urls"),
    "input_image_urls": ("init_image", "input_images"),
}  # fmt: skip


def chat_parameters(body: Mapping[str, Any], defaults: GenerationDefaults) -> dict[str, Any]:
    """The image parameters of `sam_config`, `samConfig` and `metadata`, in that order:
    each object's request fields checked on their own (its other keys, which other
    clients put in `metadata`, left alone), a later object's field in place of an
    earlier one's."""
    merged: dict[str, Any] = {}
    for key in _CONFIG_KEYS:
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise errors.InvalidParameters(f"{key} must be an object", field=key)
        given = {k: v for k, v in value.items() if k in SPEC_FIELDS or k in _CONFIG_EXTRAS}
        alone = {k: v for k, v in given.items() if k not in inputs.IMAGE_FIELDS}
        try:  # the images are checked once, with the prompt, as a whole
            parse_spec({**alone, "prompt": "-"}, defaults)
        except errors.InvalidParameters as exc:
            raise type(exc)(f"{key}: {exc.message}", **exc.details) from None
        for name in given:
            for other in _REPLACES.get(name, ()):
                merged.pop(other, None)
        merged.update(given)
    return merged
