"""A hires job with clip skip through a real server and its runner: a native `/v1/jobs`
request in, an image at the target size and A1111's infotext out."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support.live_server import serve, wait_until

pytestmark = pytest.mark.slow


def test_a_native_hires_job_with_clip_skip_runs_end_to_end(tmp_path: Path) -> None:
    request = {
        "prompt": "a harbour",
        "steps": 2,
        "seed": 5,
        "scheduler": "euler",
        "hires": {"scale": 1.5, "steps": 1, "upscaler": "Latent (antialiased)"},
        "clip_skip": 2,
    }
    with serve(tmp_path) as server:
        created = httpx.post(f"{server.url}/v1/jobs", json=request, timeout=30)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]

        def finished() -> bool:
            status = server.get(f"/v1/jobs/{job_id}").json()["status"]
            assert status not in ("failed", "cancelled"), server.get(f"/v1/jobs/{job_id}").text
            return status == "succeeded"

        wait_until(finished, timeout=120)
        refused = httpx.post(
            f"{server.url}/v1/jobs", json={**request, "hires": {"scale": 9}}, timeout=30
        )
    assert refused.status_code == 400 and "hires.scale" in refused.text
    folder = tmp_path / "var" / "outbox" / job_id
    result = json.loads((folder / "result.json").read_text())
    assert result["mode"] == "hires"
    assert [(f["width"], f["height"]) for f in result["images"]] == [(96, 96)]
    assert result["spec"]["hires"]["upscaler"] == "Latent (antialiased)"
    assert result["spec"]["clip_skip"] == 2
    image = Image.open(folder / result["images"][0]["file"])
    assert image.size == (96, 96)
    parameters = image.info["parameters"]
    assert "Size: 64x64" in parameters and "Clip skip: 2" in parameters
    assert "Hires upscale: 1.5, Hires steps: 1, Hires upscaler: Latent (antialiased)" in parameters
