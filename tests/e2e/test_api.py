"""The HTTP API on a real uvicorn server on 127.0.0.1.

- `live`: `alice-spool serve` as a subprocess (API + inbox + the runner child on the
  tiny model, created by serve itself on its fresh data dir), with API keys on. The
  official openai SDK and SAM's exact requests run against it.
- `bare`: the app in-process under uvicorn in a thread, without a runner and without
  keys (or with, per test), for every bad input and limit.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import sqlalchemy
from PIL import Image
from sqlalchemy import text as sa_text

from alice_spool.spec import JobSpec
from alice_spool.states import DownloadStatus
from alice_spool.store import Store
from tests.support.bare import Bare, served_image_job
from tests.support.live_server import serve, wait_until
from tests.support.remote import Remote, serving

pytestmark = pytest.mark.slow

SAM_KEY = "sam-secret-key"
SCRIPT_KEY = "script-secret-key"
KEYS = f'[server.api_keys]\nsam = "{SAM_KEY}"\nscripts = "{SCRIPT_KEY}"\n'
# Downloads from the tests' own HTTP server on 127.0.0.1.
KEYS += "[models]\nallow_private_urls = true\n"


@dataclass
class Live:
    url: str
    root: Path
    process: subprocess.Popen[bytes]

    def client(self, key: str = SAM_KEY, **options: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, **options)

    def get(self, path: str, **options: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=30, **options)

    def post(self, path: str, **options: Any) -> httpx.Response:
        options.setdefault("headers", {"Authorization": f"Bearer {SAM_KEY}"})
        return httpx.post(f"{self.url}{path}", timeout=120, **options)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[Live]:
    """The api process and a runner (serve, which runs both, has its own test below)."""
    root = tmp_path_factory.mktemp("serve")
    with serve(root, KEYS, models=tiny_models, split=True) as server:
        yield Live(server.url, server.root, server.process)


# -- the openai SDK -------------------------------------------------------------------------


def test_the_sdk_lists_models(live: Live) -> None:
    models = live.client().models.list()
    (tiny,) = [model for model in models.data if not (model.model_extra or {}).get("alias")]
    aliases = {m.id: m.model_extra["alias_of"] for m in models.data if m is not tiny}
    assert aliases["dall-e-3"] == aliases["gpt-image-1"] == "sd/tiny"  # OpenAI's names
    assert (tiny.id, tiny.object, tiny.owned_by) == ("sd/tiny", "model", "alice")
    assert isinstance(tiny.created, int)
    assert tiny.model_extra["smoke_test"] is True  # and says its images are noise


def test_the_sdk_generates_images_as_urls_and_as_base64(live: Live) -> None:
    client = live.client()
    result = client.images.generate(
        model="sd/tiny", prompt="a red fox", size="64x64", n=2, extra_body={"seed": 5}
    )
    assert len(result.data) == 2
    for item in result.data:
        png = httpx.get(item.url)  # a plain GET, no key, as SAM fetches images
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(png.content)) as image:
            assert image.size == (64, 64) and "Seed:" in image.text["parameters"]
    encoded = client.images.generate(
        model="tiny", prompt="a red fox", size="64x64", response_format="b64_json"
    )
    with Image.open(io.BytesIO(base64.b64decode(encoded.data[0].b64_json))) as image:
        assert image.format == "PNG" and image.size == (64, 64)


def test_the_sdk_chat_with_sam_config(live: Live) -> None:
    completion = live.client().chat.completions.create(
        model="sd/tiny",
        messages=[
            {"role": "system", "content": "you make images"},
            {"role": "user", "content": "a lighthouse at dusk"},
        ],
        extra_body={"sam_config": {"steps": 3, "width": 64, "height": 96, "seed": 9}},
    )
    message = completion.choices[0].message
    urls = message.model_extra["image_urls"]
    assert len(urls) == 1 and urls[0].startswith(live.url + "/images/")
    metadata = message.model_extra["metadata"]
    assert (metadata["prompt"], metadata["steps"], metadata["seed"]) == (
        "a lighthouse at dusk",
        3,
        9,
    )
    assert (metadata["width"], metadata["height"], metadata["model"]) == (64, 96, "sd/tiny")
    assert completion.choices[0].finish_reason == "stop"
    assert urls[0] in message.content


def test_the_sdk_streams_progress_then_the_result(live: Live) -> None:
    stream = live.client().chat.completions.create(
        model="sd/tiny",
        messages=[{"role": "user", "content": "streamed"}],
        stream=True,
        extra_body={"metadata": {"steps": 20, "width": 64, "height": 64}},
    )
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].choices[0].delta.model_extra["image_urls"]
    statuses = [
        c.choices[0].delta.model_extra.get("progress", {}).get("status") for c in chunks[:-1]
    ]
    assert "succeeded" in statuses


def test_the_sdk_error_classes(live: Live) -> None:
    with pytest.raises(openai.AuthenticationError):
        live.client("wrong").models.list()
    with pytest.raises(openai.NotFoundError) as missing:
        live.client().images.generate(model="dall-e-5", prompt="x")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        live.client().images.generate(model="sd/tiny", prompt="x", extra_body={"steps": 0})
    assert bad.value.code == "invalid_parameters"


# -- SAM ----------------------------------------------------------------------------------


def test_sams_exact_request_and_decoding_rules(live: Live) -> None:
    health = live.get("/health").json()  # no key: /health is open
    assert isinstance(health["status"], str) and isinstance(health["version"], str)
    assert isinstance(health["gpuAvailable"], bool) and isinstance(health["modelsLoaded"], int)
    assert isinstance(health["gpu_available"], bool) and isinstance(health["models_loaded"], int)
    models = live.get("/v1/models", headers={"X-Api-Key": SAM_KEY}).json()
    for model in models["data"]:
        assert isinstance(model["id"], str) and isinstance(model["created"], int)
        assert model["object"] == "model" and isinstance(model["owned_by"], str)
    response = live.post(
        "/v1/chat/completions",
        headers={"X-Api-Key": SAM_KEY, "Content-Type": "application/json"},
        json={
            "model": "sd/tiny",
            "messages": [{"role": "user", "content": "a harbour at dawn"}],
            "metadata": {
                "steps": 4,
                "guidance_scale": 6.5,
                "scheduler": "dpm++_2m_karras",
                "width": 64,
                "height": 64,
                "negative_prompt": "fog",
                "seed": 1234,
            },
        },
    )
    assert response.status_code == 200
    body = response.json()
    message = body["choices"][0]["message"]
    assert message["image_urls"] and all(isinstance(u, str) for u in message["image_urls"])
    assert message["metadata"]["scheduler"] == "dpm++_2m_karras"
    assert message["metadata"]["negative_prompt"] == "fog"
    usage = body["usage"]
    for key in ("promptTokens", "completionTokens", "totalTokens"):
        assert isinstance(usage[key], int)
    image = httpx.get(message["image_urls"][0])
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    # SAM's messages for 401 and 400
    assert (
        live.post("/v1/chat/completions", headers={"X-Api-Key": "nope"}, json={}).status_code == 401
    )
    no_user = live.post(
        "/v1/chat/completions",
        headers={"X-Api-Key": SAM_KEY},
        json={"model": "sd/tiny", "messages": [{"role": "system", "content": "x"}]},
    )
    assert no_user.status_code == 400 and no_user.json()["error"]["code"] == "invalid_parameters"


def test_a_client_that_disconnects_does_not_cancel_its_job(live: Live) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{live.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {SCRIPT_KEY}"},
            json={
                "model": "sd/tiny",
                "messages": [{"role": "user", "content": "left behind"}],
                "metadata": {"steps": 120, "width": 64, "height": 64, "n": 2},
            },
            timeout=1.0,
        )
    listed = live.get("/v1/jobs?limit=5", headers={"X-Api-Key": SCRIPT_KEY}).json()["data"]
    (job,) = [j for j in listed if j["spec"]["prompt"] == "left behind"]
    assert job["client"] == "scripts" and job["source"] == "openai"

    def finished() -> bool:
        return live.get(f"/v1/jobs/{job['id']}", headers={"X-Api-Key": SCRIPT_KEY}).json()[
            "status"
        ] in ("succeeded", "failed", "cancelled")

    wait_until(finished, timeout=120)
    done = live.get(f"/v1/jobs/{job['id']}", headers={"X-Api-Key": SCRIPT_KEY}).json()
    assert done["status"] == "succeeded" and len(done["image_urls"]) == 2


def test_job_events_show_progress_then_the_result(live: Live) -> None:
    created = live.post(
        "/v1/jobs", json={"prompt": "watched", "steps": 40, "width": 64, "height": 64}
    )
    assert created.status_code == 202
    job_id = created.json()["id"]
    assert created.headers["location"] == f"/v1/jobs/{job_id}"
    events: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream(
        "GET",
        f"{live.url}/v1/jobs/{job_id}/events",
        headers={"Authorization": f"Bearer {SAM_KEY}"},
        timeout=120,
    ) as stream:
        name = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and name:
                events.append((name, json.loads(line.split(":", 1)[1])))
    assert events[-1][0] == "done" and events[-1][1]["status"] == "succeeded"
    steps = [data["step"] for name, data in events if name == "progress" and data["step"]]
    assert steps == sorted(steps) and len(steps) >= 1
    assert events[-1][1]["image_urls"]


def test_a_lora_job_and_a_plain_one_run_and_record_their_loras(live: Live) -> None:
    """Through serve's real runner: a LoRA job queued with a plain one gets the pixels
    it has alone (scale 0: the plain image), and its records say which LoRA made it."""
    from alice_spool.engine.tiny import create_tiny_lora

    lora = create_tiny_lora(live.root / "var" / "models", "e2e-lora")
    request = {"prompt": "a harbour", "steps": 3, "seed": 11, "scheduler": "euler"}
    jobs = {
        name: live.post("/v1/jobs", json={**request, **extra}).json()["id"]
        for name, extra in {
            "plain": {},
            "zero": {"loras": [{"name": "e2e-lora", "scale": 0}]},
            "tagged": {"prompt": "a harbour <lora:e2e-lora:1>"},
        }.items()
    }

    def finished() -> bool:
        states = [
            live.get(f"/v1/jobs/{i}", headers={"X-Api-Key": SAM_KEY}).json()["status"]
            for i in jobs.values()
        ]
        assert "failed" not in states, states
        return all(state == "succeeded" for state in states)

    wait_until(finished, timeout=120)
    outbox = live.root / "var" / "outbox"
    image = {n: Image.open(outbox / i / f"{i}-0.png") for n, i in jobs.items()}
    plain, zero, tagged = (np.asarray(image[n], np.int16) for n in ("plain", "zero", "tagged"))
    assert np.array_equal(plain, zero)
    assert (np.abs(tagged - plain) > 2).mean() >= 0.01
    result = json.loads((outbox / jobs["tagged"] / "result.json").read_text())
    data = lora.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    # A1111's hash: the tensor data after the 8-byte header length and the header.
    tensors = hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest()
    assert tensors != sha
    assert result["loras"] == [
        {"name": "lora/e2e-lora", "scale": 1.0, "sha256": sha, "tensors_sha256": tensors}
    ]
    assert result["mode"] == "txt2img" and result["spec"]["prompt"] == "a harbour"
    text = image["tagged"].text["parameters"]
    assert text.startswith("a harbour <lora:e2e-lora:1>\n")
    assert f'Lora hashes: "e2e-lora: {tensors[:12]}"' in text
    record = live.get(f"/v1/jobs/{jobs['tagged']}", headers={"X-Api-Key": SAM_KEY}).json()
    assert record["result"]["loras"] == result["loras"]
    assert json.loads((outbox / jobs["plain"] / "result.json").read_text())["loras"] == []


def test_serve_runs_a_url_download_and_the_lora_is_there_at_once(live: Live) -> None:
    """POST /v1/downloads to serve: its download workers fetch the file (from the tests'
    server on 127.0.0.1, which this serve allows), verify and install it; GET /v1/loras
    lists it without a refresh."""
    from alice_spool.engine.tiny import create_tiny_lora

    lora = create_tiny_lora(live.root / "made", "fetched-style").read_bytes()
    sha = hashlib.sha256(lora).hexdigest()
    with serving(Remote(files={"/fetched-style.safetensors": lora})) as remote:
        made = live.post(
            "/v1/downloads",
            json={"source": "url", "url": f"{remote.url}/fetched-style.safetensors", "sha256": sha},
        )
        assert made.status_code == 202, made.text
        download_id = made.json()["id"]
        headers = {"X-Api-Key": SAM_KEY}

        def finished() -> bool:
            shown = live.get(f"/v1/downloads/{download_id}", headers=headers).json()
            assert shown["status"] != "failed", shown
            return shown["status"] == "succeeded"

        wait_until(finished, timeout=60)
    done = live.get(f"/v1/downloads/{download_id}", headers=headers).json()
    assert (done["model"], done["bytes_done"], done["bytes_total"]) == (
        "lora/fetched-style",
        len(lora),
        len(lora),
    )
    loras = live.get("/v1/loras", headers=headers).json()["data"]
    assert "lora/fetched-style" in [entry["id"] for entry in loras]
    assert live.get("/v1/downloads", headers={}).status_code == 401  # keys are on here


def test_the_sdk_edits_an_image_with_and_without_a_mask(live: Live, tmp_path: Path) -> None:
    """OpenAI's images.edit: without a mask, img2img; with one, inpainting where the mask
    is fully transparent, every other pixel kept exactly."""
    rng = np.random.default_rng(3)
    source = Image.fromarray((rng.random((64, 80, 3)) * 255).astype(np.uint8))
    source.save(tmp_path / "photo.png")
    mask = Image.new("RGBA", (80, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (20, 16, 60, 48))  # transparent: edit here
    mask.save(tmp_path / "mask.png")
    client = live.client()
    with open(tmp_path / "photo.png", "rb") as image:
        plain = client.images.edit(
            image=image, prompt="a painting", response_format="b64_json", extra_body={"steps": 3}
        )
    edited = Image.open(io.BytesIO(base64.b64decode(plain.data[0].b64_json)))
    assert edited.size == (80, 64)  # the input's size
    with open(tmp_path / "photo.png", "rb") as image, open(tmp_path / "mask.png", "rb") as marks:
        masked = client.images.edit(
            image=image,
            mask=marks,
            prompt="a painting",
            response_format="b64_json",
            extra_body={"steps": 3, "strength": 1},
        )
    painted = np.asarray(Image.open(io.BytesIO(base64.b64decode(masked.data[0].b64_json))))
    keep = np.asarray(mask.getchannel("A")) == 255
    assert np.array_equal(painted[keep], np.asarray(source)[keep])
    assert (painted[~keep] != np.asarray(source)[~keep]).mean() > 0.5
    with open(tmp_path / "mask.png", "rb") as wrong, pytest.raises(openai.BadRequestError):
        client.images.edit(image=wrong, mask=io.BytesIO(b"not a png"), prompt="x")
    url = client.images.edit(image=(tmp_path / "photo.png").read_bytes(), prompt="x")
    assert live.get(url.data[0].url.removeprefix(live.url)).status_code == 200


def test_metrics_in_both_dialects(live: Live) -> None:
    # One job of its own: the test must not lean on others having run on this server.
    live.client().images.generate(model="sd/tiny", prompt="counted", size="64x64")
    alice = live.get("/metrics").json()
    for key in ("queueDepth", "activeGenerations", "modelsLoaded", "totalGenerations"):
        assert isinstance(alice[key], int), key
    for key in ("gpuUtilization", "gpuMemoryUsed", "gpuMemoryTotal", "avgGenerationTime"):
        assert isinstance(alice[key], float), key
    assert alice["totalGenerations"] >= 1
    text = live.get("/metrics", headers={"Accept": "text/plain"})
    assert text.headers["content-type"].startswith("text/plain")
    assert 'alice_jobs{state="queued"}' in text.text and "alice_runner_up" in text.text
    assert "alice_job_run_seconds_bucket" in text.text
    assert 'alice_jobs_finished_total{state="succeeded"}' in text.text
    assert "alice_images_total" in text.text and "alice_job_wait_seconds_count" in text.text
    openmetrics = live.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert live.get("/metrics?format=prometheus").text.startswith("# HELP")


def test_serve_restarts_a_runner_that_dies(tmp_path: Path, tiny_models: Path) -> None:
    with serve(tmp_path, KEYS, models=tiny_models) as server:
        _restarts_its_runner(Live(server.url, server.root, server.process))


def _restarts_its_runner(live: Live) -> None:
    admin = {"X-Api-Key": SAM_KEY}  # a configured key: an admin's, who sees lease tokens
    (runner,) = live.get("/health", headers=admin).json()["runners"]
    pid = int(runner["owner"].split("/")[1])
    os.kill(pid, signal.SIGKILL)
    job = live.post("/v1/jobs", json={"prompt": "after the crash", "steps": 2}).json()

    def done() -> bool:
        return (
            live.get(f"/v1/jobs/{job['id']}", headers={"X-Api-Key": SAM_KEY}).json()["status"]
            == "succeeded"
        )

    wait_until(done, timeout=120)
    (again,) = live.get("/health", headers=admin).json()["runners"]
    assert again["owner"] != runner["owner"]


# -- every bad input, on an in-process server ---------------------------------------------------


def write_lora_file(path: Path, tensors: dict[str, tuple[int, ...]]) -> None:
    """A LoRA's header as the registry reads it (zero weights)."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: np.zeros(shape, dtype=np.float16) for key, shape in tensors.items()}, path)


