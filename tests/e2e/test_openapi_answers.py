"""/openapi.json documents the statuses the server really gives where it waits on
something else: the model searches' 502 when CivitAI or the Hub cannot be reached, and
each waiting route's timeout (504; GTX 1060's 408) when no runner finishes the job. Each
is provoked on a real server and looked up in its own document."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

import httpx
from PIL import Image

from tests.support.bare import Bare
from tests.support.live_server import free_port


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 90, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_statuses_of_searches_and_waits_are_documented(
    make_bare: Callable[..., Bare],
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    bare = make_bare(
        **{
            "server.request_timeout_s": 0.5,
            "models.civitai_url": nowhere,
            "models.hf_endpoint": nowhere,
            "models.allow_private_urls": True,
        }
    )
    document = httpx.get(bare.url + "/openapi.json", timeout=10).json()
    image = base64.b64encode(png()).decode()
    small = {"prompt": "a harbour", "width": 64, "height": 64}
    calls: list[tuple[str, str, dict[str, Any], int]] = [
        ("GET", "/v1/models/search", {"params": {"source": "civitai", "query": "x"}}, 502),
        ("GET", "/v1/models/search", {"params": {"source": "huggingface", "query": "x"}}, 502),
        ("POST", "/v1/models/search/civitai", {"json": {"query": "x"}}, 502),
        ("POST", "/v1/models/search/huggingface", {"json": {"query": "x"}}, 502),
        (
            "POST",
            "/v1/images/edits",
            {"files": {"image": ("a.png", png(), "image/png")}, "data": {"prompt": "x"}},
            504,
        ),
        ("POST", "/v1/images/generations", {"json": {"prompt": "x"}}, 504),
        ("POST", "/sdapi/v1/txt2img", {"json": {**small, "steps": 2}}, 504),
        ("POST", "/sdapi/v1/img2img", {"json": {**small, "init_images": [image]}}, 504),
        ("POST", "/v1/txt2img", {"json": {"prompt": "x"}}, 504),
        ("POST", "/v1/img2img", {"json": {"prompt": "x", "image": image}}, 504),
        ("POST", "/api/v1/generate/txt2img", {"json": {"prompt": "x"}}, 504),
        ("POST", "/generate", {"json": {"prompt": "x"}}, 408),
    ]
    for method, path, options, status in calls:
        answer = httpx.request(method, bare.url + path, timeout=30, **options)
        assert answer.status_code == status, (path, answer.text)
        documented = document["paths"][path][method.lower()]["responses"]
        assert str(status) in documented, (method, path, sorted(documented))
        assert documented[str(status)]["description"]
    civitai = document["paths"]["/v1/models/search/civitai"]["post"]["responses"]["502"]
    assert "CivitAI" in civitai["description"]
    edits = document["paths"]["/v1/images/edits"]["post"]["responses"]["504"]
    assert "server.request_timeout_s" in edits["description"]
