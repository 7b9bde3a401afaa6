"""Each request field's rule as a type for `Annotated[...]`: it checks a value with the
field's parser (its coercions, its refusals' wording) and describes the same rule as JSON
schema, so what a request takes and what /openapi.json says it takes are stated once."""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainValidator,
    create_model,
)
from pydantic.json_schema import JsonSchemaValue, PydanticOmit

from .. import samplers
from ..errors import InvalidParameters
from .loras import parse_lora_entries, parse_lora_paths, parse_lora_scales
from .parsers import (
    LORA_SCALE_MAX,
    LORA_SCALE_MIN,
    SIZE_MAX,
    SIZE_MIN,
    SIZE_MULTIPLE,
    normalise_model_id,
    normalise_scheduler,
    normalise_vae_id,
    parse_dimension,
    parse_integer,
    parse_number,
    parse_size,
    parse_string,
)
from .validation import (
    ANY_TEXT_PATTERN,
    BLANK,
    LORA_ID_PATTERN,
    LORA_PATH_PATTERN,
    MODEL_ID_PATTERN,
    NAME_PATTERN,
    SIZE_PATTERN,
    TEXT_PATTERN,
    optional,
    refusal,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FieldType:
    """A request field's rule, for `Annotated[...]`: `check` takes a value given (never
    null where `nullable`: null is left out) and returns it normalised, or raises
    `InvalidParameters`; `describe` is its JSON schema. `within`: the object holding the
    field, in the names refusals give (`hires.steps`); `shown`: the schema's default."""

    nullable: bool = True
    within: str | None = None
    shown: Any = None

    def check(self, name: str, value: Any) -> Any:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        field = handler.field_name or ""
        name = field if self.within is None else f"{self.within}.{field}"
        nullable, check = self.nullable, self.check

        def validate(value: Any) -> Any:  # (the field's name known now: a call the cheaper)
            if value is None and nullable:
                return None
            try:
                return check(name, value)
            except InvalidParameters as exc:
                raise refusal(exc) from None

        return handler.generate_schema(Annotated[Any, PlainValidator(validate)])

    def __get_pydantic_json_schema__(
        self, schema: Any, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        described = self.describe()
        if self.shown is not None:
            described["default"] = self.shown
        return optional(described) if self.nullable else described


@dataclasses.dataclass(frozen=True, kw_only=True)
class Text(FieldType):
    """A string, stripped: at most `max_chars`, no NULs; blank only unless `required`."""

    max_chars: int
    required: bool = False

    def check(self, name: str, value: Any) -> str:
        return parse_string(name, value, max_chars=self.max_chars, required=self.required)

    def describe(self) -> dict[str, Any]:
        pattern = TEXT_PATTERN if self.required else ANY_TEXT_PATTERN
        return {"type": "string", "maxLength": self.max_chars, "pattern": pattern}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Integer(FieldType):
    """A whole number from `low` to `high` (`3.0` too, never a boolean)."""

    low: int
    high: int

    def check(self, name: str, value: Any) -> int:
        return parse_integer(name, value, self.low, self.high)

    def describe(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.low, "maximum": self.high}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Number(FieldType):
    """A finite number from `low` to `high`, as a float (never a boolean)."""

    low: float
    high: float

    def check(self, name: str, value: Any) -> float:
        return parse_number(name, value, self.low, self.high)

    def describe(self) -> dict[str, Any]:
        return {"type": "number", "minimum": self.low, "maximum": self.high}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Dimension(FieldType):
    """An image side: SIZE_MIN..SIZE_MAX pixels, a multiple of SIZE_MULTIPLE."""

    def check(self, name: str, value: Any) -> int:
        return parse_dimension(name, value)

    def describe(self) -> dict[str, Any]:
        return {
            "type": "integer",
            "multipleOf": SIZE_MULTIPLE,
            "minimum": SIZE_MIN,
            "maximum": SIZE_MAX,
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class Size(FieldType):
    """`"WxH"`, as the OpenAI images API writes it: (width, height)."""

    def check(self, name: str, value: Any) -> tuple[int, int]:
        return parse_size(value, name)

    def describe(self) -> dict[str, Any]:
        return {"type": "string", "pattern": SIZE_PATTERN, "example": "512x512"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelId(FieldType):
    """`sd/<name>` from `<name>` or `sd/<name>`; blank, as null: the default model."""

    def check(self, name: str, value: Any) -> str | None:
        if isinstance(value, str) and not value.strip():
            return None
        return normalise_model_id(value, name)

    def describe(self) -> dict[str, Any]:
        return {
            "type": "string",
            "pattern": f"^[{BLANK}]*$|{MODEL_ID_PATTERN}",
            "example": "sd/tiny",
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class VaeId(FieldType):
    """`vae/<name>` from `<name>`, `vae/<name>` or its file name; `Automatic` and `None`
    (A1111's words) are the model's own VAE, as null is."""

    def check(self, name: str, value: Any) -> str | None:
        return normalise_vae_id(value, name)

    def describe(self) -> dict[str, Any]:
        return {
            "type": "string",
            "pattern": r"^(vae/)?" + NAME_PATTERN,
            "example": "vae/vae-ft-mse-840000-ema-pruned",
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class SchedulerName(FieldType):
    """A scheduler (samplers.py) in any spelling other SD tools use, case-insensitive;
    the schema lists the canonical names. `null_listed`: null among them too."""

    null_listed: bool = False

    def check(self, name: str, value: Any) -> str:
        return normalise_scheduler(value, name)

    def describe(self) -> dict[str, Any]:
        return {"type": "string", "enum": [*samplers.NAMES, *([None] if self.null_listed else [])]}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Choice(FieldType):
    """One of `choices`, in any case: as `choices` spells it. The schema lists them, and
    null with them where the field may be left out."""

    choices: tuple[str, ...]

    def check(self, name: str, value: Any) -> str:
        text = parse_string(name, value, max_chars=64, required=True)
        for choice in self.choices:
            if choice.lower() == text.lower():
                return choice
        raise InvalidParameters(
            f"{name} {text!r} is not known; choose one of: {', '.join(self.choices)}", field=name
        )

    def describe(self) -> dict[str, Any]:
        return {"type": "string", "enum": [*self.choices, *([None] if self.nullable else [])]}


_IMAGE_REFERENCE = re.compile(r"sha256:[0-9a-f]{64}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageReference(FieldType):
    """An input image as the door's intake (inputs.take) leaves it: `sha256:<hex>` of a
    file it decoded and stored. Not in the schema: a door takes images in its own forms."""

    def check(self, name: str, value: Any) -> str:
        if not (isinstance(value, str) and _IMAGE_REFERENCE.fullmatch(value)):
            raise InvalidParameters(f"{name} is not taken here (no image inputs)", field=name)
        return value

    def describe(self) -> dict[str, Any]:
        raise PydanticOmit


@dataclasses.dataclass(frozen=True, kw_only=True)
class Strength(FieldType):
    """img2img's and inpainting's strength: more than 0, at most 1."""

    def check(self, name: str, value: Any) -> float:
        strength = parse_number(name, value, 0.0, 1.0)
        if strength <= 0:
            raise InvalidParameters(
                f"{name} must be more than 0 and at most 1, got {strength:g}", field=name
            )
        return strength

    def describe(self) -> dict[str, Any]:
        return {"type": "number", "exclusiveMinimum": 0, "maximum": 1}


_LORA_SCALE = {"type": "number", "minimum": LORA_SCALE_MIN, "maximum": LORA_SCALE_MAX, "default": 1}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Loras(FieldType):
    """The `loras` field: `[{"name", "scale"}]` or names, at most `most`: (id, scale)s."""

    most: int

    def check(self, name: str, value: Any) -> tuple[tuple[str, float], ...]:
        return parse_lora_entries(value)

    def describe(self) -> dict[str, Any]:
        entry = {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": LORA_ID_PATTERN},
                "scale": optional(_LORA_SCALE),
            },
        }
        named = {"type": "string", "pattern": LORA_ID_PATTERN}
        return {
            "type": "array",
            "maxItems": self.most,
            "uniqueItems": True,  # a LoRA named twice is refused
            "items": {"anyOf": [named, entry]},
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraPaths(FieldType):
    """ALICE's `lora_paths`, at most `most`: the LoRA ids their file names name."""

    most: int

    def check(self, name: str, value: Any) -> tuple[str, ...]:
        return parse_lora_paths(value)

    def describe(self) -> dict[str, Any]:
        path = {"type": "string", "maxLength": 1024, "pattern": LORA_PATH_PATTERN}
        return {"type": "array", "maxItems": self.most, "uniqueItems": True, "items": path}


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraScales(FieldType):
    """ALICE's `lora_scales`: one per `lora_paths` entry (null: 1)."""

    def check(self, name: str, value: Any) -> tuple[float, ...]:
        return parse_lora_scales(value)

    def describe(self) -> dict[str, Any]:
        return {"type": "array", "items": optional(_LORA_SCALE)}


# -- limits from the settings ------------------------------------------------------------

_Model = TypeVar("_Model", bound=BaseModel)


def with_settings(
    base: type[_Model], changes: Mapping[str, Mapping[str, Any]], **attributes: Any
) -> type[_Model]:
    """A subclass of `base` whose fields' types are changed as `changes` says (a field's
    name -> its field type's attributes, e.g. `{"steps": {"high": 50}}`), with class
    `attributes`: the model of one configuration's limits."""
    fields: dict[str, Any] = {}
    for name, change in changes.items():
        info = base.__pydantic_fields__[name]
        changed = copy.copy(info)
        changed.metadata = [
            dataclasses.replace(item, **change) if isinstance(item, FieldType) else item
            for item in info.metadata
        ]
        fields[name] = (info.annotation, changed)
    model = create_model(base.__name__, __base__=base, __module__=base.__module__, **fields)
    for name, value in attributes.items():
        setattr(model, name, value)
    return model