def test_bad_requests_get_clear_json_errors_never_a_500(make_bare: Callable[..., Bare]) -> None:
    # /v1/jobs may carry images: its limit is max_image_body_bytes
    bare = make_bare(**{"server.max_body_bytes": "2048", "server.max_image_body_bytes": "4096"})
    post = lambda path, **kw: httpx.post(bare.url + path, timeout=10, **kw)  # noqa: E731

    def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
        assert response.status_code == status, response.text
        body = response.json()["error"]
        assert body["code"] == code and body["message"] and body["type"]
        return body

    error(post("/v1/jobs", content=b"{not json"), 400, "invalid_json")
    error(post("/v1/jobs", content=b"[" * 1024 + b"]" * 1024), 400, "invalid_json")
    error(post("/v1/jobs", json={"prompt": [[[["deep"]]]]}), 400, "invalid_parameters")
    both = post("/v1/images/generations", json={"prompt": "x", "size": "64x64", "width": 64})
    assert error(both, 400, "invalid_parameters")["param"] == "size"
    error(post("/v1/jobs", content=b"\xff\xfe"), 400, "invalid_json")
    error(post("/v1/jobs", content=b""), 400, "invalid_json")
    error(post("/v1/jobs", content=b'{"prompt": "' + b"x" * 5000 + b'"}'), 413, "body_too_large")
    error(post("/v1/jobs", json=[1, 2]), 400, "invalid_parameters")
    bad = error(post("/v1/jobs", json={"prompt": "x", "steps": 1000}), 400, "invalid_parameters")
    assert bad["param"] == "steps"
    error(post("/v1/jobs", json={"prompt": "x", "stpes": 3}), 400, "invalid_parameters")
    error(post("/v1/jobs", json={"prompt": ""}), 400, "invalid_parameters")
    error(post("/v1/jobs", json={"prompt": "x", "model": "sd/none"}), 404, "model_not_found")
    error(post("/v1/chat/completions", json={"messages": "hi"}), 400, "invalid_parameters")
    user = {"role": "user", "content": "a fox"}
    for broken in ({"content": "no role"}, {"role": "user", "content": 7}, "text"):
        answer = post("/v1/chat/completions", json={"messages": [broken, user]})
        assert error(answer, 400, "invalid_parameters")["param"] == "messages"
    parts = {"role": "user", "content": ["not a part"]}
    error(post("/v1/chat/completions", json={"messages": [parts, user]}), 400, "invalid_parameters")
    error(
        post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}], "metadata": {"steps": -1}},
        ),
        400,
        "invalid_parameters",
    )
    error(
        post("/v1/images/generations", json={"prompt": "x", "size": "big"}),
        400,
        "invalid_parameters",
    )
    error(
        post("/v1/images/generations", json={"prompt": "x", "response_format": "gif"}),
        400,
        "invalid_parameters",
    )
    error(httpx.get(bare.url + "/v1/nowhere"), 404, "not_found")
    error(httpx.delete(bare.url + "/v1/jobs"), 405, "method_not_allowed")
    error(httpx.get(bare.url + "/v1/jobs/0123"), 404, "not_found")
    error(httpx.get(bare.url + "/v1/jobs?limit=0"), 400, "invalid_parameters")
    error(httpx.get(bare.url + "/v1/jobs?status=lost"), 400, "invalid_parameters")
    error(httpx.get(bare.url + "/v1/batches/none"), 404, "not_found")
    error(
        post("/v1/batches", json={"requests": [{"prompt": "a"}, {"prompt": 3}]}),
        400,
        "invalid_parameters",
    )
    assert sum(bare.store.jobs.counts().values()) == 0  # nothing half-done
    assert httpx.get(bare.url + "/openapi.json").json()["paths"]["/v1/jobs"]["post"]


def test_hostile_json_gets_a_4xx_at_every_door(make_bare: Callable[..., Bare]) -> None:
    """Integers of more digits than Python converts, and a key that is a lone surrogate,
    once answered 500; a batch larger than the queue can ever hold once answered 503."""
    bare = make_bare(**{"generation.max_queue": "3"})
    digits = b"9" * 5000
    for path in ("/v1/jobs", "/v1/images/generations", "/v1/chat/completions", "/v1/batches"):
        long_number = httpx.post(
            bare.url + path, content=b'{"prompt": "x", "seed": ' + digits + b"}"
        )
        assert long_number.status_code == 400, (path, long_number.text)
        error = long_number.json()["error"]
        assert error["code"] == "invalid_json" and "more than 4300 digits" in error["message"]
        surrogate = httpx.post(
            bare.url + path,
            content=b'{"prompt": "a", "\\ud800": 1}',
            headers={"Content-Type": "application/json"},
        )
        assert surrogate.status_code == 400, (path, surrogate.text)
        assert surrogate.json()["error"]["code"] == "invalid_parameters"
    unknown = httpx.post(bare.url + "/v1/jobs", content=b'{"prompt": "a", "\\ud800": 1}')
    assert unknown.json()["error"]["param"] == "\\ud800"  # shown escaped
    too_many = httpx.post(
        bare.url + "/v1/batches", json={"requests": [{"prompt": str(i)} for i in range(4)]}
    )
    assert too_many.status_code == 413, too_many.text
    assert too_many.json()["error"]["code"] == "batch_too_large"
    assert "Retry-After" not in too_many.headers  # waiting would not help
    assert sum(bare.store.jobs.counts().values()) == 0


