"""The API's edge: request bodies read within their size limit and parsed without ever
a 500, API keys, and waiting for jobs without holding a thread."""

from __future__ import annotations

import asyncio
import base64
import hmac
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, HTTPConnection, Request

from ... import errors
from ...records import JobRecord
from ...spec import load_json
from ...store import Store
from ...store.changes import WAKE_AT_LEAST_S, Subscription
from ...store.keys import digest


async def read_json(request: Request, max_bytes: int, timeout_s: float = 30.0) -> Any:
    """The request's JSON body: 413 over `max_bytes` (counted as it arrives, whatever
    Content-Length says), 400 for anything that is not JSON or nests too deeply (a
    deep value that parses is refused later: no request field takes nested lists)."""
    body = await read_bytes(request, max_bytes, timeout_s)
    if not body:
        raise errors.InvalidJson("the request has no body; send a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.InvalidJson("the request body is not UTF-8") from None
    try:
        return load_json(text)
    except ValueError as exc:
        raise errors.InvalidJson(f"the request body: {exc}") from None


async def read_bytes(request: Request, max_bytes: int, timeout_s: float = 30.0) -> bytes:
    """The request's body: 413 over `max_bytes`, counted as it arrives; 408 when it
    comes too slowly; a client gone midway is `client_disconnected`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise errors.BodyTooLarge(f"the request body is over {max_bytes} bytes")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):  # a body sent slowly holds a connection
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_bytes:
                    raise errors.BodyTooLarge(f"the request body is over {max_bytes} bytes")
    except TimeoutError:
        raise errors.RequestTimeout(
            f"the request body did not arrive within {timeout_s:g} s (server.body_timeout_s)"
        ) from None
    except ClientDisconnect:
        raise errors.ClientDisconnected(
            f"the client went away after {len(body)} bytes of the request body"
        ) from None
    return bytes(body)


def require_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise errors.InvalidParameters("the request body must be a JSON object")
    return data


def typed(body: dict[str, Any], key: str, kinds: type | tuple[type, ...]) -> Any:
    """`body[key]` if it is absent, null or of one of `kinds` (a JSON true is not an
    integer, 3.0 is; a string is text, not a lone surrogate); else 400 naming the field."""
    value = body.get(key)
    allowed = kinds if isinstance(kinds, tuple) else (kinds,)
    if int in allowed and isinstance(value, float) and value.is_integer():
        return int(value)  # 3.0 is an integer to JSON Schema, and to us
    if value is not None and (
        not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)
    ):
        raise errors.InvalidParameters(f"{key} has the wrong type", field=key)
    if isinstance(value, str) and not _is_text(value):
        raise errors.InvalidParameters(
            f"{key} is not text: it holds a lone surrogate (\\ud800-\\udfff)", field=key
        )
    return value


def _is_text(value: str) -> bool:
    """Whether a string is Unicode text: JSON lets a client escape half of a surrogate
    pair, which no database, hash or answer can encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def bounded(
    body: dict[str, Any], key: str, default: float | None, low: float, high: float, *, whole: bool
) -> Any:
    """`body[key]` (or `default` when absent or null) if it is a number in low..high, a
    whole one if `whole` (3.0 counts); else 400 naming the field (a dialect's limits)."""
    value = typed(body, key, int if whole else (int, float))
    if value is None:
        return default
    if not low <= value <= high:
        kind = "a whole number " if whole else ""
        raise errors.InvalidParameters(f"{key} must be {kind}{low:g}..{high:g}", field=key)
    return value


def refuse_unknown(body: dict[str, Any], allowed: set[str]) -> None:
    """400 naming the first field a dialect does not take (typos never pass silently)."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise errors.InvalidParameters(f"unknown field {unknown[0]!r}", field=unknown[0])


def _basic_password(token: str) -> str:
    """The password of HTTP basic credentials (any user name)."""
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise errors.Unauthorized("the Basic credentials are not base64 of user:password") from None
    _user, colon, password = decoded.partition(":")
    if not colon:
        raise errors.Unauthorized("the Basic credentials are not base64 of user:password")
    return password


SESSION_COOKIE = "alice_session"


@dataclass(frozen=True)
class Principal:
    """Who a request is: a key's name and role (a configured key is an admin's)."""

    name: str
    role: str  # admin | user
    key_id: str | None = None  # None: a key of [server.api_keys]
    rate_limit_per_minute: int | None = None  # None: server.rate_limit_per_minute
    key_sha256: str | None = None  # the key's SHA-256, which a session opened with it keeps

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    @property
    def owner(self) -> str:
        """What the rows this key makes record as their owner: a stored key's id (its
        name may be taken again after it is deleted), or a configured key's name."""
        return self.key_id if self.key_id is not None else f"config:{self.name}"

    @property
    def bucket(self) -> str:
        """Whose rate limit and stream slots the request spends: the key's own (a stored
        key's id; a configured key's name and hash), never a name that another key
        could have had (a deleted key's, or one that once clashed with a configured one)."""
        if self.key_id is not None:
            return f"key:{self.key_id}"
        return f"config:{self.name}:{(self.key_sha256 or '')[:16]}"


