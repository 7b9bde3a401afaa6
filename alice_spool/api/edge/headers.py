"""Security headers on every answer (an ASGI middleware, so streams get them too): no
content sniffing, no framing, no referrer, and a strict Content-Security-Policy (the web
UI runs no inline script and loads nothing from elsewhere)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .errors import error_response

Scope = dict[str, Any]
Receive = Any
Send = Any


def content_security_policy(public_url: str = "") -> str:
    """The policy for every answer. Images may also come from `server.public_url`'s
    origin when it is set (image URLs are built from it)."""
    images = ["'self'", "data:", "blob:"]
    if public_url:
        parts = urlsplit(public_url)
        images.append(f"{parts.scheme}://{parts.netloc}")
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src {' '.join(images)}",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


# The codes of the plain-text errors Starlette answers by itself, by status.
_PLAIN_CODES = {
    400: "invalid_request",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    416: "range_not_satisfiable",
}


class SecurityHeaders:
    """One pass over every answer's start:

    - adds the security headers it does not set itself (a page with a policy of its own,
      like /docs, keeps it);
    - makes the errors Starlette's own parts answer in plain text (a refused CORS
      preflight, a bad or unsatisfiable Range on an image or web file) this API's JSON
      error body, with the same status and headers. (A request line too broken to reach
      the app is answered by the HTTP protocol, deadline.py, in the same shape.)"""

    def __init__(self, app: Any, *, public_url: str = "") -> None:
        self.app = app
        self.headers = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
            (b"content-security-policy", content_security_policy(public_url).encode()),
        ]

    def _secured(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        present = {name.lower() for name, _ in headers}
        return headers + [(k, v) for k, v in self.headers if k not in present]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] | None = None  # a plain-text error's start, until its body
        body = bytearray()

        async def shaped(message: dict[str, Any]) -> None:
            nonlocal held
            kind = message["type"]
            if kind == "http.response.start":
                headers = list(message.get("headers", []))
                plain = dict(headers).get(b"content-type", b"").startswith(b"text/plain")
                if message["status"] >= 400 and plain:
                    held = message
                    return
                await send({**message, "headers": self._secured(headers)})
            elif held is not None and kind == "http.response.body":
                body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    await self._send_json(held, bytes(body), send)
            else:
                await send(message)

        await self.app(scope, receive, shaped)

    async def _send_json(self, start: dict[str, Any], text: bytes, send: Send) -> None:
        status = start["status"]
        message = text.decode("utf-8", "replace").strip() or "the request was refused"
        response = error_response(
            _PLAIN_CODES.get(status, "invalid_request"), message, status=status
        )
        keep = [
            (name, value)
            for name, value in start.get("headers", [])
            if name.lower() not in (b"content-type", b"content-length")
        ]
        headers = self._secured(keep + [(k, v) for k, v in response.raw_headers])
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})