def test_idempotency_keys_and_the_native_job_api(make_bare: Callable[..., Bare]) -> None:
    bare = make_bare()
    first = httpx.post(
        bare.url + "/v1/jobs", json={"prompt": "once"}, headers={"Idempotency-Key": "k1"}
    )
    again = httpx.post(
        bare.url + "/v1/jobs", json={"prompt": "once"}, headers={"Idempotency-Key": "k1"}
    )
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"] and again.json()["created"] is False
    clash = httpx.post(
        bare.url + "/v1/jobs", json={"prompt": "other"}, headers={"Idempotency-Key": "k1"}
    )
    assert clash.status_code == 409 and clash.json()["error"]["code"] == "idempotency_conflict"
    job_id = first.json()["id"]
    cancelled = httpx.post(f"{bare.url}/v1/jobs/{job_id}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert httpx.post(f"{bare.url}/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    other = httpx.post(bare.url + "/v1/jobs", json={"prompt": "finished"}).json()["id"]
    (claimed,) = bare.store.leases.claim_batch("r", 1, lease_s=60)
    bare.store.leases.succeed(claimed.id, "r", {"images": []})
    refused = httpx.post(f"{bare.url}/v1/jobs/{other}/cancel")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "invalid_state"
    assert httpx.post(f"{bare.url}/v1/jobs/{job_id}/retry").json()["status"] == "queued"
    batch = httpx.post(
        bare.url + "/v1/batches", json={"requests": [{"prompt": "a"}, {"prompt": "b"}]}
    )
    assert batch.status_code == 202
    view = httpx.get(f"{bare.url}/v1/batches/{batch.json()['id']}").json()
    assert view["counts"]["queued"] == 2 and len(view["jobs"]) == 2
    listed = httpx.get(f"{bare.url}/v1/jobs?batch_id={batch.json()['id']}").json()
    assert len(listed["data"]) == 2


def test_auth_on_and_off(make_bare: Callable[..., Bare]) -> None:
    open_server = make_bare()
    assert httpx.get(open_server.url + "/v1/models").status_code == 200
    locked = make_bare(**{"server.api_keys": {"ops": "k-ops", "sam": "k-sam"}})
    assert httpx.get(locked.url + "/v1/models").json()["error"]["code"] == "unauthorized"
    assert httpx.get(locked.url + "/v1/models", headers={"X-Api-Key": "k-ops"}).status_code == 200
    ok = httpx.post(
        locked.url + "/v1/jobs",
        json={"prompt": "mine"},
        headers={"Authorization": "Bearer k-sam"},
    )
    assert ok.status_code == 202 and ok.json()["client"] == "sam"  # which key submitted it
    assert (
        httpx.get(locked.url + "/v1/jobs", headers={"Authorization": "Bearer k-sa"}).status_code
        == 401
    )
    both = {"X-Api-Key": "k-ops", "Authorization": "Bearer k-ops"}
    assert httpx.get(locked.url + "/v1/models", headers=both).status_code == 200
    for wrong in ("Bearer k-sam", "Bearer", "Basic b3BzOms=", "k-ops"):
        # every credential a request carries must be right: a second, different or
        # malformed one beside a good X-Api-Key is refused, never ignored
        answer = httpx.get(
            locked.url + "/v1/models", headers={"X-Api-Key": "k-ops", "Authorization": wrong}
        )
        assert answer.status_code == 401, wrong
        assert answer.json()["error"]["code"] == "unauthorized"
    assert httpx.get(locked.url + "/health").status_code == 200  # open
    assert httpx.get(locked.url + "/metrics").status_code == 200
    assert httpx.get(locked.url + "/docs").status_code == 200


def test_docs_is_the_api_reference_as_html(make_bare: Callable[..., Bare]) -> None:
    """ALICE's own API tests expect GET /docs to answer 200 with HTML (no redirect)."""
    bare = make_bare(**{"server.api_keys": {"ops": "k-ops"}})
    page = httpx.get(bare.url + "/docs", follow_redirects=False)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.text.startswith("<!doctype html>")
    paths = httpx.get(bare.url + "/openapi.json").json()["paths"]
    for path, methods in paths.items():
        for method in methods:
            assert f'<span class="method">{method.upper()}</span> <code>{path}</code>' in page.text
    assert "Queue one job" in page.text  # the handlers' own descriptions
    assert "&quot;prompt&quot;: &quot;a lighthouse at dusk&quot;" in page.text  # escaped
    assert "Needs an API key." in page.text
    assert 'href="/web/#/docs"' in page.text and 'href="/openapi.json"' in page.text


def test_a_client_gone_mid_body_is_one_info_line(
    make_bare: Callable[..., Bare], caplog: pytest.LogCaptureFixture
) -> None:
    bare = make_bare()
    host, port = bare.url.removeprefix("http://").split(":")
    caplog.set_level(logging.INFO)
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"prompt": "half'
        )
        time.sleep(0.2)
    wait_until(lambda: any("went away" in r.getMessage() for r in caplog.records), timeout=10)
    time.sleep(0.3)
    gone = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(gone) == 1 and gone[0].levelno == logging.INFO and gone[0].exc_info is None
    assert "after 16 bytes" in gone[0].getMessage()  # what it sent of the body
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert sum(bare.store.jobs.counts().values()) == 0


def test_every_answer_carries_the_security_headers(make_bare: Callable[..., Bare]) -> None:
    bare = make_bare(**{"server.public_url": "https://images.example.org/spool"})
    job = httpx.post(bare.url + "/v1/jobs", json={"prompt": "x"}).json()
    answers = {
        "json": httpx.get(bare.url + "/v1/models"),
        "open": httpx.get(bare.url + "/health"),
        "error": httpx.get(bare.url + "/v1/nowhere"),
        "web": httpx.get(bare.url + "/web/"),
        "script": httpx.get(bare.url + "/web/app.js"),
        "docs": httpx.get(bare.url + "/docs"),
    }
    with httpx.stream("GET", f"{bare.url}/v1/jobs/{job['id']}/events", timeout=10) as stream:
        answers["stream"] = stream
    for name, answer in answers.items():
        headers = answer.headers
        assert headers["x-content-type-options"] == "nosniff", name
        assert headers["x-frame-options"] == "DENY", name
        assert headers["referrer-policy"] == "no-referrer", name
        policy = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy, name
    web_policy = answers["web"].headers["content-security-policy"]
    assert "script-src 'self'" in web_policy
    assert "img-src 'self' data: blob: https://images.example.org" in web_policy
    assert "<script>" not in answers["web"].text  # nothing inline for the policy to refuse
    docs_policy = answers["docs"].headers["content-security-policy"]
    assert docs_policy.startswith("default-src 'none'; style-src 'sha256-")


