"""Calling AUTOMATIC1111's API of a served test site as its clients do: HTTP basic auth
with the key as the password, JSON bodies, answers checked for 200."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
from PIL import Image

from tests.support.live_server import TLS, Served


def basic(key: str) -> dict[str, str]:
    """The header SillyTavern and Open WebUI send for their `user:password` setting."""
    return {"Authorization": "Basic " + base64.b64encode(f"me:{key}".encode()).decode()}


def call(site: Served, method: str, path: str, key: str, body: Any = None) -> Any:
    """The JSON answer of a request that must succeed."""
    answer = httpx.request(
        method, f"{site.url}{path}", json=body, headers=basic(key), timeout=180, verify=TLS
    )
    assert answer.status_code == 200, (path, answer.status_code, answer.text)
    return answer.json()


def png(data: str) -> Image.Image:
    """A base64 image of an answer, which must be a PNG."""
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    assert image.format == "PNG"
    return image
