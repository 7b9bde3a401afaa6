"""The kinds of rule a field of A1111's bodies has (body.py lists which field has which):
each checks a value as the server reads it, and states the same rule as JSON schema
(pure)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .... import errors
from ....spec import PROMPT_MAX_CHARS, SIZE_MAX, SIZE_MIN
from ...edge.schemas import TEXT
from .numeric import number_of, number_schema, span_text, values_text, whole_of
from .spellings import FALSE, TRUE, false_text, flag_text, true_text

_NO_NUL = "^[^\\x00]*$"


def all_text(body: Mapping[str, Any]) -> None:
    """Every string of `body` (its keys too) is Unicode text: one with a lone surrogate
    (`\\ud800`) is refused, naming its field, as no answer or stored option could carry
    it back (A1111 echoes fields, and keeps options)."""
    for name, value in body.items():
        field = name.encode("utf-8", "replace").decode("utf-8")
        try:
            json.dumps({name: value}, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise errors.InvalidParameters(
                f"{field} is not text: it holds a lone surrogate (\\ud800-\\udfff)",
                field=field,
            ) from None
        except RecursionError:
            raise errors.InvalidParameters(f"{field} is nested too deeply", field=field) from None


def same(value: Any, allowed: tuple[Any, ...]) -> bool:
    """`value` is one of `allowed` as JSON sees it (false is not 0)."""
    return any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in allowed)


def not_here(what: str, name: str) -> errors.InvalidParameters:
    return errors.InvalidParameters(f"{what} ({name}) is not supported here", field=name)


class Rule:
    """One field's rule: `check` takes the value given (null included) and returns it
    as the translation reads it, or refuses it naming the field; `schema` says the same."""

    description = ""

    def check(self, name: str, value: Any) -> Any:
        return value

    def schema(self) -> dict[str, Any]:
        return {}

    def described(self) -> dict[str, Any]:
        schema = self.schema()
        return {**schema, "description": self.description} if self.description else schema


@dataclass(frozen=True)
class Taken(Rule):
    """A field A1111 has that changes nothing here: any value."""

    description: str = "taken and not used"


@dataclass(frozen=True)
class Number(Rule):
    """A number from `low` to `high` (`above`: more than `low`), a whole one if `whole`,
    or its text; null is left out. `unsupported`: what a value out of range would ask
    for, which this server does not do."""

    low: float | None
    high: float | None
    whole: bool = False
    above: bool = False
    description: str = ""
    unsupported: str | None = None

    def check(self, name: str, value: Any) -> Any:
        number = whole_of(name, value) if self.whole else number_of(name, value)
        if number is None:
            return None
        if isinstance(number, float) and not math.isfinite(number):
            raise errors.InvalidParameters(f"{name} must be a finite number", field=name)
        if self.whole and isinstance(number, float):  # (whole_of made a whole one an int)
            raise errors.InvalidParameters(
                f"{name} must be a whole number, got {value!r}", field=name
            )
        low_ok = self.low is None or number > self.low or (number == self.low and not self.above)
        if not low_ok or (self.high is not None and number > self.high):
            if self.unsupported is not None:
                raise not_here(self.unsupported, name)
            low = "-inf" if self.low is None else f"{self.low:g}"
            raise errors.InvalidParameters(
                f"{name} must be from {low}{' (not equal)' if self.above else ''} to "
                f"{self.high:g}, got {number:g}",
                field=name,
            )
        return number

    def schema(self) -> dict[str, Any]:
        return number_schema(self.low, self.high, whole=self.whole, above=self.above)


@dataclass(frozen=True)
class Side(Rule):
    """An image side: 0 (A1111's "not given"), or SIZE_MIN..SIZE_MAX pixels, a multiple
    of `multiple`; or its text; null is 0."""

    multiple: int
    description: str = ""

    def check(self, name: str, value: Any) -> Any:
        side = whole_of(name, value)
        if side is None or side == 0:
            return side
        if isinstance(side, float) or not SIZE_MIN <= side <= SIZE_MAX:
            raise errors.InvalidParameters(
                f"{name} must be 0 or a whole number from {SIZE_MIN} to {SIZE_MAX}, got {value!r}",
                field=name,
            )
        if side % self.multiple:
            raise errors.InvalidParameters(
                f"{name} must be a multiple of {self.multiple}, got {side}", field=name
            )
        return side

    def schema(self) -> dict[str, Any]:
        number: dict[str, Any] = {"type": "integer", "minimum": SIZE_MIN, "maximum": SIZE_MAX}
        if self.multiple > 1:
            number["multipleOf"] = self.multiple
            text = values_text([0, *range(SIZE_MIN, SIZE_MAX + 1, self.multiple)])
        else:
            text = f"{span_text(SIZE_MIN, SIZE_MAX, whole=True)}|{values_text([0])}"
        zero = {"enum": [0, None]}
        return {"anyOf": [number, {"type": "string", "pattern": text}, zero]}


@dataclass(frozen=True)
class Flag(Rule):
    """True or false: a boolean, 0 or 1, or as text (`"true"`, `"no"`, `""`: false);
    null is left out. `unsupported`: what true would ask for: only false is taken."""

    description: str = ""
    unsupported: str | None = None

    def check(self, name: str, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip().lower()
            if text not in TRUE + FALSE:
                raise errors.InvalidParameters(
                    f"{name} must be true or false, got {value!r}", field=name
                )
            value = text in TRUE
        elif value is not None and not same(value, (True, False, 0, 1)):
            raise errors.InvalidParameters(f"{name} must be true or false", field=name)
        if self.unsupported is not None and value:
            raise not_here(self.unsupported, name)
        return value

    def schema(self) -> dict[str, Any]:
        if self.unsupported is not None:
            false = {"type": "string", "pattern": false_text()}
            return {"anyOf": [{"enum": [False, 0, None]}, false]}
        text = {"type": "string", "pattern": flag_text()}
        return {"anyOf": [{"type": "boolean"}, {"enum": [0, 1, None]}, text]}


TRUTHY: dict[str, Any] = {
    "anyOf": [{"enum": [True, 1]}, {"type": "string", "pattern": true_text()}]
}


@dataclass(frozen=True)
class Unset(Rule):
    """What this server cannot do (`what`): only the values that ask for none
    (`allowed`, which `json` lists as JSON schema)."""

    what: str
    allowed: tuple[Any, ...]
    json: tuple[dict[str, Any], ...]

    def check(self, name: str, value: Any) -> Any:
        if not same(value, self.allowed):
            raise not_here(self.what, name)
        return value

    def schema(self) -> dict[str, Any]:
        return {"anyOf": list(self.json)}

    def described(self) -> dict[str, Any]:
        return {**self.schema(), "description": f"{self.what}: not offered here, so none"}


@dataclass(frozen=True)
class Text(Rule):
    """A string (no NUL; at most PROMPT_MAX_CHARS once stripped); null is left out.
    `required`: never blank (nor left out)."""

    required: bool = False
    description: str = ""

    def check(self, name: str, value: Any) -> Any:
        if value is not None and not isinstance(value, str):
            raise errors.InvalidParameters(f"{name} must be a string", field=name)
        return value

    def schema(self) -> dict[str, Any]:
        if self.required:
            return {"type": "string", "maxLength": PROMPT_MAX_CHARS, "pattern": TEXT}
        return {"type": ["string", "null"], "maxLength": PROMPT_MAX_CHARS, "pattern": _NO_NUL}


@dataclass(frozen=True)
class Named(Rule):
    """One of a set of names, in any case, with blanks around (`pattern`; `read` checks
    it, naming the field), or one of `also` as it is (null among them). Without a
    pattern, only `also`: `read` refuses the rest."""

    pattern: str | None
    read: Callable[[str, str], Any]
    also: tuple[Any, ...] = (None,)
    description: str = ""

    def check(self, name: str, value: Any) -> Any:
        if same(value, self.also):
            return value
        if self.pattern is not None and not isinstance(value, str):
            raise errors.InvalidParameters(f"{name} must be a string", field=name)
        self.read(name, value)
        return value

    def schema(self) -> dict[str, Any]:
        listed = {"enum": list(self.also)}
        if self.pattern is None:
            return listed
        return {"anyOf": [{"type": "string", "pattern": self.pattern}, listed]}