@pytest.mark.sqlite_only
def test_a_full_database_disk_is_503_and_health_says_degraded(
    make_bare: Callable[..., Bare],
) -> None:
    """A real SQLite file that cannot grow (max_page_count: as a full disk answers)."""
    bare = make_bare()
    assert httpx.get(bare.url + "/health").json()["status"] == "ok"
    engine = bare.store.db.engine
    with engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()

    def cap(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    sqlalchemy.event.listen(engine.pool, "connect", cap)
    engine.dispose()  # every connection from now on has the cap
    answers = [
        httpx.post(bare.url + "/v1/jobs", json={"prompt": f"fill {i} " + "x" * 2000})
        for i in range(40)
    ]
    refused = [a for a in answers if a.status_code != 202]
    assert refused, "the database never filled up"
    full = refused[0]
    assert full.status_code == 503, full.text
    assert full.json()["error"]["code"] == "database_full"
    assert "disk is full" in full.json()["error"]["message"]
    assert full.headers["Retry-After"] == "30"
    health = httpx.get(bare.url + "/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "degraded"
    assert body["problems"][0]["code"] == "database_full"
    accepted = sum(a.status_code == 202 for a in answers)
    assert sum(bare.store.jobs.counts().values()) == accepted  # nothing half-recorded


def test_forwarded_headers_are_believed_only_from_trusted_proxies(
    make_bare: Callable[..., Bare],
) -> None:
    forwarded = {
        "X-Forwarded-Host": "spool.example.org",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-For": "203.0.113.7",
    }

    def image_urls(bare: Bare, headers: dict[str, str]) -> list[str]:
        job = bare.store.jobs.enqueue(JobSpec(prompt="x", model="sd/tiny"), source="api").job
        (claimed,) = bare.store.leases.claim_batch("r", 1, lease_s=60)
        bare.store.leases.succeed(claimed.id, "r", {"images": [{"file": f"{job.id}-0.png"}]})
        return httpx.get(f"{bare.url}/v1/jobs/{job.id}", headers=headers).json()["image_urls"]

    direct = make_bare()  # no trusted proxies: a client cannot choose the URLs' host
    (url,) = image_urls(direct, forwarded)
    assert url.startswith(direct.url + "/images/")
    proxied = make_bare(**{"server.trusted_proxies": ["127.0.0.1"]})
    (url,) = image_urls(proxied, forwarded)
    assert url.startswith("https://spool.example.org/images/")
    (url,) = image_urls(proxied, {"X-Forwarded-Host": "bad host/with space"})
    assert url.startswith(proxied.url + "/images/")  # nonsense is not believed

    # The client's address (for rate limits) is the forwarded one, behind the proxy.
    limited = make_bare(
        **{
            "server.trusted_proxies": ["127.0.0.1"],
            "server.api_keys": {"ops": "k"},
            "server.auth_failures_per_minute": "5",
        }
    )
    for _ in range(5):
        wrong = {"X-Api-Key": "no", "X-Forwarded-For": "203.0.113.7"}
        assert httpx.get(limited.url + "/v1/jobs", headers=wrong).status_code == 401
    again = {"X-Api-Key": "no", "X-Forwarded-For": "203.0.113.7"}
    assert httpx.get(limited.url + "/v1/jobs", headers=again).status_code == 429
    other = {"X-Api-Key": "k", "X-Forwarded-For": "198.51.100.9"}
    assert httpx.get(limited.url + "/v1/jobs", headers=other).status_code == 200


def test_a_page_on_another_site_cannot_change_anything(make_bare: Callable[..., Bare]) -> None:
    """With no keys (the default), what a browser can be made to send on its user's
    behalf: a form post, a no-preflight fetch, a request to a rebound DNS name."""
    bare = make_bare(**{"server.cors_origins": ["https://friend.example"]})
    job = {"prompt": "x"}
    text = json.dumps(job)
    own_origin = bare.url

    def post(path: str, **options: Any) -> httpx.Response:
        return httpx.post(bare.url + path, timeout=10, **options)

    refused = {
        "form": post(
            "/v1/jobs", content=text, headers={"Content-Type": "application/x-www-form-urlencoded"}
        ),
        "text": post("/v1/jobs", content=text, headers={"Content-Type": "text/plain"}),
        "multipart": post("/v1/jobs", files={"prompt": ("p", b"x")}),
        "origin": post("/v1/jobs", json=job, headers={"Origin": "https://evil.example"}),
        "null-origin": post("/v1/jobs", json=job, headers={"Origin": "null"}),
        "fetch-site": post("/v1/jobs", content=text, headers={"Sec-Fetch-Site": "cross-site"}),
        "default-model": post(
            "/v1/models/default",
            json={"model": "sd/tiny"},
            headers={"Origin": "https://evil.example"},
        ),
        "rebinding": post("/v1/jobs", json=job, headers={"Host": "evil.example"}),
        "rebinding-read": httpx.get(bare.url + "/v1/jobs", headers={"Host": "evil.example:80"}),
    }
    expected = {
        "form": (415, "unsupported_media_type"),
        "text": (415, "unsupported_media_type"),
        "multipart": (415, "unsupported_media_type"),
        "origin": (403, "cross_origin_refused"),
        "null-origin": (403, "cross_origin_refused"),
        "fetch-site": (403, "cross_origin_refused"),
        "default-model": (403, "cross_origin_refused"),
        "rebinding": (421, "invalid_host"),
        "rebinding-read": (421, "invalid_host"),
    }
    for name, answer in refused.items():
        got = (answer.status_code, answer.json()["error"]["code"])
        assert got == expected[name], (name, answer.text)
    assert sum(bare.store.jobs.counts().values()) == 0
    assert not (bare.outbox.parent / "models" / ".default").exists()

    # What is allowed: the same origin, an origin CORS allows, no Origin (scripts, SAM),
    # JSON with a charset, loopback names.
    allowed = [
        post("/v1/jobs", json=job, headers={"Origin": own_origin}),
        post("/v1/jobs", json=job, headers={"Origin": "https://friend.example"}),
        post("/v1/jobs", content=text),
        post("/v1/jobs", content=text, headers={"Content-Type": "application/json; charset=utf-8"}),
        post("/v1/jobs", json=job, headers={"Host": "localhost"}),
    ]
    assert [a.status_code for a in allowed] == [202] * 5, [a.text for a in allowed]


def test_allowed_hosts_widen_and_a_public_bind_answers_any_name(
    make_bare: Callable[..., Bare],
) -> None:
    named = make_bare(**{"server.allowed_hosts": ["spool.lan"]})
    assert httpx.get(named.url + "/health", headers={"Host": "spool.lan:8080"}).status_code == 200
    assert httpx.get(named.url + "/health", headers={"Host": "other.lan"}).status_code == 421
    public = make_bare(**{"server.host": "0.0.0.0"})
    assert httpx.get(public.url + "/health", headers={"Host": "gpu-box.lan"}).status_code == 200


def test_errors_starlette_answers_itself_are_json_too(make_bare: Callable[..., Bare]) -> None:
    bare = make_bare(**{"server.cors_origins": ["https://friend.example"]})
    _, image = served_image_job(bare)
    answers = {
        "cors": httpx.options(
            bare.url + "/v1/jobs",
            headers={
                "Origin": "https://evil.example",
                "Access-Control-Request-Method": "POST",
            },
        ),
        "range": httpx.get(image, headers={"Range": "bytes=999999-"}),
        "bad-range": httpx.get(image, headers={"Range": "bytes=9-2"}),
        "static-range": httpx.get(bare.url + "/web/app.js", headers={"Range": "bytes=99999999-"}),
    }
    for name, answer in answers.items():
        assert answer.status_code in (400, 416), (name, answer.status_code)
        assert answer.headers["content-type"] == "application/json", (name, answer.text)
        error = answer.json()["error"]
        assert error["message"] and error["code"], name
    assert answers["cors"].json()["error"]["code"] == "invalid_request"
    assert "CORS" in answers["cors"].json()["error"]["message"]
    assert answers["range"].json()["error"]["code"] == "range_not_satisfiable"
    whole = httpx.get(image, headers={"Range": "bytes=0-9"})  # a good range still works
    assert whole.status_code == 206 and len(whole.content) == 10
    host, port = bare.url.removeprefix("http://").split(":")
    for garbage in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n"):
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(garbage)  # never reaches the app: the HTTP protocol answers
            answer = b""
            while chunk := raw.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), answer
        assert b"content-type: application/json" in head.lower()
        assert b"x-content-type-options: nosniff" in head.lower()
        assert json.loads(body)["error"]["code"] == "invalid_request"


def test_open_event_streams_are_capped_per_client(make_bare: Callable[..., Bare]) -> None:
    bare = make_bare(**{"server.max_streams_per_client": "2"})
    job = httpx.post(bare.url + "/v1/jobs", json={"prompt": "waits: no runner"}).json()
    events = f"{bare.url}/v1/jobs/{job['id']}/events"
    chat = {"messages": [{"role": "user", "content": "x"}], "stream": True}
    with contextlib.ExitStack() as open_streams:
        for _ in range(2):
            stream = open_streams.enter_context(httpx.stream("GET", events, timeout=10))
            assert stream.status_code == 200
        third = httpx.get(events, timeout=10)
        assert third.status_code == 429 and third.json()["error"]["code"] == "rate_limit_exceeded"
        assert "max_streams_per_client" in third.json()["error"]["message"]
        refused_chat = httpx.post(bare.url + "/v1/chat/completions", json=chat, timeout=10)
        assert refused_chat.status_code == 429
        assert sum(bare.store.jobs.counts().values()) == 1  # the refused chat queued nothing
    # Closed: their slots come back as the server notices, both of them.
    wait_until(lambda: _streams_open_at_once(events, 2), timeout=10)


def _streams_open_at_once(url: str, count: int) -> bool:
    with contextlib.ExitStack() as open_streams:
        statuses = [
            open_streams.enter_context(httpx.stream("GET", url, timeout=10)).status_code
            for _ in range(count)
        ]
    return statuses == [200] * count


def test_a_body_sent_too_slowly_is_refused(make_bare: Callable[..., Bare]) -> None:
    bare = make_bare(**{"server.body_timeout_s": "1"})
    host, port = bare.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(
            b'POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{"prompt": '
        )
        started = time.monotonic()
        received = raw.recv(65536)
        waited = time.monotonic() - started
        head, _, body = received.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))
        while len(body) < length and (more := raw.recv(65536)):  # the body may come apart
            body += more
        answer = (head + b"\r\n\r\n" + body).decode()
    assert answer.startswith("HTTP/1.1 408"), answer
    assert '"request_timeout"' in answer and "server.body_timeout_s" in answer
    assert 0.8 < waited < 8
    assert sum(bare.store.jobs.counts().values()) == 0


def test_prometheus_totals_only_grow(make_bare: Callable[..., Bare]) -> None:
    """Counters and histograms are totals kept as jobs finish: purging the jobs (or an
    hour passing) does not lower them, so rate() and histogram_quantile() work."""
    bare = make_bare()

    def scrape() -> dict[str, float]:
        text = httpx.get(bare.url + "/metrics?format=prometheus").text
        values = {}
        for line in text.splitlines():
            if line.startswith(
                ("alice_jobs_finished_total", "alice_images_total", "alice_job_run")
            ):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    for i in range(3):
        bare.store.jobs.enqueue(JobSpec(prompt=f"x{i}", model="sd/tiny", n=2), source="api")
        (job,) = bare.store.leases.claim_batch("r", 1, lease_s=60)
        bare.store.leases.succeed(job.id, "r", {"images": []})
    before = scrape()
    assert before['alice_jobs_finished_total{state="succeeded"}'] == 3
    assert before["alice_images_total"] == 6
    assert before["alice_job_run_seconds_count"] == 3
    assert before['alice_job_run_seconds_bucket{le="+Inf"}'] == 3
    bare.store.jobs.purge(before=datetime.now(UTC) + timedelta(days=1))
    assert sum(bare.store.jobs.counts().values()) == 0
    assert scrape() == before


