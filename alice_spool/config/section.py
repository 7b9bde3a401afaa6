"""A settings section: a frozen, strict pydantic model whose errors are `ConfigError`s
naming the key (`server.port: must be 0..65535, got 70000`)."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ValidationError
from pydantic.fields import FieldInfo

from ..errors import ConfigError


def fail(key: str, message: str) -> typing.NoReturn:
    raise ConfigError(f"{key}: {message}", key=key)


def suggest(name: str, choices: typing.Iterable[str]) -> str:
    """` (did you mean 'port'?)` for the closest of `choices`, else ``."""
    hint = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


class Frozen(BaseModel, frozen=True, strict=True, extra="forbid"):
    """A model whose instances never change: assigning to a field raises
    `dataclasses.FrozenInstanceError` (an AttributeError), as a frozen dataclass does."""

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")


class Section(Frozen, frozen=True):
    """One `[section]` of config.toml. Values are taken as TOML types them (strict: no
    "8080" for a port, no `true` for a number; an integer is a number); text from the
    environment and the command line is parsed into those types first (sources.py)."""

    section: ClassVar[str] = ""  # its [table] in config.toml

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise config_error(type(self), exc, values) from None


def one_of(choices: tuple[str, ...]) -> AfterValidator:
    """A string field's choices, when another module defines them."""

    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be {said_as_choices(choices)}, got {value!r}")
        return value

    return AfterValidator(check)


def config_error(cls: type[Section], exc: ValidationError, values: dict[str, Any]) -> ConfigError:
    """The first of pydantic's errors, said as the key and what it must be."""
    error = exc.errors(include_url=False)[0]
    name = str(error["loc"][0]) if error["loc"] else ""
    key = f"{cls.section}.{name}"
    field = cls.model_fields.get(name)
    if error["type"] == "extra_forbidden":
        return ConfigError(f"unknown setting {key!r}{suggest(name, cls.model_fields)}", key=key)
    if field is None:  # a rule over several fields that named none
        return ConfigError(f"[{cls.section}]: {error['msg']}", key=cls.section)
    given = values.get(name, error["input"])
    return ConfigError(f"{key}: {_what_it_must_be(field, error, given)}", key=key)


_TYPE_ERRORS = ("_type", "_parsing")


def _what_it_must_be(field: FieldInfo, error: Mapping[str, Any], given: Any) -> str:
    kind = error["type"]
    if kind == "value_error":  # a validator's own words
        return str(error.get("ctx", {}).get("error", error["msg"]))
    if kind == "literal_error":
        return f"must be {said_as_choices(typing.get_args(field.annotation))}, got {given!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"must be {_bounds(field)}, got {given!r}"
    if kind.endswith(_TYPE_ERRORS):
        return f"must be {_type_name(field.annotation)}, got {given!r}"
    return f"{error['msg']}, got {given!r}"


def said_as_choices(choices: tuple[Any, ...]) -> str:
    """`disabled, invite or open`; the empty string shown as `""`."""
    words = [(c or '""') if isinstance(c, str) else repr(c) for c in choices]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def number(value: float) -> str:
    """30.0 as `30`, 0.5 as `0.5`, 4194304 as `4194304`."""
    return str(int(value)) if float(value).is_integer() else str(value)


def _bounds(field: FieldInfo) -> str:
    """`0..65535`, `positive`, `at least 1024`, ... from the field's own constraints."""
    limits: dict[str, Any] = {}
    for item in field.metadata:  # annotated_types' Gt(gt=0), Ge(ge=1), ...
        for name in ("gt", "ge", "lt", "le"):
            if hasattr(item, name):
                limits[name] = number(getattr(item, name))
    low, high = limits.get("ge"), limits.get("le")
    if low is not None and high is not None:
        return f"{low}..{high}"
    said = []
    if limits.get("gt") == "0":
        said.append("positive")
    elif "gt" in limits:
        said.append(f"more than {limits['gt']}")
    if low is not None:
        said.append(f"at least {low}")
    if "lt" in limits:
        said.append(f"less than {limits['lt']}")
    if high is not None:
        said.append(f"at most {high}")
    return " and ".join(said)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return said_as_choices(typing.get_args(annotation))
    if origin is list:
        return "a list of strings"
    if origin is dict:
        return 'a table of name = "string" entries'
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(annotation, f"a {getattr(annotation, '__name__', annotation)}")
