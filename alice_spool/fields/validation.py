"""How the request's models refuse and describe themselves: a refusal carried through
pydantic and back to the `InvalidParameters` naming its field; the JSON schema's
patterns and generator (pure)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue

from ..errors import InvalidParameters
from .parsers import SIZE_MAX, SIZE_MIN, SIZE_MULTIPLE

# -- refusals ----------------------------------------------------------------------------


class Refusal(ValueError):
    """A refusal as a validator raises it for pydantic to collect (a ValueError, so that
    pydantic does); `first_refusal` turns it back into the `InvalidParameters` it was."""

    def __init__(self, message: str, field: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def refused(message: str, field: str | None) -> Refusal:
    return Refusal(message, field)


def refusal(exc: InvalidParameters) -> Refusal:
    return Refusal(exc.message, exc.field)


def first_refusal(exc: ValidationError) -> InvalidParameters:
    """The first of a validation's errors, as the `InvalidParameters` that names its field."""
    error = exc.errors(include_url=False, include_input=False)[0]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, Refusal):
        return InvalidParameters(cause.message, field=cause.field)
    name = ".".join(str(part) for part in error["loc"])  # pydantic's own (none expected)
    message = f"{name}: {error['msg']}" if name else error["msg"]
    return InvalidParameters(message, field=name or None)


# -- JSON schema ---------------------------------------------------------------------------

# Python's whitespace (what the server strips), spelled out: regex engines disagree on \s.
BLANK = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
TEXT_PATTERN = rf"^[^\x00]*[^\x00{BLANK}][^\x00]*$"  # not blank, and no NUL
ANY_TEXT_PATTERN = r"^[^\x00]*$"
# One safe path component (fields.normalise_model_id), then `sd/<name>` or `<name>`.
NAME_PATTERN = rf"[^/\\\x00-\x1f.{BLANK}][^/\\\x00-\x1f]{{0,199}}$"
MODEL_ID_PATTERN = r"^(sd/)?" + NAME_PATTERN
LORA_ID_PATTERN = r"^(lora/)?" + NAME_PATTERN
# A path whose last component (less .safetensors) is a LoRA name.
LORA_PATH_PATTERN = rf"^(.*[/\\])?{NAME_PATTERN.removesuffix('$')}$"
# Every side a request may name: multiples of SIZE_MULTIPLE in SIZE_MIN..SIZE_MAX.
_SIDES = "|".join(str(side) for side in range(SIZE_MIN, SIZE_MAX + 1, SIZE_MULTIPLE))
SIZE_PATTERN = f"^({_SIDES})x({_SIDES})$"


def optional(schema: dict[str, Any]) -> dict[str, Any]:
    """A field a request may leave out or send as null (the same to the server)."""
    kind = schema.get("type")
    return {**schema, "type": [kind, "null"]} if isinstance(kind, str) else schema


class SchemaGenerator(GenerateJsonSchema):
    """JSON schema as the field types describe themselves, in their order (the type
    first): no titles, no model docstrings (they are the code's), and a default only
    where a field type states one (a field left out is "the server's", not null)."""

    def sort(self, value: JsonSchemaValue, parent_key: str | None = None) -> JsonSchemaValue:
        return value

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def default_schema(self, schema: Any) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def model_schema(self, schema: Any) -> JsonSchemaValue:
        described = super().model_schema(schema)
        described.pop("title", None)
        described.pop("description", None)
        return described