class Keys:
    """The API keys: those configured (admins, compared in constant time) and those in
    the database (looked up by SHA-256). None anywhere: the server is open."""

    def __init__(
        self,
        keys: Mapping[str, str],
        store: Store | None = None,
        *,
        recheck_s: float = 2.0,
        session_idle_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session_idle_s = session_idle_s
        self._keys = [(name, key.encode()) for name, key in keys.items()]
        # What a configured key's web session is checked against on each use.
        self._configured = {name: digest(key) for name, key in keys.items()}
        self.store = store
        self.recheck_s = recheck_s
        self.clock = clock
        self._stored: tuple[float, bool] | None = None  # (checked at, any keys)
        self._touched: dict[str, float] = {}

    @property
    def required(self) -> bool:
        """Whether a key is needed: once any exists, configured or stored (looked at
        again every `recheck_s`, so the first `keys add` closes a running server)."""
        if self._keys:
            return True
        if self.store is None:
            return False
        now = self.clock()
        if self._stored is None or now - self._stored[0] >= self.recheck_s:
            self._stored = (now, self.store.keys.any_keys())
        return self._stored[1]

    def known_at_once(self, request: HTTPConnection) -> tuple[bool, Principal | None]:
        """(True, who) when `identify` would answer that without the database: an open
        server whose keys were looked for lately, or a configured key given as the only
        credential. (False, None) otherwise: ask `identify` in a worker thread."""
        if not self._keys:
            stored = self._stored
            fresh = stored is not None and self.clock() - stored[0] < self.recheck_s
            if self.store is None or (fresh and stored is not None and not stored[1]):
                return True, None
            return False, None
        headers = request.headers
        given = headers.get("x-api-key")
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or given is not None:
                return False, None
            given = token.strip()
        if not given:
            return False, None
        offered = given.encode("utf-8", "surrogatepass")
        found = None
        for name, key in self._keys:  # every key compared, as `principal` does
            if hmac.compare_digest(offered, key):
                found = name
        if found is None:
            return False, None  # perhaps a stored key: the database says
        return True, Principal(found, "admin", key_sha256=self._configured[found])

    def identify(self, request: HTTPConnection) -> Principal | None:
        """Who the request's key is; None when keys are off. 401 when they are on and
        the request has none, a wrong or revoked one, or two that differ."""
        if not self.required:
            return None
        given = request.headers.get("x-api-key")
        authorization = request.headers.get("authorization")
        if authorization is not None:  # every credential a request carries must be right
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() == "basic":  # AUTOMATIC1111's clients: the key is the password
                token = _basic_password(token)
            elif scheme.lower() != "bearer":
                raise errors.Unauthorized(
                    "Authorization must be Bearer followed by an API key (or Basic, with the "
                    "key as the password)"
                )
            if given is not None and given != token.strip():  # which one is meant? neither
                raise errors.Unauthorized(
                    "the request carries two different API keys (Authorization and X-Api-Key)"
                )
            given = token.strip()
        if not given:
            cookie = request.cookies.get(SESSION_COOKIE)
            if cookie and self.store is not None:
                return self._from_session(request, cookie)
            raise errors.Unauthorized("an API key is required (Authorization: Bearer or X-Api-Key)")
        return self.principal(given)

    def _from_session(self, request: HTTPConnection, cookie: str) -> Principal:
        """A web session's principal. A change it asks for must come from this server's
        own pages: an `Origin` (or, without one, a `Referer`) of this very host."""
        assert self.store is not None
        found = self.store.keys.session(
            cookie, idle_s=self.session_idle_s, configured=self._configured
        )
        if found is None:
            raise errors.Unauthorized("the session has ended: log in again")
        # A WebSocket (which has no method) is held to the same rule as a change.
        if request.scope.get("method", "WEBSOCKET") not in ("GET", "HEAD", "OPTIONS"):
            source = request.headers.get("origin") or request.headers.get("referer") or ""
            host = request.headers.get("host", "").lower()
            if not source or urlsplit(source).netloc.lower() != host:
                raise errors.CrossOriginRefused(
                    "a change asked with a session cookie must come from this server's pages"
                )
        return Principal(
            found.name, found.role, found.key_id, found.rate_limit_per_minute, found.key_sha256
        )

    def principal(self, given: str) -> Principal:
        """Whose key `given` is; 401 if nobody's (or revoked)."""
        offered = given.encode("utf-8", "surrogatepass")  # a lone surrogate matches nothing
        found = None
        for name, key in self._keys:  # every key compared, so timing tells nothing
            if hmac.compare_digest(offered, key):
                found = name
        if found is not None:
            return Principal(found, "admin", key_sha256=self._configured[found])
        store = self.store
        stored = store.keys.key_for_secret(given) if store is not None else None
        if store is None or stored is None:
            raise errors.Unauthorized("the API key is not valid")
        if not stored.enabled:
            raise errors.Unauthorized("the API key was revoked")
        now = self.clock()
        if now - self._touched.get(stored.id, -1e9) >= 60:  # the row: at most once a minute
            self._touched[stored.id] = now
            store.keys.touch_key(stored.id)
        return Principal(
            stored.name, stored.role, stored.id, stored.rate_limit_per_minute, digest(given)
        )


async def wait_for_job(store: Store, job_id: str, timeout_s: float) -> JobRecord:
    """The job once it finishes (or `timeout` is raised): read again only when the
    process's watcher says it changed, waiting without holding a worker thread."""
    deadline = time.monotonic() + timeout_s
    with watching(store, jobs=[job_id]) as changes:
        while True:
            job = await run_in_threadpool(store.jobs.get, job_id)
            if job.finished:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                raise errors.JobTimeout(
                    f"job {job_id} did not finish within {timeout_s:g} s; it is still "
                    f"{job.status.value} and can be fetched at /v1/jobs/{job_id}",
                    job_id=job_id,
                )
            await changes.wait_async(min(left, WAKE_AT_LEAST_S))


def watching(
    store: Store, *, jobs: Iterable[str] = (), downloads: Iterable[str] = ()
) -> Subscription:
    """A subscription to the process's watcher (store.changes) for a coroutine: enter
    it before the first read, then `await changes.wait_async(...)` between reads."""
    return store.changes.watch(jobs=jobs, downloads=downloads, loop=asyncio.get_running_loop())
