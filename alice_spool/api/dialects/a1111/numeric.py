"""Numbers as AUTOMATIC1111's clients send them: a JSON number, or its decimal text
(`"7.5"`, `" 20 "`, `"+3."`, `".5"`), which A1111's request models read as a number;
and, for the schema, the regular expression of the text of the numbers in a range (pure).

The text a number may be is plain decimal notation (an optional sign, digits, a point),
with blanks around it: no exponent, no `inf` or `nan`, no `_` between digits. That is
what a regular expression can bound exactly, so the schema says what is taken."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .... import errors
from ...edge.schemas import BLANK

_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")
_BLANKS = f"[{BLANK}]*"


def number_of(name: str, value: Any) -> int | float | None:
    """`value` as a number: null as None, a JSON number as it is (a boolean is none),
    decimal text as a float; anything else is refused, naming `name`."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not _TEXT.fullmatch(text):
            raise errors.InvalidParameters(f"{name} must be a number, got {value!r}", field=name)
        return float(text)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise errors.InvalidParameters(f"{name} must be a number", field=name)
    return value


def whole_of(name: str, value: Any) -> int | float | None:
    """`number_of`, a whole float (`20.0`, `"20"`) as an int; a fraction stays a float
    (the field's check refuses it)."""
    number = number_of(name, value)
    if isinstance(number, float) and number.is_integer():
        return int(number)
    return number


# -- the text of a range ---------------------------------------------------------------------


def span_text(
    low: float | None, high: float | None, *, whole: bool = False, above: bool = False
) -> str:
    """The pattern of the decimal text of the numbers from `low` to `high` (None: no
    bound there; `above`: more than `low`, not equal to it), whole ones only if
    `whole`; blanks around it allowed, as the server strips them."""
    lo = None if low is None else _decimal(low)
    hi = None if high is None else _decimal(high)
    signed: list[str] = []
    if hi is None or hi >= 0:
        start = max(lo, Decimal(0)) if lo is not None else Decimal(0)
        open_low = above and lo is not None and lo >= 0
        signed.append(rf"\+?(?:{_unsigned(start, hi, whole=whole, above=open_low)})")
    if lo is None or lo < 0 or (lo == 0 and not above):
        # a negative value is `-` and the text of its magnitude ("-0" is 0)
        start = max(-hi, Decimal(0)) if hi is not None else Decimal(0)
        end = None if lo is None else -lo
        signed.append(f"-(?:{_unsigned(start, end, whole=whole, above=False)})")
    return f"^{_BLANKS}(?:{'|'.join(signed)}){_BLANKS}$"


def span_value(low: float, high: float | None, *, whole: bool = False, above: bool = False) -> str:
    """`span_text` for text already known to be a valid number of its field (a rule
    between fields tells its values apart): sign and blanks are not looked at, so the
    pattern is short. `low` must not be negative."""
    if low < 0:
        raise ValueError("span_value is for numbers that are not negative")
    hi = None if high is None else _decimal(high)
    digits = _unsigned(_decimal(low), hi, whole=whole, above=above)
    return f"^[^0-9.]*(?:{digits})[^0-9.]*$"


def below_value(high: float) -> str:
    """`span_value` of the numbers from 0 to below `high` (at most 1), for text known
    to be a valid number from 0 to 1."""
    whole, digits = _split(_decimal(high))
    if whole == 1 and not digits:
        return r"^[^0-9.]*0*(?:\.[0-9]*)?[^0-9.]*$"
    if whole != 0 or not digits:
        raise ValueError(f"below_value is for a bound above 0 and at most 1, not {high}")
    tail: str | None = None  # past the bound's last digit: never below it
    for d in reversed(digits):
        options = [f"{_digit_class(0, int(d) - 1)}[0-9]*"] if d != "0" else []
        if tail is not None:
            options.append(f"{d}{tail}")
        tail = f"(?:{'|'.join(options)})?"
    return rf"^[^0-9.]*0*(?:\.{tail})?[^0-9.]*$"


def values_text(values: Iterable[int]) -> str:
    """The pattern of the decimal text of the whole numbers `values` (not negative)."""
    listed = sorted(set(values))
    numbers = "|".join(str(value) for value in listed if value > 0)
    parts = [rf"\+?0*(?:{numbers})(?:\.0*)?"] if numbers else []
    if 0 in listed:
        parts.append(r"[+-]?(?:0+(?:\.0*)?|\.0+)")
    return f"^{_BLANKS}(?:{'|'.join(parts)}){_BLANKS}$"


def _decimal(value: float) -> Decimal:
    """The shortest decimal that is `value` (repr's), not its binary expansion."""
    return Decimal(repr(float(value)))


def _split(value: Decimal) -> tuple[int, str]:
    """(whole part, fraction digits without trailing zeros) of a number >= 0."""
    text = format(value, "f")
    whole, _, fraction = text.partition(".")
    return int(whole), fraction.rstrip("0")


@dataclass(frozen=True)
class _Fractions:
    """A set of fraction digit strings (what follows the point): patterns each of one
    or more digits, and whether none (`5`, `5.`) is in the set."""

    patterns: tuple[str, ...]
    empty: bool

    def after(self, whole: str) -> str:
        """`whole` followed by a fraction of the set (the point optional where none is)."""
        if not self.patterns:
            return whole + r"\.?" if self.empty else ""
        rest = "|".join(self.patterns)
        if self.empty:
            return rf"{whole}(?:\.(?:{rest})?)?"
        return rf"{whole}\.(?:{rest})"

    def alone(self) -> str:
        """`.` and a fraction of the set: the text of a number below 1 without its 0."""
        return rf"\.(?:{'|'.join(self.patterns)})" if self.patterns else ""


