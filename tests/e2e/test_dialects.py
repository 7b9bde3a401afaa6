"""The AbleRefusal, GTX 1060 and REST plan APIs and ALICE's small routes against a real
`serve` on the tiny model: each seed document's own request examples sent as written,
every dialect's refusals in its own error shape (never a 500), their jobs in `GET
/v1/jobs` with their `source`, and the REST plan's WebSocket progress stream with a real
client."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets.sync.client
from PIL import Image

from tests.support.live_server import Served, http_get, serve, wait_until

KEY = "dialect-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("dialects")
    config = f'[server.api_keys]\nops = "{KEY}"\n'
    with serve(root, config, scheduler="euler", models=tiny_models, split=True) as server:
        models = root / "var" / "models"
        for name in ("sd-xl-base", "sd-2-1"):  # the names the REST plan's examples use
            shutil.copytree(models / "tiny", models / name)
        httpx.post(f"{server.url}/v1/models/refresh", headers=AUTH, timeout=30)
        chosen = httpx.post(  # requests that name no model keep going to tiny
            f"{server.url}/v1/models/default", json={"model": "sd/tiny"}, headers=AUTH
        )
        assert chosen.status_code == 200, chosen.text
        yield server


def post(site: Served, path: str, body: Any, **options: Any) -> httpx.Response:
    options.setdefault("headers", AUTH)
    return httpx.post(f"{site.url}{path}", json=body, timeout=120, **options)


def get(site: Served, path: str, **options: Any) -> httpx.Response:
    options.setdefault("headers", AUTH)
    return http_get(f"{site.url}{path}", timeout=30, **options)


def job(site: Served, job_id: str) -> dict[str, Any]:
    return dict(get(site, f"/v1/jobs/{job_id}").json())


def picture(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# -- ALICE's small routes ----------------------------------------------------------------


def test_alices_probes_and_defaults(site: Served) -> None:
    assert httpx.get(f"{site.url}/livez").json() == {"status": "alive"}
    assert httpx.get(f"{site.url}/readyz").json() == {"status": "ready"}  # no key needed
    assert httpx.get(f"{site.url}/api/health").json()["gpuAvailable"] is False
    assert httpx.get(f"{site.url}/api/v1/health").json() == {"status": "healthy"}
    assert httpx.get(f"{site.url}/api/v1/ready").status_code == 200
    assert httpx.get(f"{site.url}/v1/generation/defaults").status_code == 401
    defaults = get(site, "/v1/generation/defaults").json()
    assert defaults == {
        "steps": 2,
        "guidance_scale": defaults["guidance_scale"],
        "scheduler": "euler",
        "width": 64,
        "height": 64,
    }


# -- AbleRefusal -----------------------------------------------------------------------------


def test_ablerefusals_example_as_written(site: Served) -> None:
    example = {  # its spec's "Submit Generation Request"
        "prompt": "a beautiful sunset over mountains",
        "width": 512,
        "height": 512,
        "steps": 20,
        "cfg_scale": 7.5,
    }
    queued = post(site, "/api/v1/generate", example)
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["id"]
    assert queued.json() == {"id": job_id, "status": "queued"}

    def status() -> dict[str, Any]:
        return dict(get(site, f"/api/v1/generate/{job_id}").json())

    wait_until(lambda: status()["status"] == "completed", timeout=300)
    done = status()
    assert done["progress"] == 100
    (result,) = done["results"]
    assert result["image_url"].startswith("/outputs/") and isinstance(result["seed"], int)
    assert result["metadata"]["steps"] == 20 and result["metadata"]["cfg_scale"] == 7.5
    png = httpx.get(f"{site.url}{result['image_url']}")  # no key: an unguessable name
    assert picture(png.content).size == (512, 512)
    assert job(site, job_id)["source"] == "ablerefusal"
    listed = get(site, "/api/v1/models").json()["models"]
    assert {m["id"] for m in listed} >= {"sd/tiny", "sd/sd-xl-base"}


def test_ablerefusal_refusals_cancel_and_queue(site: Served) -> None:
    good = {"prompt": "x", "width": 64, "height": 64, "steps": 2}
    for body, field in [
        ({"prompt": "x", "width": 64}, "height"),
        ({**good, "steps": 151}, "steps"),
        ({**good, "cfg_scale": 0.5}, "cfg_scale"),
        ({**good, "batch_size": 5}, "batch_size"),
        ({**good, "batch_size": 2.5}, "batch_size"),  # a whole number, or refused
        ({**good, "sampler": "nope"}, "scheduler"),
        ({**good, "width": 65}, "width"),
        ({**good, "colour": "red"}, "colour"),
        ({**good, "negative_prompt": False}, "negative_prompt"),  # never taken as none
        ({**good, "model": 0}, "model"),
    ]:
        answer = post(site, "/api/v1/generate", body)
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["details"]["field"] == field and answer.json()["error"]
    missing = post(site, "/api/v1/generate", {**good, "model": "sd/nope"})
    assert missing.status_code == 404 and "sd/tiny" in missing.json()["models"]
    long = post(site, "/api/v1/generate", {**good, "steps": 150, "prompt": "long one"})
    job_id = long.json()["id"]
    wait_until(lambda: job(site, job_id)["status"] == "running", timeout=60)
    queue = get(site, "/api/v1/queue").json()
    assert queue["processing"] == 1 and {"id": job_id, "status": "processing"} in queue["jobs"]
    cancelled = post(site, f"/api/v1/generate/{job_id}/cancel", {})
    assert cancelled.status_code == 200
    wait_until(lambda: job(site, job_id)["status"] == "cancelled", timeout=60)
    assert get(site, f"/api/v1/generate/{job_id}").json()["status"] == "cancelled"
    unknown = get(site, "/api/v1/generate/" + "0" * 30)
    assert unknown.status_code == 404 and "error" in unknown.json()
    assert httpx.post(f"{site.url}/api/v1/generate", json=good).status_code == 401


# -- the GTX 1060 API ----------------------------------------------------------------------


def test_gtx1060_generates_and_refuses_in_its_shape(site: Served) -> None:
    made = post(site, "/generate", {"prompt": "a lighthouse", "steps": 2, "width": 256,
                                     "height": 256, "seed": 42})  # fmt: skip
    assert made.status_code == 200, made.text
    meta = made.json()["metadata"]
    assert picture(base64.b64decode(made.json()["image_base64"])).size == (256, 256)
    assert (meta["seed"], meta["steps"], meta["width"], meta["prompt"]) == (
        42,
        2,
        256,
        "a lighthouse",
    )
    assert meta["model_version"] == "sd/tiny" and meta["generation_time_seconds"] > 0
    for body, field in [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 501}, "prompt"),
        ({"prompt": "x", "steps": 51}, "steps"),
        ({"prompt": "x", "steps": True}, "steps"),
        ({"prompt": "x", "width": 300}, "width"),
        ({"prompt": "x", "height": 832}, "height"),
        ({"prompt": "x", "seed": -1}, "seed"),
    ]:
        answer = post(site, "/generate", body)
        assert answer.status_code == 422, (body, answer.text)
        shown = answer.json()
        assert set(shown) == {"error", "details", "error_code"} and field in shown["details"]
    garbage = httpx.post(f"{site.url}/generate", content=b"{", headers={**AUTH,
                         "Content-Type": "application/json"})  # fmt: skip
    assert garbage.status_code == 422 and garbage.json()["error_code"] == "invalid_json"


# -- the REST plan -------------------------------------------------------------------------


def test_the_rest_plans_examples_as_written(site: Served) -> None:
    example = {  # its "API Usage": txt2img
        "prompt": "A beautiful sunset over mountains",
        "model_id": "sd-xl-base",
        "num_inference_steps": 25,
        "guidance_scale": 7.5,
    }
    made = post(site, "/api/v1/generate/txt2img", example)
    assert made.status_code == 200, made.text
    shown = made.json()
    assert shown["model_id"] == "sd/sd-xl-base" and shown["latency_ms"] > 0
    assert picture(base64.b64decode(shown["image"])).size == (64, 64)
    loaded = post(site, "/api/v1/models/load", {"model_id": "sd-2-1"})  # its "Load different model"
    assert loaded.json() == {"status": "ok", "model_id": "sd/sd-2-1"}

    def resident() -> Any:
        return http_get(f"{site.url}/health", timeout=30).json()["runners"][0]["model"]

    wait_until(lambda: resident() == "sd/sd-2-1", timeout=60)  # the idle runner loaded it
    assert post(site, "/v1/models/load", {"model_id": "nope"}).status_code == 404
    again = post(site, "/v1/txt2img", {"prompt": "a red fox", "seed": shown["seed"] + 1,
                                       "num_inference_steps": 2})  # fmt: skip
    assert again.json()["seed"] == shown["seed"] + 1
    init = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(init, format="PNG")
    image = base64.b64encode(init.getvalue()).decode()
    body = {"prompt": "a red fox", "num_inference_steps": 2, "image": image, "strength": 0.5}
    edited = post(site, "/v1/img2img", body)
    assert edited.status_code == 200, edited.text
    assert get(site, "/v1/loras/list").json() == {"loras": []}
    for path, body, field in [
        ("/v1/txt2img", {"prompt": "x", "num_inference_steps": 0}, "steps"),
        ("/v1/txt2img", {"prompt": "x", "lora_path": "nope"}, "lora"),
        ("/v1/txt2img", {"prompt": "x", "sampler": "euler"}, "sampler"),
        ("/v1/img2img", {"prompt": "x"}, "image"),
        ("/v1/img2img", {"prompt": "x", "image": "not an image"}, "image"),
        ("/v1/img2img", {"prompt": "x", "image": image, "strength": 5e-324}, "strength"),
        ("/v1/txt2img", {"prompt": "x", "negative_prompt": 0}, "negative_prompt"),
        ("/v1/txt2img", {"prompt": "x", "lora_scale": "high"}, "lora_scale"),  # no lora_path
        ("/v1/txt2img", {"prompt": "x", "lora_path": 7}, "lora_path"),
        ("/v1/models/load", {"model_id": ""}, "model_id"),
    ]:
        answer = post(site, path, body)
        assert 400 <= answer.status_code < 500, (body, answer.text)
        assert field in answer.json()["detail"], answer.json()
    sources = {j["source"] for j in get(site, "/v1/jobs?source=restplan&limit=500").json()["data"]}
    assert sources == {"restplan"}


def test_the_websocket_streams_increasing_steps_then_the_image(site: Served) -> None:
    url = site.url.replace("http://", "ws://") + "/stream/generate/txt2img"
    with websockets.sync.client.connect(url, additional_headers=AUTH) as socket:
        socket.send(json.dumps({"prompt": "a harbour", "num_inference_steps": 80, "seed": 5}))
        messages = [json.loads(m) for m in socket]
    progress = [m for m in messages if m["type"] == "progress"]
    assert len(progress) >= 2 and all(m["total"] == 80 for m in progress)
    steps = [m["step"] for m in progress]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # increasing
    result = messages[-1]
    assert result["type"] == "result" and result["seed"] == 5
    assert picture(base64.b64decode(result["image"])).size == (64, 64)
    with websockets.sync.client.connect(url, additional_headers=AUTH) as socket:
        socket.send(json.dumps({"prompt": "", "num_inference_steps": 2}))
        (refused,) = [json.loads(m) for m in socket]
    assert refused["type"] == "error" and refused["code"] == "invalid_parameters"
    refused_error = websockets.exceptions.WebSocketException
    with pytest.raises(refused_error), websockets.sync.client.connect(url) as socket:
        socket.send(json.dumps({"prompt": "x"}))  # no key: closed at once
        socket.recv()
    elsewhere = {"additional_headers": AUTH, "origin": "https://evil.example"}
    with pytest.raises(refused_error), websockets.sync.client.connect(url, **elsewhere) as socket:
        socket.recv()  # a page on another site


def test_a_dialect_job_survives_sigkill_and_runs_after_the_restart(
    tmp_path: Path, tiny_models: Path
) -> None:
    """An AbleRefusal job queued behind a long one; serve and its runner SIGKILLed; the
    restarted server runs it once, and AbleRefusal's own route shows it completed."""
    root = tmp_path / "spool"
    root.mkdir()
    with serve(root, models=tiny_models, split=True) as first:
        # (Euler: the restarted runner runs the requeued blocker first, and its steps are
        # cheap; serve's default DPM++ SDE took 15 s of CPU over it.)
        long = {"prompt": "long", "steps": 150, "n": 4, "scheduler": "euler"}
        blocker = post(first, "/v1/jobs", long).json()
        wait_until(lambda: job(first, blocker["id"])["status"] == "running", timeout=60)
        queued = post(first, "/api/v1/generate", {"prompt": "a harbour", "width": 64,
                      "height": 64, "steps": 2})  # fmt: skip
        job_id = queued.json()["id"]
        for runner in httpx.get(f"{first.url}/health").json()["runners"]:
            os.kill(int(runner["owner"].split("/")[1]), signal.SIGKILL)  # its own session
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(30)
    with serve(root, models=tiny_models, split=True) as second:
        status = lambda: get(second, f"/api/v1/generate/{job_id}").json()  # noqa: E731
        wait_until(lambda: status()["status"] == "completed", timeout=180)
        assert len(status()["results"]) == 1
        done = job(second, job_id)
    assert (done["source"], done["attempts"]) == ("ablerefusal", 1)  # run once
    assert (root / "var" / "outbox" / job_id / f"{job_id}-0.png").exists()
