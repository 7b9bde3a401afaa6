"""A stand-in for a remote web server, on 127.0.0.1: real HTTP, real files, and the
misbehaviours the clients must survive (redirects, loops, errors, oversize and slow
bodies)."""

from __future__ import annotations

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
    slow_s: float = 2.0  # how long /slow waits before answering
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Host)
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
            if path in remote.redirects:
                self.send_response(302)
                self.send_header("Location", remote.redirects[path])
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path in remote.files:
                body = remote.files[path]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
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

    return Handler


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
