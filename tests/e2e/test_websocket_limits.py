"""The REST plan's WebSocket (`/stream/generate/txt2img`) held to the limits HTTP has,
on a real uvicorn with a real WebSocket client (no runner: jobs stay queued): the key's
rate limit, the stream slots (an open socket is a stream), the first message's deadline,
`server.max_connections`; and what is no request (JSON nested too deeply, a binary
frame, text that is no JSON, too much of it) answered with an error and a close code,
never a dropped connection."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import websockets.sync.client
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.bare import Bare
from tests.support.live_server import wait_until

PATH = "/stream/generate/txt2img"
REQUEST = json.dumps({"prompt": "a harbour", "num_inference_steps": 2, "model_id": "tiny"})


def socket_url(bare: Bare) -> str:
    return bare.url.replace("http://", "ws://") + PATH


def talk(
    bare: Bare, headers: dict[str, str], send: str | bytes | None = None
) -> tuple[list[dict[str, Any]], int | None]:
    """Connect, send `send` (if any), read every message until the server closes:
    (the messages, the close code it sent)."""
    with websockets.sync.client.connect(
        socket_url(bare), additional_headers=headers, open_timeout=10, max_size=None
    ) as socket:
        if send is not None:
            with contextlib.suppress(ConnectionClosed):  # refused before it was read
                socket.send(send)
        messages = []
        try:
            while True:
                messages.append(json.loads(socket.recv(timeout=15)))
        except ConnectionClosed as closed:
            return messages, closed.rcvd.code if closed.rcvd else None


def queue_and_leave(bare: Bare, headers: dict[str, str]) -> None:
    """Send a request and close: the job stays queued (as an HTTP request's does)."""
    with websockets.sync.client.connect(
        socket_url(bare), additional_headers=headers, open_timeout=10
    ) as socket:
        socket.send(REQUEST)
        with pytest.raises(TimeoutError):
            socket.recv(timeout=0.3)  # no runner: no progress comes


def user_key(bare: Bare, name: str = "pat", **options: Any) -> dict[str, str]:
    _, key = bare.store.keys.add_key(name, role="user", **options)
    return {"X-Api-Key": key}


def test_a_keys_rate_limit_holds_over_the_socket(make_bare: Callable[..., Bare]) -> None:
    bare = make_bare()
    headers = user_key(bare, rate_limit_per_minute=5)  # a burst of 5, then 1 every 12 s
    for _ in range(5):
        queue_and_leave(bare, headers)
    messages, code = talk(bare, headers, REQUEST)
    assert code == 1013  # try again later
    assert [(m["type"], m["code"]) for m in messages] == [("error", "rate_limit_exceeded")]
    assert "try again" in messages[0]["detail"]
    assert len(bare.store.jobs.list_jobs(limit=50).jobs) == 5  # the sixth was never queued
    over_http = httpx.get(bare.url + "/v1/jobs", headers=headers, timeout=10)
    assert over_http.status_code == 429  # one bucket for both


def test_an_open_socket_is_a_stream(make_bare: Callable[..., Bare]) -> None:
    """`server.max_streams_per_client` counts sockets with the SSE streams; a socket
    that closes gives its slot back at once."""
    bare = make_bare(**{"server.max_streams_per_client": 2})
    headers = user_key(bare)
    url = socket_url(bare)
    connect = websockets.sync.client.connect
    with connect(url, additional_headers=headers, open_timeout=10) as second:
        with connect(url, additional_headers=headers, open_timeout=10) as first:
            for socket in (first, second):
                socket.send(REQUEST)
            wait_until(lambda: len(bare.store.jobs.list_jobs(limit=50).jobs) == 2, timeout=10)
            messages, code = talk(bare, headers, REQUEST)
            assert code == 1013
            assert messages[0]["code"] == "rate_limit_exceeded"
            assert "max_streams_per_client" in messages[0]["detail"]
            job = bare.store.jobs.list_jobs(limit=50).jobs[0].id
            sse = httpx.get(f"{bare.url}/v1/jobs/{job}/events", headers=headers, timeout=10)
            assert sse.status_code == 429  # the sockets hold both slots
            assert len(bare.store.jobs.list_jobs(limit=50).jobs) == 2
            queue_and_leave(bare, user_key(bare, "lee"))  # another key's slots are its own

        def admitted() -> bool:  # the closed socket's slot is free again
            with connect(url, additional_headers=headers, open_timeout=10) as socket:
                socket.send(REQUEST)
                try:
                    return json.loads(socket.recv(timeout=0.5))["type"] != "error"
                except TimeoutError:
                    return True  # waiting for its job: admitted

        wait_until(admitted, timeout=10)


def test_a_silent_socket_is_closed_after_the_body_deadline(
    make_bare: Callable[..., Bare],
) -> None:
    bare = make_bare(**{"server.body_timeout_s": 0.5})
    started = time.monotonic()
    messages, code = talk(bare, {})
    assert time.monotonic() - started < 5
    assert code == 1008
    assert [(m["type"], m["code"]) for m in messages] == [("error", "request_timeout")]
    assert "server.body_timeout_s" in messages[0]["detail"]
    assert bare.store.jobs.list_jobs(limit=5).jobs == []


def test_max_connections_holds_for_sockets(make_bare: Callable[..., Bare]) -> None:
    bare = make_bare(**{"server.max_connections": 2})
    url = socket_url(bare)
    with contextlib.ExitStack() as held:
        for _ in range(2):
            held.enter_context(websockets.sync.client.connect(url, open_timeout=10))
        messages, code = talk(bare, {}, REQUEST)
        assert code == 1013
        assert "server.max_connections" in messages[0]["detail"]
    # Once they are gone, the next is taken (the server counts them as they close).
    wait_until(lambda: talk(bare, {}, "[")[1] == 1007, timeout=10)


def test_what_is_no_request_gets_an_error_and_a_close_code(
    make_bare: Callable[..., Bare],
) -> None:
    bare = make_bare(**{"server.max_body_bytes": 4096})
    cases: list[tuple[str | bytes, int, str]] = [
        ("[" * 100_000 + "]" * 100_000, 1009, "body_too_large"),  # over max_body_bytes
        ("[" * 2000 + "]" * 2000, 1007, "invalid_json"),  # deeper than the parser goes
        ("{not json", 1007, "invalid_json"),
        (b"\x89PNG\r\n", 1003, "invalid_json"),  # a binary frame
        ("[1, 2]", 1000, "invalid_parameters"),  # JSON, but no request
        ('{"prompt": ""}', 1000, "invalid_parameters"),
    ]
    for sent, expected_code, error in cases:
        messages, code = talk(bare, {}, sent)
        assert (code, [m["code"] for m in messages]) == (expected_code, [error]), sent[:20]
        assert messages[0]["type"] == "error" and messages[0]["detail"]
    deep = talk(bare, {}, "[" * 2000 + "]" * 2000)[0][0]["detail"]
    assert "nested too deeply" in deep
    assert bare.store.jobs.list_jobs(limit=5).jobs == []


def test_a_wrong_key_is_still_refused_at_the_handshake(make_bare: Callable[..., Bare]) -> None:
    bare = make_bare()
    user_key(bare)
    with pytest.raises(InvalidStatus) as refused:
        talk(bare, {"X-Api-Key": "not-a-key"}, REQUEST)
    assert refused.value.response.status_code == 403


def test_a_fault_of_the_servers_own_is_an_error_message_and_1011(
    make_bare: Callable[..., Bare],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Something the server did not expect (here a broken step, injected) still
    answers the client, with close code 1011, and leaves its trace in the log."""
    from alice_spool.api.dialects import restplan

    bare = make_bare()

    async def broken(*args: Any, **kwargs: Any) -> str:
        raise KeyError("a bug")

    monkeypatch.setattr(restplan, "_queue", broken)
    with caplog.at_level("ERROR", logger="alice_spool.api.dialects.restplan"):
        messages, code = talk(bare, {}, REQUEST)
    assert code == 1011
    assert messages == [
        {
            "type": "error",
            "detail": "internal error; see the server's log",
            "code": "internal_error",
        }
    ]
    assert "KeyError: 'a bug'" in caplog.text
