"""What every route shares, and the wrapper that makes a function a route: API key,
rate limit, and every `SpoolError` turned into its HTTP answer."""

from __future__ import annotations

import contextlib
import logging
import re
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from .. import __version__, errors
from ..config import Settings
from ..models import JobStatus
from ..outbox import image_name
from ..records import JobRecord
from ..registry import ModelRegistry
from ..spec import JobSpec
from ..store import Store
from .http import Keys, RateLimiter, StreamSlots, read_json, spool_error_response

log = logging.getLogger(__name__)

IMAGE_NAME = re.compile(r"(?P<job>[0-9a-f]{30})-(?P<index>[0-9]{1,2})\.png")


FORWARDED_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


@dataclass
class Api:
    settings: Settings
    store: Store
    registry: ModelRegistry
    keys: Keys
    limiter: RateLimiter
    auth_failures: RateLimiter  # per address: guessing keys is slowed down
    outbox: Path
    started: float = field(default_factory=time.time)
    version: str = __version__
    inbox_health: Callable[[], dict[str, Any]] | None = None
    database_trouble: DatabaseTrouble = field(default_factory=lambda: DatabaseTrouble())
    streams: StreamSlots = field(default_factory=lambda: StreamSlots(8))

    async def read_body(self, request: Request) -> Any:
        """The request's JSON body, within this server's size and time limits."""
        server = self.settings.server
        return await read_json(request, server.max_body_bytes, server.body_timeout_s)

    def base_url(self, request: Request) -> str:
        """Where image URLs point: `server.public_url`, else where this request came
        to (X-Forwarded-Host/-Proto believed only from `server.trusted_proxies`)."""
        configured = self.settings.server.public_url
        if configured:
            return configured.rstrip("/")
        own = str(request.base_url).rstrip("/")
        if not self._via_trusted_proxy(request):
            return own
        host = request.headers.get("x-forwarded-host", "").split(",")[0].strip()
        proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        if not host or not FORWARDED_HOST.fullmatch(host):
            return own
        scheme = proto if proto in ("http", "https") else request.url.scheme
        return f"{scheme}://{host}{request.scope.get('root_path', '')}".rstrip("/")

    def client_address(self, request: Request) -> str:
        """The client's address: the peer's, or, behind a trusted proxy, the last address
        in X-Forwarded-For that is not one of the trusted proxies."""
        peer = request.client.host if request.client else "unknown"
        if not self._via_trusted_proxy(request):
            return peer
        hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",")]
        trusted = set(self.settings.server.trusted_proxies)
        for hop in reversed(hops):
            if hop and hop not in trusted:
                return hop
        return peer

    def _via_trusted_proxy(self, request: Request) -> bool:
        peer = request.client.host if request.client else None
        return peer is not None and peer in self.settings.server.trusted_proxies

    def image_urls(self, request: Request, job: JobRecord) -> list[str]:
        if job.status is not JobStatus.SUCCEEDED:
            return []  # only a succeeded job's directory holds images
        if job.images_expired_at is not None:
            return []  # retention deleted them; the job says when (images_expired_at)
        images = (job.result or {}).get("images") or []
        base = self.base_url(request)
        return [f"{base}/images/{image['file']}" for image in images if "file" in image]

    def job_view(self, request: Request, job: JobRecord) -> dict[str, Any]:
        view = job.to_dict()
        view["object"] = "job"
        view["image_urls"] = self.image_urls(request, job)
        return view

    def image_path(self, name: str) -> Path:
        """The file of `/images/NAME`, only for names a job could have written."""
        match = IMAGE_NAME.fullmatch(name)
        if match is None:
            raise errors.JobNotFound(f"no image {name!r}")
        path = self.outbox / match["job"] / image_name(match["job"], int(match["index"]))
        try:
            info = path.lstat()  # a link is never one the spool wrote: not followed
        except OSError:
            raise errors.JobNotFound(f"no image {name!r}") from None
        if not stat.S_ISREG(info.st_mode):
            raise errors.JobNotFound(f"no image {name!r}")
        return path

    def with_model(self, spec: JobSpec) -> JobSpec:
        """`model_not_found` (404) before anything is queued; the model id filled in.
        (Reads the models directory: call it from a worker thread.)"""
        return self.registry.with_model(spec, self.settings.generation.default_model)

    async def resolve_model(self, spec: JobSpec) -> JobSpec:
        return await run_in_threadpool(self.with_model, spec)


Handler = Callable[[Request, Api, str | None], Awaitable[Response]]


class DatabaseTrouble:
    """The last database error a request met (a full disk, a lock held too long), for
    /health to report as `degraded` while it is recent."""

    def __init__(self) -> None:
        self._last: tuple[float, errors.SpoolError] | None = None

    def note(self, exc: errors.SpoolError) -> None:
        self._last = (time.monotonic(), exc)

    def recent(self, within_s: float) -> dict[str, Any] | None:
        last = self._last
        if last is None or time.monotonic() - last[0] > within_s:
            return None
        at, exc = last
        return {**exc.to_dict(), "age_s": round(time.monotonic() - at, 1)}


def _identify(api: Api, request: Request, address: str) -> str | None:
    """The API key's name. An address that failed too often is refused for a while
    (429), whatever key it sends now, so that keys cannot be guessed at speed."""
    api.auth_failures.check(address, spend=False)
    try:
        return api.keys.identify(request)
    except errors.Unauthorized:
        with contextlib.suppress(errors.RateLimited):
            api.auth_failures.check(address)  # one failure spent
        raise


def route(*, auth: bool = True) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Make `handler(request, api, client)` a Starlette endpoint. `client` is the name of
    the API key used (None when keys are off, or for open routes)."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            api: Api = request.app.state.api
            try:
                client = None
                if auth:
                    address = api.client_address(request)
                    client = _identify(api, request, address)
                    api.limiter.check(client or address)
                return await handler(request, api, client)
            except errors.ClientDisconnected as exc:  # nobody to answer: one line, no trace
                log.info("%s %s: %s", request.method, request.url.path, exc.message)
                return Response(status_code=400)
            except errors.SpoolError as exc:
                if isinstance(exc, errors.DatabaseError):  # /health says so for a while
                    api.database_trouble.note(exc)
                    log.error("%s %s: %s", request.method, request.url.path, exc.message)
                return spool_error_response(exc)

        endpoint.__name__ = handler.__name__
        endpoint.__doc__ = handler.__doc__
        return endpoint

    return wrap
