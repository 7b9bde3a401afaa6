"""What the download routes' bodies take: each field's rule (a pattern that says exactly
what the door takes, Python and the schema's validators reading it alike), the native
body's three sources, and the ALICE routes' shared field types. The same models check a
body and describe it in /openapi.json."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    RootModel,
    Strict,
    WithJsonSchema,
)
from pydantic_core import core_schema

from ... import errors
from ...downloads import requests
from ..edge.contract import validated
from ..edge.http import require_object
from ..edge.schemas import BLANK, DOWNLOAD_NAME

MAX_URL = 2048


@dataclass(frozen=True)
class Matching:
    """A string field's rule: `pattern` (a JSON Schema pattern, anchored) matches it
    whole, and it has at most `max_length` characters. Python's `re` reads these
    patterns as JSON Schema's validators do, so the check and the description are one."""

    pattern: str
    what: str
    max_length: int | None = None

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        compiled = re.compile(self.pattern)
        longest = self.max_length

        def check(value: str) -> str:
            if (longest is not None and len(value) > longest) or not compiled.fullmatch(value):
                raise ValueError(f"must be {self.what}")
            return value

        return core_schema.no_info_after_validator_function(
            check, core_schema.str_schema(strict=True)
        )

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        shown: dict[str, Any] = {"type": "string", "pattern": self.pattern}
        if self.max_length is not None:
            shown["maxLength"] = self.max_length
        return shown | {"description": self.what}


@dataclass(frozen=True)
class OneOf:
    """A string field that is one of `names`, described as their enum."""

    names: tuple[str, ...]
    what: str

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        def check(value: str) -> str:
            if value not in self.names:
                raise ValueError(f"must be one of {', '.join(self.names)}")
            return value

        return core_schema.no_info_after_validator_function(
            check, core_schema.str_schema(strict=True)
        )

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.names), "description": self.what}


def _utf8(value: str) -> str:
    try:  # JSON may escape half a surrogate pair, which no URL or row can hold
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not text: it holds a lone surrogate (\\ud800-\\udfff)") from None
    return value


Text = Annotated[str, Strict(), AfterValidator(_utf8)]


def _whole(value: Any) -> Any:
    """3.0 is an integer to JSON Schema, and to us."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Whole = Annotated[int, BeforeValidator(_whole), Strict()]

_H16 = "[0-9A-Fa-f]{1,4}"
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_LS32 = rf"(?:{_H16}:{_H16}|{_OCTET}(?:\.{_OCTET}){{3}})"


def _ipv6() -> str:
    """An IPv6 address as RFC 3986 spells one (what Python's `ipaddress` reads)."""
    forms = [rf"(?:{_H16}:){{6}}{_LS32}", rf"::(?:{_H16}:){{5}}{_LS32}"]
    tails = [rf"(?:{_H16}:){{4}}{_LS32}", rf"(?:{_H16}:){{3}}{_LS32}"]
    tails += [rf"(?:{_H16}:){{2}}{_LS32}", rf"{_H16}:{_LS32}", _LS32, _H16, ""]
    for before, tail in enumerate(tails):
        head = rf"(?:(?:{_H16}:){{0,{before}}}{_H16})?" if before else rf"(?:{_H16})?"
        forms.append(rf"{head}::{tail}")
    return "(?:" + "|".join(forms) + ")"


_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = "(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
# An http(s) URL: a host name, or an IPv6 address in brackets; a port 1..65535; then
# anything but spaces and control characters.
_URL = (
    r"[Hh][Tt][Tt][Pp][Ss]?://(?:[A-Za-z0-9._~%!$&'()*+,;=:-]*@)?"
    rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[{_ipv6()}\])(?::{_PORT})?"
    r"(?:[/?#][^\x00-\x20\x7f]*)?"
)
URL = f"^{_URL}$"
HttpUrl = Annotated[str, Matching(URL, "an http or https URL", max_length=MAX_URL)]
# The same, with blanks around it left out (as a pasted URL may have).
DownloadUrl = Annotated[
    str,
    Matching(f"^[{BLANK}]*{_URL}[{BLANK}]*$", "an http or https URL", max_length=MAX_URL),
]
_DIGITS = "^0*[1-9][0-9]{0,14}$"
_ID = {"type": "integer", "minimum": 1, "maximum": 2**53 - 1}


