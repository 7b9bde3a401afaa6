"""What every route shares, and the wrapper that makes a function a route: API key,
rate limit, and every `SpoolError` turned into its HTTP answer."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from ... import __version__, errors
from ...config import Settings
from ...downloads.sources import SourceSettings
from ...library.registry import ModelRegistry
from ...records import DownloadRecord, JobRecord
from ...spec import check_priority_cap
from ...states import JobStatus
from ...store import Store
from . import fetching
from .contract import Contract, ErrorBody, SchemaSource, query_of, validated
from .errors import spool_error_response, status_of
from .http import (
    SESSION_COOKIE,
    Keys,
    Principal,
    read_json,
)
from .limits import RateLimiter, Slots, stream_slots
from .services import ImageFiles, Submissions, image_url

log = logging.getLogger(__name__)

FORWARDED_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


@dataclass
class Api:
    """The app's state, as every route sees it: its parts (settings, store, models,
    keys and limits), the services a route asks things of (`submissions`,
    `image_files`), and what depends on the request (who may see a job, where the
    request came from, how a job is shown to it)."""

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
    streams: Slots = field(default_factory=lambda: stream_slots(8))
    fetches: Slots = field(default_factory=lambda: fetching.fetch_slots(4))
    open_sockets: int = 0  # WebSockets open now (server.max_connections holds them too)
    # What the routes ask of the server apart from the request (services.py).
    submissions: Submissions = field(init=False)
    image_files: ImageFiles = field(init=False)

    def __post_init__(self) -> None:
        self.submissions = Submissions(self.settings, self.store, self.registry, self.fetches)
        self.image_files = ImageFiles(self.store, self.outbox)

    @property
    def sources(self) -> SourceSettings:
        """The model sources' endpoints and tokens."""
        return SourceSettings.from_settings(self.settings)

    async def read_body(self, request: Request, *, images: bool = False) -> Any:
        """The request's JSON body, within this server's size and time limits (the
        larger `server.max_image_body_bytes` for a route whose requests carry images)."""
        server = self.settings.server
        limit = server.max_image_body_bytes if images else server.max_body_bytes
        return await read_json(request, limit, server.body_timeout_s)

    def visible_job(self, request: Request, job_id: str) -> JobRecord:
        """The job, if this request may see it; another owner's is `not_found`, exactly
        as a job that does not exist (ids must not be probeable). In a worker thread."""
        scope = scope_of(request)
        try:
            job = self.store.jobs.get(job_id)
        except errors.JobNotFound:
            job = self._job_by_chosen_id(request, job_id)
        if scope is not None and job.owner != scope:
            raise errors.JobNotFound(f"no job {job_id}", job_id=job_id)
        return job

    def _job_by_chosen_id(self, request: Request, key: str) -> JobRecord:
        """The job this request's owner queued under the id it chose (an idempotency
        key); an admin's key also finds the inbox's and the CLI's. Another owner's is
        not found: the same words are another key."""
        owner = owner_of(request)
        principal = principal_of(request)
        owners = [owner]
        if owner is not None and (principal is None or principal.admin):
            owners.append(None)
        for candidate in owners:
            with contextlib.suppress(errors.JobNotFound):
                return self.store.jobs.get_by_key(candidate, key)
        raise errors.JobNotFound(f"no job {key}", job_id=key)

    def visible_download(self, request: Request, download_id: str) -> DownloadRecord:
        """`visible_job` for a download."""
        found = self.store.downloads.get_download(download_id)
        scope = scope_of(request)
        if scope is not None and found.owner != scope:
            raise errors.DownloadNotFound(f"no download {download_id}", download_id=download_id)
        return found

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

    def client_address(self, request: HTTPConnection) -> str:
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

    def _via_trusted_proxy(self, request: HTTPConnection) -> bool:
        peer = request.client.host if request.client else None
        return peer is not None and peer in self.settings.server.trusted_proxies

    def image_urls(self, request: Request, job: JobRecord) -> list[str]:
        if job.status is not JobStatus.SUCCEEDED:
            return []  # only a succeeded job's directory holds images
        if job.images_expired_at is not None:
            return []  # retention deleted them; the job says when (images_expired_at)
        images = (job.result or {}).get("images") or []
        base = self.base_url(request)
        return [
            image_url(base, image["file"], job.image_secret)
            for image in images
            if "file" in image and not image.get("deleted")  # deleted from the gallery
        ]

    def job_view(self, request: Request, job: JobRecord) -> dict[str, Any]:
        view = job.to_dict()
        view["object"] = "job"
        view["image_urls"] = self.image_urls(request, job)
        return view


Handler = Callable[..., Awaitable[Response]]  # (request, api, client, **given)


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


def identify(api: Api, request: HTTPConnection, address: str) -> Principal | None:
    """Whose key the request carries. An address that failed too often is refused for
    a while (429), whatever key it sends now, so that keys cannot be guessed at speed."""
    api.auth_failures.check(address, spend=False)
    try:
        return api.keys.identify(request)
    except errors.Unauthorized:
        with contextlib.suppress(errors.RateLimited):
            api.auth_failures.check(address)  # one failure spent
        raise