_ANY = _Fractions(("[0-9]+",), empty=True)
_ZEROS = _Fractions(("0+",), empty=True)


def _digit_class(low: int, high: int) -> str:
    return str(low) if low == high else f"[{low}-{high}]"


def _at_least(digits: str, *, strictly: bool) -> _Fractions:
    """Fractions at least (or more than) `.digits`: at each digit, a greater one and
    any after it, or the same one and the rest compared."""
    if not digits:
        return _Fractions(("0*[1-9][0-9]*",), empty=False) if strictly else _ANY
    pattern = "0*[1-9][0-9]*" if strictly else "[0-9]*"
    for d in reversed(digits):
        pattern = (
            f"{d}{pattern}" if d == "9" else f"(?:{_digit_class(int(d) + 1, 9)}[0-9]*|{d}{pattern})"
        )
    return _Fractions((pattern,), empty=False)


def _at_most(digits: str) -> _Fractions:
    """Fractions at most `.digits` (none, `.0`, `.00`: 0, which is)."""
    if not digits:
        return _ZEROS
    patterns = [
        f"{digits[:k]}{_digit_class(0, int(d) - 1)}[0-9]*" for k, d in enumerate(digits) if d != "0"
    ]
    patterns += [digits[:k] for k in range(1, len(digits))]
    patterns.append(f"{digits}0*")
    return _Fractions(tuple(patterns), empty=True)


def _unsigned(low: Decimal, high: Decimal | None, *, whole: bool, above: bool) -> str:
    """The text (no sign) of the numbers from `low` >= 0 to `high` (None: any above)."""
    if whole:
        return _whole_text(low, high, above=above)
    lo_whole, lo_fraction = _split(low)
    bottom = _at_least(lo_fraction, strictly=above)
    if high is not None and _split(high)[0] == lo_whole:
        # within one whole number: only from that number up is needed here
        if lo_fraction or above:
            raise ValueError(f"no pattern for the span {low}..{high}")
        top = _at_most(_split(high)[1])
        parts = [top.after(_integers(lo_whole, lo_whole))]
        return "|".join([*parts, top.alone()] if lo_whole == 0 else parts)
    if lo_whole == 0 and not bottom.empty:  # `0.5`, `.5`, `00.5` at once
        parts = [rf"0*{bottom.alone()}"]
    else:
        parts = [bottom.after(_integers(lo_whole, lo_whole))]
        if lo_whole == 0:
            parts.append(bottom.alone())
    if high is None:
        parts.append(_ANY.after(_integers(lo_whole + 1, None)))
        return "|".join(parts)
    hi_whole, hi_fraction = _split(high)
    if lo_whole + 1 <= hi_whole - 1:
        parts.append(_ANY.after(_integers(lo_whole + 1, hi_whole - 1)))
    parts.append(_at_most(hi_fraction).after(_integers(hi_whole, hi_whole)))
    return "|".join(parts)


def _whole_text(low: Decimal, high: Decimal | None, *, above: bool) -> str:
    """The text of the whole numbers from `low` to `high`: a point and zeros at most."""
    lo_whole, lo_fraction = _split(low)
    first = lo_whole + 1 if lo_fraction or above else lo_whole
    last = None if high is None else _split(high)[0]
    if last is not None and first > last:
        raise ValueError(f"no whole number from {low} to {high}")
    parts = [_ZEROS.after(_integers(first, last))]
    return "|".join([*parts, _ZEROS.alone()] if first == 0 else parts)


def _integers(low: int, high: int | None) -> str:
    """Digits (leading zeros allowed) of the whole numbers from `low` to `high`."""
    patterns: list[str] = []
    length = len(str(low))
    while high is None or length <= len(str(high)):
        start = max(low, 10 ** (length - 1) if length > 1 else 0)
        if high is None and start == 10 ** (length - 1) and length > 1:
            patterns.append(f"[1-9][0-9]{{{length - 1},}}")  # every longer number too
            break
        end = 10**length - 1 if high is None else min(high, 10**length - 1)
        patterns += _same_length(str(start), str(end))
        length += 1
    return f"0*(?:{'|'.join(patterns)})"


def _same_length(low: str, high: str) -> list[str]:
    """Patterns of the numbers from `low` to `high`, written with as many digits."""
    if low == high:
        return [low]
    common = 0
    while low[common] == high[common]:
        common += 1
    prefix, low, high = low[:common], low[common:], high[common:]
    rest = len(low) - 1
    if rest == 0:
        return [prefix + _digit_class(int(low), int(high))]
    patterns: list[str] = []
    first, last = int(low[0]), int(high[0])
    if low[1:] != "0" * rest:
        patterns += [low[0] + p for p in _same_length(low[1:], "9" * rest)]
        first += 1
    tail: list[str] = []
    if high[1:] != "9" * rest:
        tail = [high[0] + p for p in _same_length("0" * rest, high[1:])]
        last -= 1
    if first <= last:
        patterns.append(f"{_digit_class(first, last)}[0-9]{{{rest}}}")
    return [prefix + p for p in patterns + tail]


# -- schemas ------------------------------------------------------------------------------


def number_schema(
    low: float | None,
    high: float | None,
    *,
    whole: bool = False,
    above: bool = False,
    nullable: bool = True,
) -> dict[str, Any]:
    """A number from `low` to `high`, as JSON or as its decimal text (null: left out,
    where `nullable`)."""
    number: dict[str, Any] = {"type": "integer" if whole else "number"}
    if low is not None:
        number["exclusiveMinimum" if above else "minimum"] = low
    if high is not None:
        number["maximum"] = high
    text = {"type": "string", "pattern": span_text(low, high, whole=whole, above=above)}
    options = [number, text, *([{"type": "null"}] if nullable else [])]
    return {"anyOf": options}
