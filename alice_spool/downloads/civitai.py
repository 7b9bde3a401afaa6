"""CivitAI as a model source, through its public REST API (`models.civitai_url`):
browse and search, and the plan of a download by model, version or file id.

Browsing (no query) runs in page mode with the type filter on CivitAI's side; a search
(a query) runs in cursor mode, and because CivitAI long filtered types only after
ranking (sparse pages), the type filter and NSFW are applied again here. A download is
its version's download route with the file's id, which CivitAI answers with a redirect
to a signed storage URL: the token goes in the `Authorization` header to CivitAI alone
(never in a URL, so it cannot reach a log line or a stored row), and the storage host
never sees it. LORA, LoCon and DoRA install as LoRAs, Checkpoint as a model; files
CivitAI's scans call Danger or Error are refused, pickles unless `models.allow_pickle`,
and the file's `hashes.SHA256` must match what arrives."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import httpx

from .. import urls
from ..errors import (
    DownloadFailed,
    SourceUnavailable,
    Unauthorized,
    UnsafeFile,
    UnsafeFormat,
    UnsupportedModel,
)
from .files import safe_name
from .plan import SINGLE, Access, Plan, RemoteFile, SearchPage
from .transfer import Transient

if TYPE_CHECKING:
    from .sources import SourceSettings

TOKEN_SETTING = "models.civitai_token"
TYPES = (
    "Checkpoint",
    "TextualInversion",
    "Hypernetwork",
    "AestheticGradient",
    "LORA",
    "LoCon",
    "DoRA",
    "Controlnet",
    "Upscaler",
    "MotionModule",
    "VAE",
    "TextEncoder",
    "UNet",
    "CLIPVision",
    "Poses",
    "Wildcards",
    "Workflows",
    "ComfyWorkflows",
    "Detection",
    "VisionLanguage",
    "CLIP",
    "LLM",
    "Other",
)
SORTS = (
    "Highest Rated",
    "Most Downloaded",
    "Most Liked",
    "Most Discussed",
    "Most Collected",
    "Most Images",
    "Newest",
    "Oldest",
)
LORA_TYPES = ("LORA", "LoCon", "DoRA")
INSTALLABLE = {"Checkpoint": "checkpoint", **{t: "lora" for t in LORA_TYPES}}
MAX_LIMIT = 100
PAGE_MODE_END = 1000  # CivitAI refuses page * limit beyond this (cursors only)
_BAD_SCAN = ("Danger", "Error")
TIMEOUT_S = 30.0


def access(settings: SourceSettings, trusted: urls.UrlRules) -> Access:
    headers = (
        {"Authorization": f"Bearer {settings.civitai_token}"} if settings.civitai_token else {}
    )
    return Access(trusted, headers, _token_hint(settings))


def _token_hint(settings: SourceSettings) -> str:
    if settings.civitai_token:
        return f"CivitAI refused the token in {TOKEN_SETTING} for this file"
    return f"CivitAI downloads need an API key: set {TOKEN_SETTING}"


def _get(
    settings: SourceSettings,
    path: str,
    params: Sequence[tuple[str, str]] = (),
) -> Any:
    """A JSON answer of CivitAI's API; `Transient` for what a retry may get past."""
    headers = {"Accept": "application/json", "User-Agent": urls.USER_AGENT}
    if settings.civitai_token:
        headers["Authorization"] = f"Bearer {settings.civitai_token}"
    try:
        with httpx.Client(timeout=TIMEOUT_S, trust_env=False, follow_redirects=False) as http:
            answer = http.get(
                f"{settings.civitai_url}{path}",
                params=httpx.QueryParams(list(params)),
                headers=headers,
            )
    except httpx.HTTPError as exc:
        raise Transient(f"CivitAI could not be reached: {type(exc).__name__}") from None
    if answer.status_code in (401, 403):
        raise Unauthorized(f"CivitAI answered {answer.status_code}: {_token_hint(settings)}")
    if answer.status_code == 429 or answer.status_code >= 500:
        raise Transient(f"CivitAI answered {answer.status_code}")
    if answer.status_code == 404:
        raise DownloadFailed(f"CivitAI has no {path.removeprefix('/api/v1/').rstrip('/')}")
    if answer.status_code != 200:
        raise DownloadFailed(f"CivitAI answered {answer.status_code} for {path}")
    try:
        return answer.json()
    except ValueError:
        raise DownloadFailed(f"CivitAI answered {path} with something that is not JSON") from None


def _int(reference: dict[str, Any], key: str) -> int | None:
    value = reference.get(key)
    return None if value is None else int(value)


