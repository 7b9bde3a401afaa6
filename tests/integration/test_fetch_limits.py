"""Image URL fetches against a server on 127.0.0.1 that sends its body a byte at a
time, each well within a read's timeout: a whole fetch ends at `models.fetch_timeout_s`
however the bytes trickle, one client gets `models.max_fetches_per_client` fetches at
once (429 beyond), and while dozens hang, another client's requests are answered at
once (the hanging fetches do not hold the threads other routes run in)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from alice_spool import urls
from alice_spool.errors import InvalidParameters
from tests.support import bare as bare_server
from tests.support.bare import Bare
from tests.support.live_server import wait_until

make_bare = bare_server.make_bare  # the in-process server's fixture, used here
BYTE_EVERY_S = 0.5
KEYS = {"slow": "k-slow", "other": "k-other"}


@dataclass
class Trickle:
    """`/slow.png` answers at once and then sends a byte every BYTE_EVERY_S (for 20 s
    at most, so that nothing outlives the test); `/hop` redirects to it."""

    port: int = 0
    every_s: float = BYTE_EVERY_S
    opened: int = 0  # connections that asked for /slow.png
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def trickle() -> Iterator[Trickle]:
    state = Trickle()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            if self.path == "/hop":
                self.send_response(302)
                self.send_header("Location", "/slow.png")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            with state.lock:
                state.opened += 1
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(int(20 / state.every_s)):
                    self.wfile.write(b"\x89")
                    self.wfile.flush()
                    if state.stop.wait(state.every_s):
                        return
            except OSError:  # the client gave up
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_whole_fetch_ends_at_its_deadline_however_the_body_trickles(trickle: Trickle) -> None:
    """Each read is quick (a byte every half second, well within a read's timeout), so
    only a deadline on the whole fetch, redirect included, ends it."""
    rules = urls.UrlRules(allow_private=True)
    for path in ("/slow.png", "/hop"):
        started = time.monotonic()
        with pytest.raises(InvalidParameters, match=r"took longer than 1\.5 s") as info:
            urls.fetch(trickle.url + path, rules, max_bytes=10_000, field="f", timeout_s=1.5)
        assert info.value.field == "f"
        assert 1.5 <= time.monotonic() - started < 1.5 + BYTE_EVERY_S + 1


def test_a_read_that_began_before_the_deadline_ends_at_it(trickle: Trickle) -> None:
    """A byte every 3 s and 4 s in all: the read that starts at 3 s would wait until 6 s
    for its byte (within a read's own timeout); the fetch is cut at 4 s."""
    trickle.every_s = 3.0
    started = time.monotonic()
    with pytest.raises(InvalidParameters, match=r"took longer than 4 s"):
        urls.fetch(
            trickle.url + "/slow.png",
            urls.UrlRules(allow_private=True),
            max_bytes=10_000,
            field="f",
            timeout_s=4,
        )
    assert 4 <= time.monotonic() - started < 5


def post_jobs(bare: Bare, key: str, url: str, count: int) -> list[httpx.Response]:
    """`count` jobs with `input_image_urls`, sent at once; their answers."""
    body = {"prompt": "a boat", "input_image_urls": [url]}
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=count)
    with httpx.Client(base_url=bare.url, timeout=30, limits=limits) as http:

        def post(_: int) -> httpx.Response:
            return http.post("/v1/jobs", json=body, headers=headers)

        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(post, range(count)))


def server(make_bare: Callable[..., Bare], **models: str) -> Bare:
    return make_bare(
        **{
            "server.api_keys": KEYS,
            "models.allow_private_urls": "true",  # the slow server is on loopback
            **{f"models.{key}": value for key, value in models.items()},
        }
    )


def test_one_client_gets_its_cap_of_fetches_at_once_and_429_beyond(
    make_bare: Callable[..., Bare], trickle: Trickle
) -> None:
    bare = server(make_bare, max_fetches_per_client="4", fetch_timeout_s="2.5")
    started = time.monotonic()
    answers = post_jobs(bare, KEYS["slow"], f"{trickle.url}/slow.png", 12)
    took = time.monotonic() - started
    codes = sorted(a.status_code for a in answers)
    assert codes == [400] * 4 + [429] * 8, [a.text for a in answers]
    for answer in answers:
        error = answer.json()["error"]
        if answer.status_code == 429:
            assert error["code"] == "rate_limit_exceeded"
            assert "models.max_fetches_per_client" in error["message"]
        else:
            assert (error["code"], error["param"]) == ("invalid_parameters", "input_image_urls")
            assert "took longer than 2.5 s" in error["message"]
    assert trickle.opened == 4
    assert took < 2.5 + BYTE_EVERY_S + 2  # the deadline, not the slow server's 20 s
    # Slots are given back: the next fetch is allowed again (and ends at its deadline).
    again = post_jobs(bare, KEYS["slow"], f"{trickle.url}/slow.png", 1)
    assert again[0].status_code == 400 and trickle.opened == 5


def test_hanging_fetches_never_hold_the_threads_another_clients_requests_need(
    make_bare: Callable[..., Bare], trickle: Trickle
) -> None:
    """45 fetches hanging at once (more than the 40 worker threads other routes share):
    another key's /health and job list still answer within a second."""
    bare = server(make_bare, max_fetches_per_client="64", fetch_timeout_s="5")
    results: list[list[httpx.Response]] = []
    sender = threading.Thread(
        target=lambda: results.append(post_jobs(bare, KEYS["slow"], f"{trickle.url}/slow.png", 45))
    )
    sender.start()
    try:
        wait_until(lambda: trickle.opened >= 40, timeout=4)
        headers = {"Authorization": f"Bearer {KEYS['other']}"}
        for path in ("/health", "/v1/jobs"):
            started = time.monotonic()
            answer = httpx.get(bare.url + path, headers=headers, timeout=10)
            assert answer.status_code == 200, answer.text
            assert time.monotonic() - started < 1.0, path
        # Every fetch got going (none waited for a thread) before the first one ended.
        wait_until(lambda: trickle.opened >= 45, timeout=2)
    finally:
        sender.join(30)
    assert sorted(a.status_code for a in results[0]) == [400] * 45