def test_the_openapi_description_says_what_the_server_does(make_bare: Callable[..., Bare]) -> None:
    bare = make_bare(**{"server.api_keys": {"ops": "k"}})
    key = {"X-Api-Key": "k"}
    document = httpx.get(bare.url + "/openapi.json").json()
    paths = document["paths"]
    # Every dialect's routes, grouped by dialect; a key wherever one is needed.
    tags = {path: next(iter(operations.values()))["tags"] for path, operations in paths.items()}
    assert tags["/sdapi/v1/txt2img"] == ["AUTOMATIC1111"] and tags["/generate"] == ["GTX 1060"]
    assert tags["/api/v1/generate"] == ["AbleRefusal"] and tags["/v1/txt2img"] == ["REST plan"]
    assert tags["/livez"] == ["OpenAI and ALICE"]
    assert (
        "security" in paths["/sdapi/v1/txt2img"]["post"]
        and "security" in paths["/generate"]["post"]
    )
    assert (
        "security" not in paths["/livez"]["get"]
        and "security" not in paths["/api/v1/health"]["get"]
    )
    assert httpx.get(bare.url + "/readyz").status_code == 503  # no runner reports here
    not_ready = paths["/readyz"]["get"]["responses"]["503"]["content"]["application/json"]
    assert not_ready["schema"]  # its own body, described
    ids = [op["operationId"] for operations in paths.values() for op in operations.values()]
    assert len(ids) == len(set(ids))  # unique, as OpenAPI asks (one handler serves two paths)
    assert "503" in paths["/readyz"]["get"]["responses"]
    images = paths["/v1/images/generations"]["post"]["requestBody"]["content"]["application/json"]
    assert "id" not in images["schema"]["properties"]  # it refuses an id
    refused = httpx.post(
        bare.url + "/v1/images/generations", json={"prompt": "x", "id": "a"}, headers=key
    )
    assert refused.status_code == 400
    jobs = paths["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert jobs["additionalProperties"] is False and jobs["properties"]["prompt"]["pattern"]
    assert jobs["properties"]["seed"]["minimum"] == -1  # -1: random, as the server takes it
    random_seed = httpx.post(bare.url + "/v1/jobs", json={"prompt": "x", "seed": -1}, headers=key)
    assert random_seed.status_code == 202
    default = paths["/v1/models/default"]["post"]["requestBody"]["content"]["application/json"]
    assert default["schema"]["properties"]["model"]["pattern"]
    pattern = re.compile(jobs["properties"]["prompt"]["pattern"])
    for text in ("", "   ", "\x1d\u3000", "a\x00"):  # what the pattern refuses, the server does
        assert not pattern.search(text)
        blank = httpx.post(bare.url + "/v1/jobs", json={"prompt": text}, headers=key)
        assert blank.status_code == 400
    assert pattern.search("\ufeff") and pattern.search(" a ")
    listed = {p["name"] for p in paths["/v1/jobs"]["get"]["parameters"]}
    assert listed == {"status", "batch_id", "model", "source", "limit", "before"}
    for path, operations in paths.items():
        for method, operation in operations.items():
            answers = operation["responses"]
            done = [status for status in answers if status.startswith("2")]
            assert done and "421" in answers and "default" in answers, (path, method)
            for status in done:  # every answer that is not an error has its shape
                assert answers[status]["content"], (path, method, status)
            if path.startswith("/v1/") and path not in document["x-open-routes"]:
                assert {"401", "429", "503"} <= set(answers), (path, method)
            queried = any(p["in"] == "query" for p in operation.get("parameters", []))
            if "requestBody" in operation or queried:  # 422 in the dialects that say so
                assert {"400", "422"} & set(answers), (path, method)
            if path in document["x-open-routes"]:
                assert "security" not in operation, path  # no key needed, none asked for
    # Every door that reads a body says what it takes (none is described by hand apart
    # from its route: the routes' contracts are the description).
    readers = ["/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/options",
               "/sdapi/v1/png-info", "/generate", "/api/v1/generate", "/v1/txt2img",
               "/v1/img2img", "/v1/models/load", "/api/v1/generate/txt2img", "/v1/jobs",
               "/v1/batches", "/v1/chat/completions", "/v1/images/edits"]  # fmt: skip
    for path in readers:
        assert "requestBody" in paths[path]["post"], path
    # The open routes are the ones the server answers without a key.
    for path in document["x-open-routes"]:
        operation = next(iter(paths[path].values()))
        if "parameters" not in operation and "{" not in path:
            assert httpx.get(bare.url + path).status_code != 401, path
    assert {"/health", "/livez", "/readyz", "/v1/auth/login"} <= set(document["x-open-routes"])
    assert "202" in paths["/v1/jobs"]["post"]["responses"]
    assert "504" in paths["/v1/chat/completions"]["post"]["responses"]
    wrong_method = httpx.request("TRACE", bare.url + "/v1/jobs", headers=key)
    assert wrong_method.status_code == 405
    assert set(wrong_method.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


def test_a_request_head_sent_too_slowly_is_cut_off(make_bare: Callable[..., Bare]) -> None:
    """A byte-at-a-time client (slowloris) loses its connection at
    server.header_timeout_s; normal requests are unaffected."""
    bare = make_bare(**{"server.header_timeout_s": "1"})
    host, port = bare.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        closed = False
        for _ in range(20):  # a header line every 0.25 s, never the blank line
            time.sleep(0.25)
            try:
                raw.sendall(b"X-Slow: y\r\n")
                raw.settimeout(0.01)
                closed = raw.recv(1024) == b""
            except (BlockingIOError, TimeoutError):
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            if closed:
                break
        waited = time.monotonic() - started
    assert closed, "the slow client kept its connection"
    assert 0.9 < waited < 3
    with httpx.Client(base_url=bare.url) as client:
        assert [client.get("/health").status_code for _ in range(3)] == [200] * 3


def test_guessing_keys_is_rate_limited_by_address(make_bare: Callable[..., Bare]) -> None:
    """A minute's worth of wrong keys is answered 401; then the address gets 429 with
    Retry-After, even with the right key, while other requests are not slowed."""
    locked = make_bare(
        **{"server.api_keys": {"ops": "k-ops"}, "server.auth_failures_per_minute": "10"}
    )
    with httpx.Client(base_url=locked.url) as client:
        wrong = [client.get("/v1/jobs", headers={"X-Api-Key": f"guess-{i}"}) for i in range(10)]
        assert [r.status_code for r in wrong] == [401] * 10
        blocked = client.get("/v1/jobs", headers={"X-Api-Key": "guess-10"})
        assert blocked.status_code == 429 and blocked.json()["error"]["code"] == (
            "rate_limit_exceeded"
        )
        assert int(blocked.headers["Retry-After"]) >= 1
        right_key = client.get("/v1/jobs", headers={"X-Api-Key": "k-ops"})
        assert right_key.status_code == 429  # no more guesses, not even a right one
        assert client.get("/health").status_code == 200  # open routes are not limited
    unlimited = make_bare(
        **{"server.api_keys": {"ops": "k-ops"}, "server.auth_failures_per_minute": "0"}
    )
    statuses = {
        httpx.get(unlimited.url + "/v1/jobs", headers={"X-Api-Key": "no"}).status_code
        for _ in range(40)
    }
    assert statuses == {401}


def test_queue_full_and_rate_limits(make_bare: Callable[..., Bare]) -> None:
    full = make_bare(**{"generation.max_queue": "1"})
    assert httpx.post(full.url + "/v1/jobs", json={"prompt": "a"}).status_code == 202
    refused = httpx.post(full.url + "/v1/jobs", json={"prompt": "b"})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_full"
    assert int(refused.headers["retry-after"]) > 0
    limited = make_bare(**{"server.rate_limit_per_minute": "30"})
    answers = [httpx.get(limited.url + "/v1/jobs").status_code for _ in range(12)]
    assert answers[:5] == [200] * 5 and 429 in answers
    client = openai.OpenAI(base_url=limited.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.models.list()


def test_images_are_served_only_by_their_exact_names(make_bare: Callable[..., Bare]) -> None:
    bare = make_bare()
    job_id, image = served_image_job(bare)
    secret = image.split("/")[-2]
    (bare.outbox.parent / "secret.txt").write_text("no")
    assert httpx.get(image).status_code == 200
    jpeg = httpx.get(image.replace(".png", ".jpeg") + "?compression=0")
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
    for bad in ("101", "-1", "x"):  # the same refusal whichever format is asked
        for name in (image, image.replace(".png", ".webp")):
            refused = httpx.get(f"{name}?compression={bad}")
            assert refused.status_code == 400, (name, bad)
            assert refused.json()["error"]["param"] == "compression"
    for attempt in (
        f"/images/{job_id}-0.png",  # without the job's image secret
        f"/images/{secret}/{job_id}-1.png",
        f"/images/{secret}/..%2Fsecret.txt",
        f"/images/{secret}/{job_id}%2F{job_id}-0.png",
        f"/images/{secret}/{job_id.upper()}-0.png",
        f"/images/{job_id}-1.png",
        "/images/..%2Fsecret.txt",
        "/images/%2e%2e%2f%2e%2e%2falice.db",
        f"/images/{job_id}%2F{job_id}-0.png",
        "/images/../alice.db",
        f"/images/{job_id.upper()}-0.png",
        "/images/result.json",
    ):
        response = httpx.get(bare.url + attempt)
        assert response.status_code == 404, attempt
        assert response.json()["error"]["code"] == "not_found"


def test_images_are_only_regular_files_not_links(make_bare: Callable[..., Bare]) -> None:
    bare = make_bare()
    job_id, image = served_image_job(bare)
    folder = bare.outbox / job_id
    secret = bare.outbox.parent / "secret.png"
    Image.new("RGB", (8, 8), "red").save(secret)
    (folder / f"{job_id}-2.png").symlink_to(secret)  # to a file outside the outbox
    (folder / f"{job_id}-3.png").symlink_to(folder / f"{job_id}-0.png")  # not one it wrote
    (folder / f"{job_id}-4.png").mkdir()
    assert httpx.get(image).status_code == 200
    for index in (2, 3, 4):
        response = httpx.get(image.replace(f"{job_id}-0.png", f"{job_id}-{index}.png"))
        assert response.status_code == 404, index
        assert response.json()["error"]["code"] == "not_found"


def test_loras_at_every_door_are_checked_before_anything_is_queued(
    make_bare: Callable[..., Bare],
) -> None:
    bare = make_bare()
    loras = bare.models / "loras"
    to_k = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight"
    for name, width in (("grain", 768), ("xl", 2048)):
        write_lora_file(loras / f"{name}.safetensors", {to_k: (4, width)})
    post = lambda path, **kw: httpx.post(bare.url + path, timeout=30, **kw)  # noqa: E731

    listed = httpx.get(bare.url + "/v1/loras").json()["data"]
    assert [(x["id"], x["family"], x["status"]) for x in listed] == [
        ("lora/grain", "sd1", "ok"),
        ("lora/xl", "sdxl", "ok"),
    ]
    assert "path" not in listed[0]  # the server's file layout stays its own

    job = post("/v1/jobs", json={"prompt": "a fox <lora:grain:0.5>", "loras": ["lora/xl"]})
    assert job.status_code == 400 and job.json()["error"]["param"] == "loras"
    assert "lora/xl is a SDXL LoRA" in job.json()["error"]["message"]
    missing = post("/v1/jobs", json={"prompt": "a fox", "loras": [{"name": "nope"}]})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "lora_not_found"
    batch = post(
        "/v1/batches",
        json={"requests": [{"prompt": "one", "loras": ["grain"]}, {"prompt": "two <lora:nope>"}]},
    )
    assert batch.status_code == 404  # all or nothing
    chat = post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "x"}],
            "sam_config": {"lora_paths": ["/srv/loras/nope.safetensors"]},
        },
    )
    assert chat.status_code == 404 and chat.json()["error"]["code"] == "lora_not_found"
    images = post("/v1/images/generations", json={"prompt": "x", "loras": [{"name": "xl"}]})
    assert images.status_code == 400
    assert not any(bare.store.jobs.counts().values())  # none of them queued anything

    made = post("/v1/jobs", json={"prompt": "a fox <lora:grain:0.5>", "seed": 3})
    assert made.status_code == 202, made.text
    spec = made.json()["spec"]
    assert spec["prompt"] == "a fox" and spec["loras"] == [{"name": "lora/grain", "scale": 0.5}]
    alice = post(
        "/v1/jobs",
        json={
            "prompt": "a fox",
            "seed": 3,
            "lora_paths": ["grain.safetensors"],
            "lora_scales": [0.5],
        },
    )
    assert alice.json()["spec"] == spec


