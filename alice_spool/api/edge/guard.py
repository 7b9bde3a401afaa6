"""What a browser could be made to send on a user's behalf is refused before any route
runs (an ASGI middleware):

- a Host that is not this server's name (DNS rebinding: a page whose name resolves to
  127.0.0.1 would otherwise read and write through the user's browser). A server bound to
  a loopback address answers only to loopback names and `server.public_url`'s host;
  `server.allowed_hosts` names more, or lets a server bound elsewhere answer to fewer;
- a state change (POST, PUT, PATCH, DELETE) from another origin than this one or one in
  `server.cors_origins` (its `Origin`, or `Sec-Fetch-Site: cross-site` without one);
- a state change whose body is not JSON by its Content-Type (HTML forms and no-preflight
  requests send form-urlencoded, multipart or text/plain). A body without a Content-Type
  is taken: scripts and apps send those, and a browser sends `Origin` with them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from ... import errors
from .errors import spool_error_response

UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _hostname(value: str) -> str:
    """`name[:port]` or `[v6]:port` -> the name, lower-case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def allowed_hosts(bind_host: str, public_url: str, configured: Iterable[str]) -> frozenset[str]:
    """The Host names this server answers to; empty: any."""
    names = {name.lower() for name in configured}
    if public_url:
        names.add((urlsplit(public_url).hostname or "").lower())
    if names or bind_host in LOOPBACK_NAMES:
        return frozenset(names | LOOPBACK_NAMES)
    return frozenset()  # bound to every address (or a LAN one), nothing configured


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and "+json" in media)


class RequestGuard:
    def __init__(
        self,
        app: Any,
        *,
        bind_host: str,
        public_url: str = "",
        allowed: Iterable[str] = (),
        cors_origins: Iterable[str] = (),
        multipart: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.hosts = allowed_hosts(bind_host, public_url, allowed)
        self.origins = {origin.rstrip("/").lower() for origin in cors_origins}
        self.multipart = frozenset(multipart)  # routes whose clients upload files

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith("//"):
            # A client's base URL with a trailing slash (`http://host:port/`) asks for
            # `//sdapi/v1/...`: the same path with one slash.
            scope = {**scope, "path": "/" + scope["path"].lstrip("/")}
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                await spool_error_response(refusal)(scope, receive, send)
                return
        if scope["type"] == "websocket" and self.refusal({**scope, "method": "WEBSOCKET"}):
            await send({"type": "websocket.close", "code": 1008})  # another host or site
            return
        await self.app(scope, receive, send)

    def refusal(self, scope: dict[str, Any]) -> errors.SpoolError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if self.hosts and _hostname(host) not in self.hosts:
            return errors.InvalidHost(
                f"this server does not answer to the name {host!r} (server.allowed_hosts)"
            )
        if scope["method"] not in UNSAFE | {"WEBSOCKET"}:
            return None
        origin = headers.get("origin")
        if origin is not None:
            same = urlsplit(origin).netloc.lower() == host.lower() and origin != "null"
            if not same and origin.rstrip("/").lower() not in self.origins:
                return errors.CrossOriginRefused(
                    f"a change requested from {origin!r}, another site (server.cors_origins)"
                )
        elif headers.get("sec-fetch-site") == "cross-site":
            return errors.CrossOriginRefused("a change requested from another site")
        if scope["method"] == "WEBSOCKET":
            return None  # no body to check
        content_type = headers.get("content-type")
        media = (content_type or "").split(";", 1)[0].strip().lower()
        if scope["path"] in self.multipart and media == "multipart/form-data":
            return None  # OpenAI's shape for uploads; the site checks above still hold
        if content_type is not None and not _is_json(content_type):
            return errors.UnsupportedMediaType(
                f"the request body must be JSON (Content-Type: application/json), "
                f"not {content_type.split(';', 1)[0]!r}"
            )
        return None