def _civitai_id(value: Any) -> Any:
    if isinstance(value, str) and re.fullmatch(_DIGITS, value):
        return int(value)
    return _whole(value)


CivitaiId = Annotated[
    int,
    BeforeValidator(_civitai_id),
    Strict(),
    Field(ge=1, le=2**53 - 1),
    WithJsonSchema({"anyOf": [_ID, {"type": "string", "pattern": _DIGITS}]}),
]
# `..` nowhere: a path in a repository, a branch or a tag, never a way out of them.
HubRepo = Annotated[
    str,
    Matching(
        r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$",
        "a Hugging Face repository, org/name",
    ),
]
Revision = Annotated[
    str, Matching(r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$", "a branch, tag or commit")
]
RepoFile = Annotated[
    str,
    Matching(
        r"^(?!.*\.\.)[A-Za-z0-9_.-][A-Za-z0-9_./ -]{0,255}$", "a file's path in the repository"
    ),
]
Name = Annotated[str, Matching(DOWNLOAD_NAME["pattern"], requests.NAME_RULE)]
Sha256 = Annotated[str, Matching("^[0-9a-fA-F]{64}$", "64 hex digits")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class DownloadFromHub(_Body):
    """A Hugging Face repository (a diffusers model), or one file of it (not with
    `kind: diffusers`)."""

    model_config = ConfigDict(
        json_schema_extra={
            "not": {
                "required": ["kind", "file"],
                "properties": {"kind": {"const": "diffusers"}, "file": {"type": "string"}},
            }
        }
    )

    source: Literal["huggingface"]
    repo: HubRepo
    revision: Revision | None = None
    file: RepoFile | None = None
    kind: Literal["diffusers", "checkpoint", "lora"] | None = None
    name: Name | None = Field(None, description="the installed name (else the repository's)")


def one_of(*fields: str) -> dict[str, Any]:
    """A JSON Schema: at least one of `fields` given, and not null."""
    return {
        "anyOf": [
            {"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in fields
        ]
    }


class DownloadFromCivitai(_Body):
    """A CivitAI model's newest version, a version, or one file of either."""

    model_config = ConfigDict(json_schema_extra=one_of("model_id", "version_id"))

    source: Literal["civitai"]
    model_id: CivitaiId | None = None
    version_id: CivitaiId | None = None
    file_id: CivitaiId | None = None
    name: Name | None = Field(None, description="the installed name (else the file's)")


class DownloadFromUrl(_Body):
    """A file at an http(s) URL. Its host must resolve to public addresses only, unless
    `models.allow_private_urls` (400 `forbidden_url`)."""

    source: Literal["url"]
    url: DownloadUrl
    kind: Literal["checkpoint", "lora"] | None = None
    name: Name | None = Field(None, description="the installed name (else the file's)")
    sha256: Sha256 | None = None


class DownloadBody(RootModel[DownloadFromHub | DownloadFromCivitai | DownloadFromUrl]):
    """A download to queue, by its `source`."""

    root: Annotated[
        DownloadFromHub | DownloadFromCivitai | DownloadFromUrl, Field(discriminator="source")
    ]


_SOURCES: dict[str, type[_Body]] = {
    "huggingface": DownloadFromHub,
    "civitai": DownloadFromCivitai,
    "url": DownloadFromUrl,
}


def native_body(raw: Any) -> dict[str, Any]:
    """The native body checked by its source's model (400 naming the field), as
    `requests.parse` takes it (ids as numbers, nulls left out)."""
    body = require_object(raw)
    source = body.get("source")
    if not isinstance(source, str) or source not in _SOURCES:
        raise errors.InvalidParameters(
            f"source must be one of {', '.join(_SOURCES)}", field="source"
        )
    return validated(_SOURCES[source], body).model_dump(exclude_none=True)