def png_base64(size: tuple[int, int] = (64, 64), seed: int | None = 1) -> str:
    """A PNG of noise (of white when `seed` is None), as base64."""
    if seed is None:
        pixels = np.full((size[1], size[0], 3), 255, np.uint8)
    else:
        pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_image_inputs_at_the_doors_and_every_bad_one_refused(
    make_bare: Callable[..., Bare], tmp_path: Path
) -> None:
    bare = make_bare(**{"server.max_body_bytes": "2048"})
    inputs_dir = tmp_path / "var" / "inputs"
    post = lambda path, **kw: httpx.post(bare.url + path, timeout=30, **kw)  # noqa: E731
    image, mask = png_base64((96, 64)), png_base64((96, 64), seed=None)

    def refused(path: str, body: dict[str, Any], field: str, status: int = 400) -> None:
        answer = post(path, json=body)
        assert answer.status_code == status, answer.text
        assert answer.json()["error"].get("param") == field, answer.text

    chat = {"messages": [{"role": "user", "content": "a boat"}]}
    refused("/v1/jobs", {"prompt": "x", "init_image": "@@@"}, "init_image")
    refused(
        "/v1/jobs", {"prompt": "x", "init_image": base64.b64encode(b"no").decode()}, "init_image"
    )
    refused("/v1/jobs", {"prompt": "x", "mask_image": mask}, "mask_image")
    refused("/v1/jobs", {"prompt": "x", "init_image": image, "strength": 0}, "strength")
    refused("/v1/jobs", {"prompt": "x", "init_image": image, "strength": 1.01}, "strength")
    refused("/v1/batches", {"requests": [{"prompt": "x", "init_image": "@@@"}]}, "init_image")
    refused("/v1/chat/completions", {**chat, "sam_config": {"input_images": ["@@@"]}}, "init_image")
    big = png_base64((2100, 2100), seed=None)
    refused("/v1/jobs", {"prompt": "x", "init_image": big}, "init_image")  # max_input_pixels
    assert not any(bare.store.jobs.counts().values()) and not inputs_dir.exists()
    # The image routes take bodies up to max_image_body_bytes; the others keep the small one.
    assert len(image) > 2048
    assert post("/v1/models/default", json={"model": "x" * 3000}).status_code == 413

    made = post("/v1/jobs", json={"prompt": "a boat", "init_image": image, "id": "boat-1"})
    assert made.status_code == 202, made.text
    job = made.json()
    assert job["spec"]["init_image"].startswith("sha256:") and job["spec"]["strength"] == 0.75
    assert (job["spec"]["width"], job["spec"]["height"]) == (96, 64)
    assert (inputs_dir / job["id"] / "init.png").exists()
    again = post("/v1/jobs", json={"prompt": "a boat", "init_image": image, "id": "boat-1"})
    assert again.status_code == 200 and again.json()["id"] == job["id"]
    assert sorted(p.name for p in inputs_dir.iterdir()) == [job["id"]]  # the repeat's went
    batch = post(
        "/v1/batches",
        json={
            "requests": [{"prompt": "a", "init_image": image, "mask_image": mask}, {"prompt": "b"}]
        },
    )
    assert batch.status_code == 202, batch.text
    first, second = batch.json()["job_ids"]
    assert sorted(p.name for p in (inputs_dir / first).iterdir()) == ["init.png", "mask.png"]
    assert not (inputs_dir / second).exists()
    conflict = post("/v1/jobs", json={"prompt": "other", "init_image": image, "id": "boat-1"})
    assert conflict.status_code == 409
    assert len(list(inputs_dir.iterdir())) == 2  # a refused request leaves nothing


def test_input_image_urls_are_fetched_under_the_address_rules(
    make_bare: Callable[..., Bare], tmp_path: Path
) -> None:
    """ALICE's input_image_urls: by default a loopback URL is 400 forbidden_url with
    nothing queued or stored; on a server that allows private URLs the image is fetched
    and stored with the job, at the native and batch doors."""
    image = base64.b64decode(png_base64((96, 64)))
    with serving(Remote(files={"/in.png": image})) as remote:
        link = f"{remote.url}/in.png"
        strict = make_bare()
        answer = httpx.post(
            strict.url + "/v1/jobs", json={"prompt": "a boat", "input_image_urls": [link]}
        )
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert (error["code"], error["param"]) == ("forbidden_url", "input_image_urls")
        assert "allow_private_urls" in error["message"]
        assert not any(strict.store.jobs.counts().values()) and remote.requests == []
        assert not (tmp_path / "var" / "inputs").exists()

        trusting = make_bare(**{"models.allow_private_urls": "true"})
        made = httpx.post(
            trusting.url + "/v1/jobs", json={"prompt": "a boat", "input_image_urls": [link]}
        )
        assert made.status_code == 202, made.text
        job = made.json()
        assert job["spec"]["init_image"] == "sha256:" + hashlib.sha256(image).hexdigest()
        assert (job["spec"]["width"], job["spec"]["height"]) == (96, 64)
        stored = tmp_path / "var" / "inputs" / job["id"] / "init.png"
        assert stored.read_bytes() == image
        batch = httpx.post(
            trusting.url + "/v1/batches",
            json={"requests": [{"prompt": "a", "input_image_urls": [link]}, {"prompt": "b"}]},
        )
        assert batch.status_code == 202, batch.text
        missing = httpx.post(
            trusting.url + "/v1/jobs",
            json={"prompt": "a boat", "input_image_urls": [f"{remote.url}/gone.png"]},
        )
        assert missing.status_code == 400 and "answered 404" in missing.text
        assert missing.json()["error"]["param"] == "input_image_urls"
        assert len(remote.requests) == 3


def test_the_download_routes_queue_list_read_and_cancel(make_bare: Callable[..., Bare]) -> None:
    """Every bad body is a 400 naming its field with nothing queued (a loopback URL is
    forbidden_url at once); a good one is 202 with the download in the native shape; list,
    read, cancel (again: the same), and a finished one's cancel is 409."""
    bare = make_bare()
    post = lambda path, body: httpx.post(bare.url + path, json=body, timeout=10)  # noqa: E731
    for body, field in [
        ({"url": "https://example.com/a.safetensors"}, "source"),
        ({"source": "ftp", "url": "x"}, "source"),
        ({"source": "huggingface"}, "repo"),
        ({"source": "huggingface", "repo": "no-slash"}, "repo"),
        ({"source": "huggingface", "repo": "org/name", "revision": "../main"}, "revision"),
        ({"source": "huggingface", "repo": "org/name", "file": "../x.safetensors"}, "file"),
        ({"source": "huggingface", "repo": "org/name", "file": "/etc/passwd"}, "file"),
        ({"source": "huggingface", "repo": "o/n", "kind": "diffusers", "file": "a"}, "file"),
        ({"source": "huggingface", "repo": "org/name", "kind": "vae"}, "kind"),
        ({"source": "huggingface", "repo": "org/name", "url": "https://x"}, "url"),
        ({"source": "civitai"}, "model_id"),
        ({"source": "civitai", "model_id": -1}, "model_id"),
        ({"source": "civitai", "model_id": True}, "model_id"),
        ({"source": "civitai", "version_id": "12a"}, "version_id"),
        ({"source": "civitai", "model_id": 1, "file_id": 0}, "file_id"),
        ({"source": "civitai", "model_id": 1, "kind": "lora"}, "kind"),
        ({"source": "civitai", "model_id": 1, "name": "a/b"}, "name"),
        ({"source": "url"}, "url"),
        ({"source": "url", "url": "ftp://example.com/a"}, "url"),
        ({"source": "url", "url": "https://8.8.8.8/a", "kind": "vae"}, "kind"),
        ({"source": "url", "url": "https://8.8.8.8/a", "name": "../x"}, "name"),
        ({"source": "url", "url": "https://8.8.8.8/a", "name": ""}, "name"),
        ({"source": "url", "url": "https://8.8.8.8/a", "name": "a_"}, "name"),  # renamed else
        ({"source": "url", "url": "https://8.8.8.8/a", "sha256": "abc"}, "sha256"),
        ({"source": "url", "url": "https://8.8.8.8/a", "token": "x"}, "token"),
    ]:
        answer = post("/v1/downloads", body)
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["error"]["param"] == field, answer.text
    refused = post("/v1/downloads", {"source": "url", "url": "http://127.0.0.1:9/a"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "forbidden_url"
    assert bare.store.downloads.list_downloads() == []
    (bare.models / "taken").mkdir()  # an installed name is refused at the door
    taken = post("/v1/downloads", {"source": "huggingface", "repo": "org/taken"})
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "model_exists"
    assert bare.store.downloads.list_downloads() == []
    hub = post("/v1/downloads", {"source": "huggingface", "repo": "org/tiny-sd", "revision": "v1"})
    assert hub.status_code == 202, hub.text
    assert (hub.json()["source"], hub.json()["name"]) == ("huggingface", "tiny-sd")
    queued = bare.store.downloads.get_download(hub.json()["id"])
    assert queued.reference == {"repo": "org/tiny-sd", "revision": "v1"}
    civitai = post("/v1/downloads", {"source": "civitai", "model_id": "12", "version_id": 34})
    assert civitai.status_code == 202, civitai.text
    assert bare.store.downloads.get_download(civitai.json()["id"]).reference == {
        "model_id": 12,
        "version_id": 34,
    }
    for made in (hub, civitai):
        bare.store.downloads.cancel_download(made.json()["id"])

    good = {
        "source": "url",
        "url": "https://8.8.8.8/a.safetensors",
        "name": "a",
        "sha256": "A" * 64,
    }
    made = post("/v1/downloads", good)  # checked, queued: no worker runs in this server
    assert made.status_code == 202, made.text
    shown = made.json()
    assert made.headers["location"] == f"/v1/downloads/{shown['id']}"
    assert set(shown) == {
        *("id", "source", "kind", "name", "status", "bytes_done", "bytes_total", "speed_bps"),
        *("model", "error", "created_at", "started_at", "finished_at"),
    }
    assert (shown["status"], shown["name"], shown["error"]) == ("queued", "a", None)
    assert bare.store.downloads.get_download(shown["id"]).reference["sha256"] == "a" * 64
    listed = httpx.get(bare.url + "/v1/downloads?status=queued").json()["data"]
    assert [d["id"] for d in listed] == [shown["id"]]  # the cancelled ones are not queued
    assert httpx.get(bare.url + "/v1/downloads?status=nope").status_code == 400
    assert httpx.get(bare.url + "/v1/downloads?limit=0").status_code == 400
    assert httpx.get(f"{bare.url}/v1/downloads/{shown['id']}").json() == shown
    assert httpx.get(f"{bare.url}/v1/downloads/{'0' * 30}").status_code == 404
    cancelled = post(f"/v1/downloads/{shown['id']}/cancel", {})
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert post(f"/v1/downloads/{shown['id']}/cancel", {}).json()["status"] == "cancelled"
    other = bare.store.downloads.queue_download("url", {"url": "https://8.8.8.8/b"})
    bare.store.downloads.claim_download("w", lease_s=30)
    bare.store.downloads.finish_download(other.id, "w", DownloadStatus.SUCCEEDED, model="sd/b")
    assert post(f"/v1/downloads/{other.id}/cancel", {}).status_code == 409


def test_model_and_lora_routes_read_and_delete(make_bare: Callable[..., Bare]) -> None:
    """A model's details and ALICE's info; delete fails its queued jobs model_not_found
    and removes it (a second delete is a 404); LoRAs listed in ALICE's shape and
    deleted."""
    bare = make_bare()
    write_lora_file(
        bare.models / "loras" / "ink.safetensors",
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 32)},
    )
    details = httpx.get(bare.url + "/v1/models/sd/tiny").json()
    assert (details["id"], details["object"], details["status"]) == ("sd/tiny", "model", "ok")
    assert httpx.get(bare.url + "/v1/models/sd/tiny/info").json()["id"] == "sd/tiny"
    assert httpx.get(bare.url + "/v1/models/sd/absent").status_code == 404
    loras = httpx.get(bare.url + "/v1/models/loras").json()
    assert [(e["id"], e["name"]) for e in loras["data"]] == [("lora/ink", "ink")]
    assert {"id", "name", "created", "sizeMb", "baseModel"} <= set(loras["data"][0])
    job = httpx.post(bare.url + "/v1/jobs", json={"prompt": "x", "model": "sd/tiny"}).json()
    deleted = httpx.delete(bare.url + "/v1/models/sd/tiny")  # no runner here: still queued
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {
        "id": "sd/tiny",
        "object": "model",
        "deleted": True,
        "failed_jobs": [job["id"]],
    }
    failed = bare.store.jobs.get(job["id"])
    assert (failed.status.value, failed.error_code) == ("failed", "model_not_found")
    assert not (bare.models / "tiny").exists()
    assert not [p for p in bare.models.iterdir() if p.name.startswith(".deleting-")]
    assert httpx.delete(bare.url + "/v1/models/sd/tiny").status_code == 404
    assert httpx.delete(bare.url + "/v1/loras/lora/ink").json()["deleted"] is True
    assert httpx.get(bare.url + "/v1/loras").json()["data"] == []
    assert httpx.delete(bare.url + "/v1/loras/ink").status_code == 404
    for url in ("http://127.0.0.1:9/a.png", "https://example.com/a.png"):
        refused = httpx.get(bare.url + "/v1/models/thumbnail", params={"url": url})
        assert refused.status_code == 403, url  # only CivitAI's image hosts are fetched
        assert refused.json()["error"]["code"] == "forbidden_url"
    for params in ({"url": ""}, {"url": "image.civitai.com/a.png"}, {}):
        refused = httpx.get(bare.url + "/v1/models/thumbnail", params=params)
        assert refused.status_code == 400, params  # not an http(s) URL at all
        assert refused.json()["error"]["param"] == "url"


