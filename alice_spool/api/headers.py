"""Security headers on every answer (an ASGI middleware, so streams get them too): no
content sniffing, no framing, no referrer, and a strict Content-Security-Policy (the web
UI runs no inline script and loads nothing from elsewhere)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

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


class SecurityHeaders:
    """Adds the headers an answer does not set itself (a page with a policy of its own,
    like /docs, keeps it)."""

    def __init__(self, app: Any, *, public_url: str = "") -> None:
        self.app = app
        self.headers = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
            (b"content-security-policy", content_security_policy(public_url).encode()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in self.headers if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
