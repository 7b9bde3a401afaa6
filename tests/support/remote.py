"""A stand-in for a remote web server, on 127.0.0.1: real HTTP, real files, and the
misbehaviours the clients must survive (redirects, loops, errors, oversize and slow
bodies)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Remote:
    """What the server serves: `files` by path; `redirects` path -> Location."""

    files: dict[str, bytes] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    headers: dict[str, dict[str, str]] = field(default_factory=dict)  # extra, by path
    statuses: dict[str, int] = field(default_factory=dict)  # path -> an empty answer's code
    slow_s: float = 2.0  # how long /slow waits before answering
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Host)
    ranges: list[str | None] = field(default_factory=list)  # each file request's Range
    honour_ranges: bool = True  # as servers with a strong ETag do; False: always 200
    # path -> bytes: the next answer for it sends that many body bytes, then hangs up
    drop_after: dict[str, int] = field(default_factory=dict)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _handler(remote: Remote) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            remote.requests.append((path, self.headers.get("Host")))
            if path in remote.statuses:
                self.send_response(remote.statuses[path])
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path in remote.redirects:
                self.send_response(302)
                self.send_header("Location", remote.redirects[path])
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path in remote.files:
                self._file(path, remote.files[path])
            elif path == "/endless":  # no Content-Length: read until the cap
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                for _ in range(64):
                    self.wfile.write(b"\0" * 65536)
            elif path == "/slow":
                time.sleep(remote.slow_s)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def _file(self, path: str, body: bytes) -> None:
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            remote.ranges.append(self.headers.get("Range"))
            send_ranged(
                self,
                body,
                etag,
                honour_ranges=remote.honour_ranges,
                headers=remote.headers.get(path, {}),
                cut=remote.drop_after.pop(path, None),
            )

    return Handler


def send_ranged(
    handler: BaseHTTPRequestHandler,
    body: bytes,
    etag: str,
    *,
    honour_ranges: bool,
    headers: dict[str, str],
    cut: int | None = None,
    hold: threading.Event | None = None,
) -> None:
    """A file's answer as a server with a strong ETag gives it: 206 from the asked
    offset when `Range` (and `If-Range`, if sent) allow, else 200 and all of it; `cut`
    bytes and a hang-up, or `hold`: the first MiB, then a wait until it is set."""
    asked = handler.headers.get("Range")
    start = 0
    if asked and honour_ranges and handler.headers.get("If-Range") in (None, etag):
        start = int(asked.removeprefix("bytes=").split("-")[0])
    part = body[start:]
    handler.send_response(206 if start else 200)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.send_header("Content-Length", str(len(part)))
    handler.send_header("ETag", etag)
    handler.send_header("Accept-Ranges", "bytes")
    if start:
        handler.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.end_headers()
    if handler.command == "HEAD":
        return
    if cut is not None:  # hang up mid-body
        handler.wfile.write(part[:cut])
        handler.wfile.flush()
        handler.close_connection = True
        return
    if hold is not None and len(part) > 1 << 20:
        handler.wfile.write(part[: 1 << 20])
        handler.wfile.flush()
        hold.wait(60)
        part = part[1 << 20 :]
    handler.wfile.write(part)


@contextmanager
def serving(remote: Remote) -> Iterator[Remote]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(remote))
    server.daemon_threads = True
    remote.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield remote
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