def plan(
    settings: SourceSettings, reference: dict[str, Any], kind: str | None, name: str | None
) -> Plan:
    model_id, version_id, file_id = (
        _int(reference, k) for k in ("model_id", "version_id", "file_id")
    )
    if version_id is not None:
        version = _get(settings, f"/api/v1/model-versions/{version_id}")
        model_type = str((version.get("model") or {}).get("type", ""))
    else:
        model = _get(settings, f"/api/v1/models/{model_id}")
        model_type = str(model.get("type", ""))
        versions = model.get("modelVersions") or []
        if file_id is not None:
            versions = [v for v in versions if any(f.get("id") == file_id for f in v["files"])]
        if not versions:
            what = f"file {file_id}" if file_id is not None else "published version"
            raise DownloadFailed(f"CivitAI model {model_id} has no {what}")
        version = versions[0]  # the newest
    installs_as = INSTALLABLE.get(model_type)
    if installs_as is None:
        raise UnsupportedModel(
            f"CivitAI {model_type or 'unknown'} models cannot be installed yet: only "
            f"Checkpoint and {', '.join(LORA_TYPES)}"
        )
    chosen = _file(version, file_id)
    _check_file(settings, chosen)
    sha256 = (chosen.get("hashes") or {}).get("SHA256")
    url = f"{settings.civitai_url}/api/download/models/{version['id']}?fileId={chosen['id']}"
    stem = str(chosen.get("name", "")).rsplit(".", 1)[0]
    file = RemoteFile(SINGLE, url, sha256=str(sha256).lower() if sha256 else None)
    return Plan(installs_as, name or safe_name(stem), (file,))


def _file(version: dict[str, Any], file_id: int | None) -> dict[str, Any]:
    files = version.get("files") or []
    if file_id is not None:
        found = [f for f in files if f.get("id") == file_id]
    else:
        found = [f for f in files if f.get("primary")] or [
            f for f in files if f.get("type") in ("Model", "Pruned Model")
        ]
    if not found:
        what = f"file {file_id}" if file_id is not None else "model file"
        raise DownloadFailed(f"CivitAI version {version.get('id')} has no {what}")
    return dict(found[0])


def _check_file(settings: SourceSettings, chosen: dict[str, Any]) -> None:
    name = chosen.get("name", "the file")
    for key, label in (("pickleScanResult", "pickle"), ("virusScanResult", "virus")):
        result = chosen.get(key)
        if result in _BAD_SCAN:
            raise UnsafeFile(f"CivitAI's {label} scan of {name} says {result}: not installed")
    form = (chosen.get("metadata") or {}).get("format")
    if form == "PickleTensor" and not settings.allow_pickle:
        raise UnsafeFormat(
            f"{name} is a pickle file, which can run code when loaded: only safetensors are "
            "installed (models.allow_pickle = true allows it)"
        )
    if form not in (None, "SafeTensor", "PickleTensor"):
        raise UnsupportedModel(f"{name} is a {form} file: only safetensors can be installed")


def search(
    settings: SourceSettings,
    query: str,
    *,
    types: list[str],
    sort: str | None,
    nsfw: bool,
    limit: int,
    cursor: str | None,
) -> SearchPage:
    params: list[tuple[str, str]] = [("limit", str(limit)), ("nsfw", "true" if nsfw else "false")]
    params += [("types", t) for t in types]
    if sort:
        params.append(("sort", sort))
    if query:  # cursor mode: CivitAI refuses a query with a page
        params.append(("query", query))
        if cursor:
            params.append(("cursor", cursor))
    else:
        page = int(cursor) if cursor else 1
        params.append(("page", str(page)))
    try:
        body = _get(settings, "/api/v1/models", params)
    except (Transient, DownloadFailed, Unauthorized) as exc:
        raise SourceUnavailable(f"the CivitAI search failed: {exc.message}") from None
    items = [i for i in body.get("items") or [] if isinstance(i, dict)]
    items = [
        i for i in items if (not types or i.get("type") in types) and (nsfw or not i.get("nsfw"))
    ]
    metadata = body.get("metadata") or {}
    if query:
        next_cursor = metadata.get("nextCursor") or None
    else:
        more = bool(metadata.get("nextPage")) and (page + 1) * limit <= PAGE_MODE_END
        next_cursor = str(page + 1) if more else None
    return SearchPage(
        [_shown(i, nsfw) for i in items], None if next_cursor is None else str(next_cursor)
    )


def _shown(item: dict[str, Any], nsfw: bool) -> dict[str, Any]:
    versions = item.get("modelVersions") or []
    images = [
        image.get("url")
        for version in versions
        for image in version.get("images") or []
        if image.get("url") and (nsfw or (image.get("nsfwLevel") or 1) <= 1)
    ]
    stats = item.get("stats") or {}
    return {
        "source": "civitai",
        "id": item.get("id"),
        "name": item.get("name"),
        "type": item.get("type"),
        "installs_as": INSTALLABLE.get(str(item.get("type"))),
        "nsfw": bool(item.get("nsfw")),
        "creator": (item.get("creator") or {}).get("username"),
        "tags": [t for t in item.get("tags") or [] if isinstance(t, str)],
        "thumbnail": images[0] if images else None,
        "images": images[:4],
        "downloads": stats.get("downloadCount"),
        "rating": stats.get("rating"),
        "versions": [
            {
                "id": version.get("id"),
                "name": version.get("name"),
                "base_model": version.get("baseModel"),
                "trained_words": version.get("trainedWords") or [],
                "files": [
                    {
                        "id": f.get("id"),
                        "name": f.get("name"),
                        "size_kb": f.get("sizeKB"),
                        "type": f.get("type"),
                        "format": (f.get("metadata") or {}).get("format"),
                        "primary": bool(f.get("primary")),
                    }
                    for f in version.get("files") or []
                ],
            }
            for version in versions
        ],
    }
