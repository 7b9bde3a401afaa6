"""Image inputs through serve: an img2img job queued before serve (and its runner) are
SIGKILLed runs after the restart, from the inputs stored with it."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.live_server import serve, wait_until

pytestmark = pytest.mark.slow


def png(seed: int, size: tuple[int, int] = (72, 64)) -> str:
    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_queued_img2img_job_survives_sigkill_and_runs_after_the_restart(
    tmp_path: Path, tiny_models: Path
) -> None:
    root = tmp_path / "spool"
    root.mkdir()
    with serve(root, models=tiny_models, split=True) as first:
        post = lambda body: httpx.post(f"{first.url}/v1/jobs", json=body, timeout=30)  # noqa: E731
        blocker = post({"prompt": "long", "steps": 150, "n": 4, "scheduler": "euler"}).json()
        wait_until(lambda: first.get(f"/v1/jobs/{blocker['id']}").json()["status"] == "running")
        job = post(
            {"prompt": "a harbour", "init_image": png(1), "strength": 0.5, "steps": 3}
            | {"priority": 10}  # after the restart, before the requeued blocker
        )
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        assert first.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        stored = root / "var" / "inputs" / job_id / "init.png"
        assert stored.exists()
        runners = first.get("/health").json()["runners"]
        for runner in runners:  # serve's runner child has a session of its own
            os.kill(int(runner["owner"].split("/")[1]), signal.SIGKILL)
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(30)
    with serve(root, models=tiny_models, split=True) as second:
        wait_until(
            lambda: second.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded",
            timeout=180,
        )
        done = second.get(f"/v1/jobs/{job_id}").json()
    assert done["spec"]["width"] == 72 and done["spec"]["height"] == 64  # the input's size
    result = json.loads((root / "var" / "outbox" / job_id / "result.json").read_text())
    assert result["mode"] == "img2img" and result["strength"] == 0.5
    sent = base64.b64decode(png(1))
    assert result["inputs"]["init_image_sha256"] == hashlib.sha256(sent).hexdigest()
    image = Image.open(root / "var" / "outbox" / job_id / f"{job_id}-0.png")
    assert image.size == (72, 64)
    assert "Denoising strength: 0.5" in image.text["parameters"]
