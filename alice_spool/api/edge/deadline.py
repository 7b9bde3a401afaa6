"""A deadline for a request's head: a client that sends its request line and headers
slowly (a byte at a time, say) is cut off after `server.header_timeout_s`, instead of
holding a connection forever. uvicorn's HTTP/1.1 protocol, with a timer: armed when a
connection opens and again after each answer, cancelled once a request's head is whole.

It also answers a request too broken to parse (a garbled request line, a bad header) as
every other error is answered: this API's JSON error body with the security headers,
instead of uvicorn's plain text."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

# What every answer carries (headers.py adds them to the app's); no page here to frame.
BROKEN_REQUEST_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
]


class HeadDeadline(H11Protocol):
    head_timeout_s = 10.0

    @classmethod
    def after(cls, seconds: float) -> type[HeadDeadline]:
        """This protocol with its deadline set (uvicorn makes one per connection)."""
        return type("HeadDeadline", (cls,), {"head_timeout_s": seconds})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_due: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._head_due = self.loop.call_later(self.head_timeout_s, self._head_late)

    def _disarm(self) -> None:
        due = getattr(self, "_head_due", None)
        if due is not None:
            due.cancel()
            self._head_due = None

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a request's head has come whole
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection has its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 cannot parse, as JSON."""
        body = json.dumps(
            {
                "error": {
                    "message": f"the request cannot be read as HTTP/1.1: {msg}",
                    "type": "invalid_request_error",
                    "code": "invalid_request",
                }
            }
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *BROKEN_REQUEST_HEADERS,
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def _head_late(self) -> None:
        self._head_due = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.info("%s did not send a request's head within %g s", client, self.head_timeout_s)
            self.transport.close()


def http_protocol(header_timeout_s: float) -> Any:
    return HeadDeadline.after(header_timeout_s)