def test_alice_civitai_search_pages_by_number_in_both_modes(
    make_bare: Callable[..., Bare],
) -> None:
    """ALICE's `page`: a browse asks CivitAI for that page; a search (which CivitAI
    pages by cursor) walks the cursors to it; past the last page it is empty."""
    from tests.support.sources import Civitai, civitai_model, civitai_serving

    blob = b"weights"
    service = Civitai(
        models=[
            civitai_model(i, f"Ink {i}", "LORA", [(i * 10, f"ink{i}.safetensors", blob)])
            for i in (1, 2, 3)
        ]
    )
    with civitai_serving(service):
        bare = make_bare(**{"models.civitai_url": service.url})
        for query in ("", "ink"):
            shown = []
            for number in (1, 2, 3, 4):
                answer = httpx.post(
                    bare.url + "/v1/models/search/civitai",
                    json={"query": query, "limit": 1, "page": number},
                )
                assert answer.status_code == 200, answer.text
                shown.append([item["id"] for item in answer.json()["data"]])
            assert shown == [[1], [2], [3], []], query
        bad = httpx.post(bare.url + "/v1/models/search/civitai", json={"types": ["Nope"]})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "types"
        native = httpx.get(bare.url + "/v1/models/search", params={"source": "civitai", "limit": 2})
        assert native.json()["next_cursor"] == "2"
        for params in ({"source": "x"}, {"limit": "0"}, {"nsfw": "maybe"}, {"sort": "Best"}):
            refused = httpx.get(bare.url + "/v1/models/search", params=params)
            assert refused.status_code == 400, params
        asked = len(service.files.requests)
        for cursor in ("abc", "0", "501"):  # browsing pages by number, 2 a page: 1..500
            missing = httpx.get(
                bare.url + "/v1/models/search", params={"limit": 2, "cursor": cursor}
            )
            assert missing.status_code == 404 and missing.json()["error"]["param"] == "cursor"
        far = httpx.post(bare.url + "/v1/models/search/civitai", json={"limit": 100, "page": 11})
        assert far.status_code == 200 and far.json()["data"] == []  # past CivitAI's numbers
        assert len(service.files.requests) == asked  # none of them asked CivitAI


def test_keys_in_the_database_turn_authentication_on_with_roles(
    make_bare: Callable[..., Bare],
) -> None:
    """With no key anywhere the server is open, but no key is ever made over HTTP
    without an admin's; the first key (made on the server) closes it; admins make,
    list, revoke and delete keys, users may not; a revoked key is refused."""
    bare = make_bare()
    url = bare.url
    made = httpx.post(url + "/v1/auth/keys/generate", json={"name": "sneaky", "isAdmin": True})
    assert made.status_code == 403 and "keys add" in made.json()["error"]["message"]
    assert httpx.get(url + "/v1/auth/me").json() == {
        "authenticated": False,
        "auth_required": False,
        "access_level": "admin",
        "is_admin": True,
    }
    assert httpx.get(url + "/v1/jobs").status_code == 200  # open, as before
    _, root = bare.store.keys.add_key("root", role="admin")  # as `alice-spool keys add --admin`
    wait_until(lambda: httpx.get(url + "/v1/jobs").status_code == 401, timeout=5)
    admin = {"Authorization": f"Bearer {root}"}
    assert httpx.get(url + "/v1/auth/me", headers=admin).json()["is_admin"] is True
    user_made = httpx.post(url + "/v1/auth/keys/generate", headers=admin, json={"name": "sam"})
    assert user_made.status_code == 201, user_made.text
    user_key, info = user_made.json()["key"], user_made.json()["info"]
    assert (info["name"], info["isAdmin"], info["enabled"]) == ("sam", False, True)
    user = {"X-Api-Key": user_key}
    me = httpx.get(url + "/v1/auth/me", headers=user).json()
    assert (me["access_level"], me["name"], me["key_id"]) == ("user", "sam", info["id"])
    for method, path, body in [
        ("GET", "/v1/auth/keys", None),
        ("POST", "/v1/auth/keys/generate", {"name": "x"}),
        ("POST", f"/v1/auth/keys/{info['id']}/revoke", {}),
        ("DELETE", f"/v1/auth/keys/{info['id']}", None),
        ("GET", "/v1/auth/invites", None),
        ("POST", "/v1/auth/invites", {"uses": 1}),
        ("DELETE", "/v1/auth/invites/whatever", None),
    ]:
        answer = httpx.request(method, url + path, headers=user, json=body)
        assert answer.status_code == 403, (path, answer.text)
        assert answer.json()["error"]["code"] == "forbidden"
    assert (
        httpx.post(url + "/v1/auth/keys/generate", headers=admin, json={"name": "sam"}).status_code
        == 409
    )
    assert (
        httpx.post(
            url + "/v1/auth/keys/generate", headers=admin, json={"name": "x", "isAdmin": "yes"}
        ).status_code
        == 400
    )
    listed = httpx.get(url + "/v1/auth/keys", headers=admin).json()["data"]
    assert [(k["name"], k["role"]) for k in listed] == [("root", "admin"), ("sam", "user")]
    assert all("key" not in k and "key_sha256" not in k for k in listed)
    slow = httpx.post(
        url + "/v1/auth/keys/generate",
        headers=admin,
        json={"name": "slow", "rateLimitPerMinute": 1},
    ).json()["key"]
    for _ in range(5):  # its own limit: 1 a minute, in bursts of 5
        assert httpx.get(url + "/v1/jobs", headers={"X-Api-Key": slow}).status_code == 200
    limited = httpx.get(url + "/v1/jobs", headers={"X-Api-Key": slow})
    assert limited.status_code == 429, limited.text
    assert httpx.get(url + "/v1/jobs", headers=user).status_code == 200  # others are not
    revoked = httpx.post(f"{url}/v1/auth/keys/{info['id']}/revoke", headers=admin, json={})
    assert revoked.json()["info"]["enabled"] is False
    refused = httpx.get(url + "/v1/auth/me", headers=user)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
    assert httpx.delete(f"{url}/v1/auth/keys/{info['id']}", headers=admin).status_code == 200
    assert httpx.delete(f"{url}/v1/auth/keys/{info['id']}", headers=admin).status_code == 404


def test_registration_is_off_by_default_and_invites_are_used_up(
    make_bare: Callable[..., Bare],
) -> None:
    closed = make_bare()
    assert httpx.get(closed.url + "/v1/auth/registration-mode").json() == {
        "mode": "disabled",
        "require_auth": False,
    }
    refused = httpx.post(closed.url + "/v1/auth/register", json={"name": "eve"})
    assert refused.status_code == 403 and closed.store.keys.list_keys() == []
    invited = make_bare(**{"server.registration": "invite"})
    _, root = invited.store.keys.add_key("root", role="admin")
    admin = {"Authorization": f"Bearer {root}"}
    made = httpx.post(
        invited.url + "/v1/auth/invites", headers=admin, json={"uses": 1, "expiresHours": 2}
    )
    assert made.status_code == 201, made.text
    code = made.json()["code"]
    listed = httpx.get(invited.url + "/v1/auth/invites", headers=admin).json()["data"]
    assert [(i["uses_remaining"], i["hint"]) for i in listed] == [(1, code[:4])]
    assert code not in json.dumps(listed)
    no_code = httpx.post(invited.url + "/v1/auth/register", json={"name": "eve"})
    assert no_code.status_code == 400 and no_code.json()["error"]["param"] == "invite_code"
    joined = httpx.post(
        invited.url + "/v1/auth/register", json={"name": "eve", "invite_code": code}
    )
    assert joined.status_code == 201, joined.text
    assert joined.json()["info"]["isAdmin"] is False  # always a user's key
    eve = {"Authorization": f"Bearer {joined.json()['key']}"}
    assert httpx.get(invited.url + "/v1/auth/me", headers=eve).json()["access_level"] == "user"
    again = httpx.post(
        invited.url + "/v1/auth/register", json={"name": "mallory", "invite_code": code}
    )
    assert again.status_code == 403 and again.json()["error"]["code"] == "invite_invalid"
    assert sorted(k.name for k in invited.store.keys.list_keys()) == ["eve", "root"]
    opened = make_bare(**{"server.registration": "open"})
    free = httpx.post(opened.url + "/v1/auth/register", json={"name": "walk-in"})
    assert free.status_code == 201 and free.json()["info"]["role"] == "user"


def test_a_web_login_sets_a_session_cookie_that_is_never_the_key(
    make_bare: Callable[..., Bare],
) -> None:
    bare = make_bare()
    url = bare.url
    assert httpx.post(url + "/v1/auth/login", json={"key": "x"}).status_code == 400  # no keys
    _, root = bare.store.keys.add_key("root", role="admin")
    wait_until(lambda: httpx.get(url + "/v1/jobs").status_code == 401, timeout=5)
    wrong = httpx.post(url + "/v1/auth/login", json={"key": "sd-wrong"})
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    with httpx.Client(base_url=url, timeout=30) as browser:
        logged = browser.post("/v1/auth/login", json={"key": root})
        assert logged.status_code == 200, logged.text
        cookie = logged.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        value = browser.cookies["alice_session"]
        assert value and value != root and root not in cookie
        assert "Secure" not in cookie  # plain http here; behind HTTPS it is Secure
        me = browser.get("/v1/auth/me").json()
        assert (me["authenticated"], me["name"], me["is_admin"]) == (True, "root", True)
        assert browser.get("/v1/jobs").status_code == 200
        body = {"prompt": "from the browser"}
        bare_post = browser.post("/v1/jobs", json=body)  # no Origin, no Referer: refused
        assert bare_post.status_code == 403, bare_post.text
        assert bare_post.json()["error"]["code"] == "cross_origin_refused"
        elsewhere = browser.post("/v1/jobs", json=body, headers={"Origin": "https://evil.example"})
        assert elsewhere.status_code == 403
        ours = browser.post("/v1/jobs", json=body, headers={"Origin": url})
        assert ours.status_code == 202, ours.text
        assert bare.store.jobs.get(ours.json()["id"]).client == "root"
        assert browser.post("/v1/auth/logout", headers={"Origin": url}).json()["ended"] is True
        browser.cookies.set("alice_session", value)  # the old cookie, kept by hand
        assert browser.get("/v1/auth/me").status_code == 401
    stored = bare.store.db.read(lambda c: c.execute(sa_text("SELECT * FROM sessions")).all())
    assert stored == []  # logged out: gone