async def admit(
    api: Api, connection: HTTPConnection, *, admin: bool = False, manage: bool = False
) -> Principal | None:
    """Who the request or WebSocket is, once it has passed the doors every route has:
    its key (401), its rate limit (429), and, for `admin` or `manage` routes, its role
    (403). Recorded as the connection's principal; None on an open server."""
    address = api.client_address(connection)
    known, principal = api.keys.known_at_once(connection)
    if known:
        api.auth_failures.check(address, spend=False)  # as `identify` does first
    else:
        principal = await run_in_threadpool(identify, api, connection, address)
    connection.state.principal = principal
    fetching.fetching_for.set(principal.bucket if principal else address)
    limit = principal.rate_limit_per_minute if principal else None
    api.limiter.check(principal.bucket if principal else address, per_minute=limit)
    if manage and principal is not None and not principal.admin:
        raise errors.Forbidden("an admin's API key is needed")
    if admin and (principal is None or not principal.admin):
        raise errors.Forbidden(
            "an admin's API key is needed"
            if principal is not None
            else "this server has no API keys yet: make the first one "
            "with `alice-spool keys add NAME --admin`"
        )
    return principal


async def sees_everything(api: Api, request: Request) -> bool:
    """Whether an open route (`/health`) may show what only an admin sees: which jobs
    run, the runners' lease tokens. Yes for an admin's key or session, and on an open
    server (one user, local: its job list is open too); no for anyone else. A key that
    is wrong, or an address refused for guessing, makes it an anonymous request here
    (an open route still answers), and a wrong key still counts as a guess."""
    if not await run_in_threadpool(lambda: api.keys.required):
        return True
    headers = request.headers
    if not (
        "authorization" in headers or "x-api-key" in headers or SESSION_COOKIE in request.cookies
    ):
        return False  # nothing to check: not a failed guess (a health checker polls)
    try:
        principal = await run_in_threadpool(identify, api, request, api.client_address(request))
    except (errors.Unauthorized, errors.RateLimited):
        return False
    return principal is not None and principal.admin


def principal_of(request: HTTPConnection) -> Principal | None:
    """Who the request is (set by `route`); None on an open server or an open route."""
    return getattr(request.state, "principal", None)


def bucket_of(api: Api, connection: HTTPConnection) -> str:
    """Whose stream slots (and rate limit) a request spends: its key's, by the key's
    id (`Principal.bucket`), never by a name; without a key, its address's."""
    principal = getattr(connection.state, "principal", None)
    return principal.bucket if principal is not None else api.client_address(connection)


def owner_of(request: HTTPConnection) -> str | None:
    """The owner the rows this request makes record (None: the admin's, on an open
    server)."""
    principal = principal_of(request)
    return principal.owner if principal is not None else None


def scope_of(request: HTTPConnection) -> str | None:
    """The owner whose jobs, downloads and images this request may see and steer; None:
    everyone's (an admin's key, or an open server: one user)."""
    principal = principal_of(request)
    if principal is None or principal.admin:
        return None
    return principal.owner


def check_priority(request: HTTPConnection, priority: int) -> None:
    """A user's key may set a priority up to `users.max_priority` (400 naming `priority`
    above it); an admin's key, or anyone on an open server, any priority."""
    principal = principal_of(request)
    if principal is None or principal.admin:
        return
    api: Api = request.app.state.api
    check_priority_cap(priority, api.settings.users.max_priority)


class Shape(Protocol):
    """How a dialect answers an error: its body (`error_answer`) and that body's
    schema (`error_model`), for its routes' description."""

    @property
    def error_model(self) -> SchemaSource: ...

    def status(self, exc: errors.SpoolError) -> int: ...

    def error_answer(self, exc: errors.SpoolError) -> Response: ...


def route(
    *,
    auth: bool = True,
    admin: bool = False,
    manage: bool = False,
    shape: Shape | None = None,
    contract: Contract | None = None,
) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Make `handler(request, api, client)` a Starlette endpoint. `client` is the name of
    the API key used (None when keys are off, or for open routes); who it is, with its
    role, is `principal_of(request)`. `admin`: only an admin's key (403 for a user's,
    and on an open server too: no key is ever made over HTTP without one). `manage`:
    the server's own things (deleting models, the default model): 403 for a user's key;
    anyone on an open server (one user, local). `shape`: how a dialect answers an
    error (its own body), instead of `{"error": {message, type, code}}`. `contract`:
    what the route takes and answers; its query (and its body, where it `takes_body`)
    is validated here, after the key, and handed to the handler as `query=`/`body=`."""
    answer_error = shape.error_answer if shape is not None else spool_error_response
    terms = contract or Contract()

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            api: Api = request.app.state.api
            try:
                client = None
                if auth:
                    principal = await admit(api, request, admin=admin, manage=manage)
                    client = principal.name if principal else None
                given: dict[str, Any] = {}
                if terms.query is not None:
                    given["query"] = query_of(terms.query, request.query_params)
                if terms.takes_body is not None:
                    given["body"] = validated(terms.takes_body, await api.read_body(request))
                return await handler(request, api, client, **given)
            except errors.ClientDisconnected as exc:  # nobody to answer: one line, no trace
                log.info("%s %s: %s", request.method, request.url.path, exc.message)
                return Response(status_code=400)
            except errors.SpoolError as exc:
                if isinstance(exc, errors.DatabaseError):  # /health says so for a while
                    api.database_trouble.note(exc)
                    log.error("%s %s: %s", request.method, request.url.path, exc.message)
                return answer_error(exc)

        endpoint.__name__ = handler.__name__
        endpoint.__doc__ = handler.__doc__
        endpoint.needs_key = auth  # type: ignore[attr-defined]  # for /openapi.json
        endpoint.admin_only = admin  # type: ignore[attr-defined]
        endpoint.manage_only = manage  # type: ignore[attr-defined]
        endpoint.contract = terms  # type: ignore[attr-defined]
        endpoint.error_model = (  # type: ignore[attr-defined]
            shape.error_model if shape is not None else ErrorBody
        )
        endpoint.error_status = (  # type: ignore[attr-defined]  # its dialect's statuses
            shape.status if shape is not None else status_of
        )
        return endpoint

    return wrap
