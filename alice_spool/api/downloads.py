"""The native download routes (DESIGN section 11): queue a model download (202; the
workers inside `serve`/`api` run it), list, read and cancel them. URL downloads today;
Hugging Face and CivitAI are refused clearly until they are built."""

from __future__ import annotations

import re
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import errors, urls
from ..downloads import files
from ..models import DOWNLOAD_SOURCES, DownloadStatus
from .context import Api, route
from .http import require_object

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_URL_FIELDS = {"source", "url", "kind", "name", "sha256"}
MAX_PAGE = 500


def _optional(body: dict[str, Any], field: str, pattern: re.Pattern[str], what: str) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise errors.InvalidParameters(f"{field} must be {what}", field=field)
    return value


def _url_download(body: dict[str, Any], api: Api) -> dict[str, Any]:
    """The row's fields for `{"source": "url", "url", "kind"?, "name"?, "sha256"?}`."""
    unknown = sorted(set(body) - _URL_FIELDS)
    if unknown:
        raise errors.InvalidParameters(f"unknown field {unknown[0]!r}", field=unknown[0])
    url = body.get("url")
    if not isinstance(url, str) or not url.strip():
        raise errors.InvalidParameters("url must be an http or https URL", field="url")
    rules = urls.UrlRules(allow_private=api.settings.models.allow_private_urls)
    urls.check(url.strip(), rules, field="url")  # refused now, not once it runs
    kind = body.get("kind")
    if kind is not None and kind not in ("checkpoint", "lora"):
        raise errors.InvalidParameters("kind must be checkpoint or lora", field="kind")
    name = body.get("name")
    if name is not None and (
        not isinstance(name, str) or not name or files.safe_name(name, fallback="") != name
    ):
        # The worker's own rule for installed names, so what is queued installs as named.
        raise errors.InvalidParameters(
            "name must be letters, digits, '.', '_' and '-' (1..128), neither starting with "
            "'.' or '_' nor ending with '_'",
            field="name",
        )
    sha256 = _optional(body, "sha256", _SHA256, "64 hex digits")
    reference = {"url": url.strip(), **({"sha256": sha256.lower()} if sha256 else {})}
    return {"reference": reference, "kind": kind, "name": name}


@route()
async def create_download(request: Request, api: Api, client: str | None) -> Response:
    """Queue a download: 202 with it and its `Location`."""
    body = require_object(await api.read_body(request))
    source = body.get("source")
    if source not in DOWNLOAD_SOURCES:
        raise errors.InvalidParameters(
            f"source must be one of {', '.join(DOWNLOAD_SOURCES)}", field="source"
        )
    if source != "url":
        raise errors.InvalidParameters(
            f"{source} downloads are not available yet: give an http(s) URL of the file "
            '({"source": "url", "url": ...})',
            field="source",
        )
    fields = await run_in_threadpool(_url_download, body, api)  # resolves the host
    made = await run_in_threadpool(lambda: api.store.queue_download("url", client=client, **fields))
    headers = {"Location": f"/v1/downloads/{made.id}"}
    return JSONResponse(made.to_dict(), status_code=202, headers=headers)


@route()
async def list_downloads(request: Request, api: Api, client: str | None) -> Response:
    """Downloads, newest first; `status` (repeatable) filters, `limit` (1..500)."""
    statuses = request.query_params.getlist("status")
    known = {s.value for s in DownloadStatus}
    for status in statuses:
        if status not in known:
            raise errors.InvalidParameters(f"unknown status {status!r}", field="status")
    text = request.query_params.get("limit", "100")
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise errors.InvalidParameters(f"limit must be 1..{MAX_PAGE}", field="limit")
    found = await run_in_threadpool(
        lambda: api.store.list_downloads(
            statuses=[DownloadStatus(s) for s in statuses] or None, limit=int(text)
        )
    )
    return JSONResponse({"object": "list", "data": [d.to_dict() for d in found]})


@route()
async def get_download(request: Request, api: Api, client: str | None) -> Response:
    found = await run_in_threadpool(api.store.get_download, request.path_params["download_id"])
    return JSONResponse(found.to_dict())


@route()
async def cancel_download(request: Request, api: Api, client: str | None) -> Response:
    """Queued: cancelled at once. Running: its worker stops at its next report and
    removes the partial files. Finished: 409."""
    found = await run_in_threadpool(api.store.cancel_download, request.path_params["download_id"])
    return JSONResponse(found.to_dict())
