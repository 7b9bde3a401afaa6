"""The words A1111's clients may write in any case, as the server reads them: true and
false as text, sampler and schedule type names (samplers.py's spellings), hires
upscalers; and the regular expression of each, for the schema (pure)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from .... import samplers
from ...edge.schemas import BLANK

TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")
_BLANKS = f"[{BLANK}]*"
# Between the words of a sampler's name: `_`, or spaces and hyphens (samplers._spelling).
_SEPARATOR = f"(?:_|[{BLANK}\\-]+)"


@functools.cache
def _cases(letter: str) -> str:
    """Every character whose lower case is `letter`'s (the Kelvin sign is a `k`)."""
    letter = letter.lower()
    found = {letter, letter.upper()}
    if letter == "k":
        found.add("\u212a")
    return found.pop() if len(found) == 1 else f"[{''.join(sorted(found))}]"


_SPECIAL = frozenset("\\^$.|?*+()[]{}")  # (escaped as ECMA-262 allows: no `\ `, no `\-`)


def any_case(text: str) -> str:
    """`text` in any case, its other characters as they are."""
    return "".join(
        _cases(c) if c.isascii() and c.isalpha() else f"\\{c}" if c in _SPECIAL else c for c in text
    )


def words(choices: Iterable[str], *, blank: bool = False) -> str:
    """The pattern of one of `choices` in any case, with blanks around it, as a server
    that strips and lower-cases the text reads it (`blank`: blank text too)."""
    listed = "|".join(any_case(choice) for choice in choices)
    return f"^{_BLANKS}(?:{listed}){_BLANKS}$" + (f"|^{_BLANKS}$" if blank else "")


def _spelled(spelling: str) -> str:
    """One of samplers.py's spellings as text it is read from: any case, a space or
    hyphens for each `_`, `dpmpp` for `dpm++`."""
    parts = [
        any_case(part).replace(any_case("dpm++"), f"{any_case('dpm')}(?:\\+\\+|{any_case('pp')})")
        for part in spelling.split("_")
    ]
    return _SEPARATOR.join(parts)


def _normal(text: str) -> str:
    """A name as samplers.py compares names (its `_spelling`): lower case, `_` for
    spaces and hyphens, `dpm++` for `dpmpp`."""
    return re.sub(r"[\s\-]+", "_", text.strip().lower()).replace("dpmpp", "dpm++")


def _sampler_spellings() -> set[str]:
    return {_normal(n) for s in samplers.SAMPLERS for n in (s.key, s.name, *s.aliases)}


def _schedule_spellings(*, automatic: bool) -> set[str]:
    return {
        _normal(n)
        for s in samplers.SCHEDULES
        if automatic or s.name != "automatic"
        for n in (s.name, s.label, *(s.aliases or ()))
    }


def _either(spellings: Iterable[str]) -> str:
    # the longest first: an engine that takes the first alternative that fits still
    # reads the whole name
    return "|".join(_spelled(s) for s in sorted(spellings, key=len, reverse=True))


@functools.cache
def sampler_pattern() -> str:
    """A1111's `sampler_name`: a sampler, also with a schedule type after it (`DPM++ 2M
    Karras`), as samplers.from_a1111 reads it."""
    names = _either(_sampler_spellings())
    schedules = _either(_schedule_spellings(automatic=False))
    return f"^{_BLANKS}(?:{names})(?:{_SEPARATOR}(?:{schedules}))?{_BLANKS}$"


@functools.cache
def schedule_pattern() -> str:
    """A1111's `scheduler`: a schedule type's name, label or alias, or blank (its
    Automatic)."""
    return f"^{_BLANKS}(?:{_either(_schedule_spellings(automatic=True))})?{_BLANKS}$"


def flag_text() -> str:
    """True or false as text (`"true"`, `"Yes"`, `"0"`, `""`)."""
    return words(TRUE + FALSE, blank=True)


def false_text() -> str:
    return words(FALSE, blank=True)


def true_text() -> str:
    return words(TRUE)
