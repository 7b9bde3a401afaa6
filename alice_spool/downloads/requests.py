"""A download as the doors ask for it, checked before anything is queued: the native
body (`{"source": ..., ...}`), and `models pull`'s REF
(`org/repo[@rev]`, `hf:org/repo[@rev][:file]`, `civitai:MODEL_ID[@VERSION_ID]` or an
http(s) URL). A malformed request, a URL the address rules refuse, or a name that is
already installed is an error now (4xx), not a failed download later."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import urls
from ..errors import InvalidParameters
from . import files

_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")
_FILE = re.compile(r"[A-Za-z0-9_.-][A-Za-z0-9_./ -]{0,255}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_FIELDS = {
    "huggingface": {"source", "repo", "revision", "file", "kind", "name"},
    "civitai": {"source", "model_id", "version_id", "file_id", "name"},
    "url": {"source", "url", "kind", "name", "sha256"},
}
SOURCES = tuple(_FIELDS)
NAME_RULE = (
    "letters, digits, '.', '_' and '-' (1..128), neither starting with '.' or '_' nor "
    "ending with '_'"
)


@dataclass(frozen=True)
class DownloadRequest:
    source: str
    reference: dict[str, Any] = field(default_factory=dict)
    kind: str | None = None
    name: str | None = None

    def check_name_free(self, models_dir: Path) -> None:
        """`model_exists` now if the name it will install as is taken (where it is known
        before the source is asked)."""
        if self.name is not None:
            files.check_name_free(models_dir, self.kind, self.name)


def parse(body: dict[str, Any], *, allow_private_urls: bool) -> DownloadRequest:
    """The native body of `POST /v1/downloads`, checked (a URL's host resolved)."""
    source = body.get("source")
    if source not in _FIELDS:
        raise InvalidParameters(f"source must be one of {', '.join(_FIELDS)}", field="source")
    unknown = sorted(set(body) - _FIELDS[source])
    if unknown:
        raise InvalidParameters(
            f"unknown field {unknown[0]!r} for a {source} download", field=unknown[0]
        )
    name = _name(body.get("name"))
    if source == "huggingface":
        return _huggingface(body, name)
    if source == "civitai":
        return _civitai(body, name)
    return _url(body, name, allow_private_urls)


def _name(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or files.safe_name(value, fallback="") != value:
        # The worker's own rule for installed names, so what is queued installs as named.
        raise InvalidParameters(f"name must be {NAME_RULE}", field="name")
    return value


def _text(body: dict[str, Any], key: str, pattern: re.Pattern[str], what: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value) or ".." in value:
        raise InvalidParameters(f"{key} must be {what}", field=key)
    return value


def _huggingface(body: dict[str, Any], name: str | None) -> DownloadRequest:
    repo = _text(body, "repo", _REPO, "a Hugging Face repository, org/name")
    if repo is None:
        raise InvalidParameters(
            "repo is required: a Hugging Face repository, org/name", field="repo"
        )
    revision = _text(body, "revision", _REVISION, "a branch, tag or commit")
    file = _text(body, "file", _FILE, "a file's path in the repository")
    if file is not None and file.startswith("/"):
        raise InvalidParameters("file must be a path inside the repository", field="file")
    kind = body.get("kind")
    if kind is not None and kind not in ("diffusers", "checkpoint", "lora"):
        raise InvalidParameters("kind must be diffusers, checkpoint or lora", field="kind")
    if kind == "diffusers" and file is not None:
        raise InvalidParameters("a diffusers model is a whole repository, not a file", field="file")
    name = name or files.safe_name(repo.rsplit("/", 1)[-1])  # the repository's last part
    reference: dict[str, Any] = {"repo": repo}
    if revision is not None:
        reference["revision"] = revision
    if file is not None:
        reference["file"] = file
    return DownloadRequest("huggingface", reference, kind, name)


def _civitai(body: dict[str, Any], name: str | None) -> DownloadRequest:
    reference: dict[str, Any] = {}
    for key in ("model_id", "version_id", "file_id"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, str) and value.isascii() and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**53:
            raise InvalidParameters(f"{key} must be a positive integer", field=key)
        reference[key] = value
    if "model_id" not in reference and "version_id" not in reference:
        raise InvalidParameters("model_id or version_id is required", field="model_id")
    return DownloadRequest("civitai", reference, None, name)


def _url(body: dict[str, Any], name: str | None, allow_private_urls: bool) -> DownloadRequest:
    url = body.get("url")
    if not isinstance(url, str) or not url.strip():
        raise InvalidParameters("url must be an http or https URL", field="url")
    rules = urls.UrlRules(allow_private=allow_private_urls)
    urls.check(url.strip(), rules, field="url")  # refused now, not once it runs
    kind = body.get("kind")
    if kind is not None and kind not in ("checkpoint", "lora"):
        raise InvalidParameters("kind must be checkpoint or lora", field="kind")
    sha256 = _text(body, "sha256", _SHA256, "64 hex digits")
    reference = {"url": url.strip(), **({"sha256": sha256.lower()} if sha256 else {})}
    return DownloadRequest("url", reference, kind, name)


def from_ref(ref: str) -> dict[str, Any]:
    """`models pull`'s REF as a native body (checked by `parse`)."""
    text = ref.strip()
    if text.startswith(("http://", "https://")):
        return {"source": "url", "url": text}
    if text.startswith("civitai:"):
        model, _, version = text.removeprefix("civitai:").partition("@")
        body: dict[str, Any] = {"source": "civitai"}
        if model:
            body["model_id"] = model
        if version:
            body["version_id"] = version
        for key in ("model_id", "version_id"):
            if key in body and not (str(body[key]).isascii() and str(body[key]).isdigit()):
                raise InvalidParameters(
                    f"{ref!r}: civitai:MODEL_ID[@VERSION_ID] takes numbers", field="ref"
                )
        return body
    repo = text.removeprefix("hf:")
    repo, _, file = repo.partition(":")
    repo, _, revision = repo.partition("@")
    body = {"source": "huggingface", "repo": repo}
    if revision:
        body["revision"] = revision
    if file:
        body["file"] = file
    return body
