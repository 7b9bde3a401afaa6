"""What a download fetches, decided once from its source and kept in its row (so a
restart resumes the same files of the same revision): the kind and name of the model,
and each file with where it lands, the URL it comes from, and what it must be (size,
SHA-256, git blob id). How a source is reached (its token, its address rules) is not
kept: `Access` is built from the settings each time."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .. import urls

SINGLE = "file.part"  # where a one-file download is staged


@dataclass(frozen=True)
class RemoteFile:
    path: str  # where it lands in the model, relative (SINGLE for a one-file model)
    url: str  # never with a token in it
    size: int | None = None  # exact, where the source gives it
    sha256: str | None = None  # lower-case hex, where the source gives it
    git_blob: str | None = None  # a Hub repository's plain git file: its blob id
    weights: bool = True  # must be weights (not a page); False for configs


@dataclass(frozen=True)
class Plan:
    kind: str  # diffusers | checkpoint | lora ("" for a URL: decided by its header)
    name: str  # the installed name ("" for a URL: from Content-Disposition)
    files: tuple[RemoteFile, ...]
    revision: str | None = None  # a Hub repository's commit

    @property
    def total(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if None in sizes else sum(s for s in sizes if s is not None)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "files": [asdict(f) for f in self.files]}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> Plan:
        files = tuple(RemoteFile(**f) for f in value["files"])
        return cls(value["kind"], value["name"], files, value.get("revision"))


@dataclass(frozen=True)
class Access:
    """How to reach a source's files: the address rules, the token's header (sent only
    to the source's own origin, never stored) and what to say when it is refused."""

    rules: urls.UrlRules
    secret_headers: dict[str, str] = field(default_factory=dict, repr=False)
    token_hint: str | None = None


@dataclass(frozen=True)
class SearchPage:
    data: list[dict[str, Any]]
    next_cursor: str | None