def test_priority_default_model_and_stats(make_bare: Callable[..., Bare]) -> None:
    bare = make_bare()
    post = lambda path, **kw: httpx.post(bare.url + path, timeout=10, **kw)  # noqa: E731
    low, high = (post("/v1/jobs", json={"prompt": p}).json()["id"] for p in ("low", "high"))
    raised = post(f"/v1/jobs/{high}/priority", json={"priority": 50})
    assert raised.status_code == 200 and raised.json()["priority"] == 50
    (first,) = bare.store.leases.claim_batch("r", 1, lease_s=60)
    assert first.id == high  # the raised job runs first
    for body, code in (
        ({}, "invalid_parameters"),
        ({"priority": 101}, "invalid_parameters"),
        ({"priority": "up"}, "invalid_parameters"),
    ):
        refused = post(f"/v1/jobs/{low}/priority", json=body)
        assert (refused.status_code, refused.json()["error"]["code"]) == (400, code)
    running = post(f"/v1/jobs/{high}/priority", json={"priority": 1})
    assert running.status_code == 409 and running.json()["error"]["code"] == "invalid_state"
    missing = post("/v1/jobs/nope/priority", json={"priority": 1})
    assert missing.status_code == 404
    assert bare.store.jobs.get(low).priority == 0  # nothing half-done

    models_dir = bare.outbox.parent / "models"
    from tests.support.fake_model import write_fake_model

    write_fake_model(models_dir / "other")
    chosen = post("/v1/models/default", json={"model": "other"})
    assert chosen.status_code == 200 and chosen.json()["id"] == "sd/other"
    listed = {
        m["id"]: m.get("default", m.get("alias_of"))
        for m in httpx.get(bare.url + "/v1/models").json()["data"]
    }
    assert listed["sd/other"] is True and listed["sd/tiny"] is False
    assert listed["dall-e-3"] == "sd/other"  # OpenAI's names follow the default model
    (models_dir / "halfway" / "unet").mkdir(parents=True)  # a copy that never finished
    (models_dir / "halfway" / "model_index.json").write_text("{}")
    everything = httpx.get(bare.url + "/v1/models?include_broken=true").json()["data"]
    halfway = next(m for m in everything if m["id"] == "sd/halfway")
    assert halfway["status"] == "broken" and "missing" in halfway["reason"]
    assert all(m["size_bytes"] > 0 for m in everything if m["status"] == "ok")
    unclear = httpx.get(bare.url + "/v1/models?include_broken=perhaps")
    assert unclear.status_code == 400 and unclear.json()["error"]["param"] == "include_broken"
    usable = httpx.get(bare.url + "/v1/models").json()["data"]
    assert {m["id"] for m in usable if not m.get("alias")} == {"sd/other", "sd/tiny"}
    refused = post("/v1/models/default", json={"model": "sd/halfway"})
    assert refused.status_code == 404
    queued = post("/v1/jobs", json={"prompt": "defaults"}).json()
    assert queued["model"] == "sd/other"
    for body, status, code in (
        ({"model": "sd/none"}, 404, "model_not_found"),
        ({"model": ""}, 400, "invalid_parameters"),
        ({}, 400, "invalid_parameters"),
    ):
        refused = post("/v1/models/default", json=body)
        assert (refused.status_code, refused.json()["error"]["code"]) == (status, code)
    assert (models_dir / ".default").read_text().strip() == "sd/other"
    pinned = make_bare(**{"generation.default_model": "sd/tiny"})
    refused = httpx.post(pinned.url + "/v1/models/default", json={"model": "sd/other"})
    assert refused.status_code == 409 and "generation.default_model" in refused.text

    stats = httpx.get(bare.url + "/v1/stats").json()
    assert stats["depth"]["queued"] == 2 and stats["depth"]["running"] == 1
    assert len(stats["images_per_minute_series"]) == 60
    bare.store.leases.succeed(first.id, "r", {"images": []})
    stats = httpx.get(bare.url + "/v1/stats").json()
    assert stats["images_per_minute_series"][-1] == 1 and stats["images_in_window"] == 1
    assert httpx.get(bare.url + "/v1/stats?window_s=5").status_code == 400
    paths = httpx.get(bare.url + "/openapi.json").json()["paths"]
    assert "/v1/jobs/{job_id}/priority" in paths and "/v1/stats" in paths
    assert "/" not in paths and "/docs" not in paths


@contextlib.contextmanager
def instant_runner(store: Store) -> Iterator[None]:
    """A stand-in runner for tests of the API alone: it claims every queued job and
    finishes it at once with no images, so routes that wait for their job answer. It
    reports itself as a runner does (about once a second), so the server is ready."""
    from alice_spool.records import RunnerReport

    stop = threading.Event()
    started = datetime.now(UTC)

    def work() -> None:
        reported = 0.0
        while not stop.is_set():
            if time.monotonic() - reported >= 1.0:
                now = datetime.now(UTC)
                store.leases.report_runner(
                    RunnerReport("instant", "instant", started, now, "idle", device="cpu")
                )
                reported = time.monotonic()
            for job in store.leases.claim_batch("instant", 16, lease_s=30):
                store.leases.succeed(job.id, "instant", {"images": []})
            stop.wait(0.02)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


@contextlib.contextmanager
def instant_downloader(store: Store) -> Iterator[None]:
    """A stand-in download worker: it claims every queued download and fails it at once,
    fetching nothing, so that a download's events end as a real one's do."""
    from alice_spool.errors import DownloadFailed

    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            while (taken := store.downloads.claim_download("instant", lease_s=30)) is not None:
                store.downloads.finish_download(
                    taken.id,
                    "instant",
                    DownloadStatus.FAILED,
                    error=DownloadFailed("this test's worker fetches nothing"),
                )
            stop.wait(0.02)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


@pytest.fixture
def model_sources(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The settings that point a server at stand-ins of CivitAI and the Hugging Face Hub
    on 127.0.0.1 (tests/support/sources.py: their searches, a preview image), and take
    a URL download's host as given (`models.allow_private_urls`: nothing resolves it at
    the door). No name is ever looked up in DNS: while they run, this process (the
    server's) resolves addresses and `localhost` only, and any other name fails as an
    unknown one (so a generated host, or CivitAI's image host, never leaves it)."""
    import ipaddress

    from huggingface_hub import constants

    from tests.support.sources import (
        Civitai,
        Hub,
        Repo,
        civitai_model,
        civitai_serving,
        hub_serving,
    )

    resolve = socket.getaddrinfo

    def addresses_only(host: Any, *args: Any, **options: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(name.split("%", 1)[0])
            return resolve(host, *args, **options)
        if name == "localhost":
            return resolve(host, *args, **options)
        raise socket.gaierror(socket.EAI_NONAME, f"{name}: this test looks up no names")

    monkeypatch.setattr(socket, "getaddrinfo", addresses_only)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest keeps it offline
    hub = Hub(
        repos={
            "org/tiny-sd": Repo({"model_index.json": b"{}"}, downloads=50, likes=3),
            "org/ink-lora": Repo({"a.safetensors": b"\0" * 8}, tags=["diffusers", "lora"]),
        }
    )
    with hub_serving(hub), civitai_serving(Civitai()) as civitai:
        preview = civitai.url + "/previews/1.png"
        civitai.images["/previews/1.png"] = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
        civitai.models = [
            civitai_model(1, "Ink Style", "LORA", [(11, "ink.safetensors", b"w")], image=preview),
            civitai_model(2, "Harbour", "Checkpoint", [(21, "harbour.safetensors", b"w")]),
            civitai_model(3, "Shy", "LORA", [(31, "shy.safetensors", b"w")], nsfw=True),
        ]
        yield {
            "models.civitai_url": civitai.url,
            "models.hf_endpoint": hub.url,
            "models.allow_private_urls": "true",
        }


# Each API's routes (an operation's tag in /openapi.json) run as a test of their own.
API_TAGS = {
    "native": "alice-spool",
    "openai": "OpenAI and ALICE",
    "a1111": "AUTOMATIC1111",
    "restplan": "REST plan",
    "ablerefusal": "AbleRefusal",
    "gtx1060": "GTX 1060",
}


@pytest.mark.parametrize("tag", list(API_TAGS.values()), ids=list(API_TAGS))
def test_schemathesis_finds_the_server_as_its_description_says(
    make_bare: Callable[..., Bare],
    tmp_path: Path,
    tag: str,
    model_sources: dict[str, str],
) -> None:
    """Every check schemathesis has (the answers' statuses and bodies against their
    schemas, bad data refused, ...) over every operation of one API in /openapi.json,
    bounded by examples per operation, a fixed seed and a time budget. The searches
    ask stand-ins of CivitAI and the Hub; nothing leaves the machine (model_sources)."""
    bare = make_bare(
        **{
            "server.api_keys": {"ops": "schemathesis-ops-key"},
            "server.request_timeout_s": "5",
            "server.auth_failures_per_minute": "0",  # its missing-key probes are many
            **model_sources,
        }
    )
    # Stateful testing follows links between one API's operations; where the API has
    # none (GTX 1060's one route), schemathesis calls the other APIs' links, which the tag
    # filter leaves out, an error: its other phases run.
    document = httpx.get(f"{bare.url}/openapi.json", timeout=30).json()
    linked = any(
        "links" in answer
        for operations in document["paths"].values()
        for operation in operations.values()
        if tag in operation["tags"]
        for answer in operation["responses"].values()
    )
    phases = "examples,coverage,fuzzing" + (",stateful" if linked else "")
    with instant_runner(bare.store), instant_downloader(bare.store):
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "run",
                f"{bare.url}/openapi.json",
                "--checks=all",
                "--max-examples=10",
                "--seed=1",
                "--request-timeout=20",
                # The key in both of the ways the description offers: schemathesis would
                # otherwise make up a Bearer token, and a request carrying two different
                # keys is refused (401) before it reaches its route.
                "--header=X-Api-Key: schemathesis-ops-key",
                "--header=Authorization: Bearer schemathesis-ops-key",
                "--no-color",
                "--output-sanitize=false",  # the key is this test's own
                f"--include-tag={tag}",
                f"--phases={phases}",
                # A multipart upload's file must be a real image, which a schema cannot say
                # (and schemathesis 4.32's coverage phase stops at a binary field): the
                # edits and variations routes are tested with the official SDK instead,
                # good and bad files (tests/e2e/test_openai_images.py).
                "--exclude-path=/v1/images/edits",
                "--exclude-path=/v1/images/variations",
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=400,
        )
    assert run.returncode == 0, run.stdout[-30000:] + run.stderr[-2000:]
    assert "passed" in run.stdout
