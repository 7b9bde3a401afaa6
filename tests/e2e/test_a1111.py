"""AUTOMATIC1111's API against a real `serve` on the tiny model,
driven by `webuiapi`, the Python client A1111's users have: txt2img, img2img with a
mask, models and the checkpoint option, samplers and schedulers, progress while a job
runs, interrupt; and what it refuses, in A1111's error shape."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image

from tests.support.live_server import Served, http_get, serve, wait_until

KEY = "a1111-key"
OTHER = "a1111-other-key"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[Served]:
    config = f'[server.api_keys]\nops = "{KEY}"\nother = "{OTHER}"\n'
    root = tmp_path_factory.mktemp("a1111")
    with serve(root, config, scheduler="euler", models=tiny_models, split=True) as server:
        yield server


def client(site: Served, key: str = KEY) -> webuiapi.WebUIApi:
    port = int(site.url.rsplit(":", 1)[1])
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler a", steps=2)
    api.set_auth("anyone", key)  # HTTP basic: the key is the password
    return api


def jobs(site: Served, **query: Any) -> list[dict[str, Any]]:
    answer = http_get(f"{site.url}/v1/jobs", params=query, headers={"X-Api-Key": KEY}, timeout=30)
    assert answer.status_code == 200, answer.text
    return list(answer.json()["data"])


def test_txt2img_with_webuiapi(site: Served) -> None:
    result = client(site).txt2img(
        prompt="a lighthouse at dusk",
        negative_prompt="blurry",
        seed=1234,
        width=64,
        height=64,
        batch_size=2,
        n_iter=2,
        cfg_scale=6.5,
        sampler_name="DPM++ 2M",
        scheduler="Karras",
    )
    assert len(result.images) == 4
    assert all(image.size == (64, 64) for image in result.images)
    info = result.info
    assert info["all_seeds"] == [1234, 1235, 1236, 1237] and info["seed"] == 1234
    assert (info["width"], info["height"], info["steps"], info["cfg_scale"]) == (64, 64, 2, 6.5)
    assert info["sampler_name"] == "DPM++ 2M" and info["sd_model_name"] == "tiny"
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in info["infotexts"][0]
    assert len(info["infotexts"]) == 4
    assert "Steps: 2" in info["infotexts"][0] and "Seed: 1234" in info["infotexts"][0]
    assert "Negative prompt: blurry" in info["infotexts"][0]
    assert result.parameters["prompt"] == "a lighthouse at dusk"
    (job,) = [j for j in jobs(site, source="a1111") if j["id"] == info["job_id"]]
    assert job["status"] == "succeeded" and job["spec"]["scheduler"] == "dpm++_2m_karras"
    assert job["spec"]["n"] == 4 and job["client"] == "ops"
    # The same seed asked again gives the same pixels: the queue and batching change nothing.
    again = client(site).txt2img(
        prompt="a lighthouse at dusk", negative_prompt="blurry", seed=1234, width=64,
        height=64, cfg_scale=6.5, sampler_name="DPM++ 2M", scheduler="Karras",
    )  # fmt: skip
    # (Alone, not in a call of four: the CPU's kernels may round a pixel by one step.)
    first, alone = (np.asarray(i.images[0], dtype=np.int16) for i in (result, again))
    assert first.shape == alone.shape and np.abs(first - alone).max() <= 2


def test_img2img_with_a_mask_with_webuiapi(site: Served) -> None:
    init = Image.new("RGB", (64, 64), (30, 90, 200))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))  # repaint the middle only
    result = client(site).img2img(
        images=[init],
        mask_image=mask,
        prompt="a red square",
        denoising_strength=0.6,
        seed=7,
        width=64,
        height=64,
    )
    assert len(result.images) == 1 and result.images[0].size == (64, 64)
    job = next(j for j in jobs(site, source="a1111") if j["id"] == result.info["job_id"])
    assert job["spec"]["strength"] == 0.6 and job["result"]["mode"] == "inpaint"
    assert result.info["is_using_inpainting_conditioning"] is True


def test_models_samplers_schedulers_and_the_checkpoint_option(site: Served) -> None:
    api = client(site)
    assert api.util_get_model_names() == ["tiny"]
    assert "Euler a" in api.util_get_sampler_names()
    assert "DPM++ 2M" in api.util_get_sampler_names()
    assert {"automatic", "uniform", "karras", "normal"} <= set(api.util_get_scheduler_names())
    api.util_set_model("tiny")
    assert api.util_get_current_model() == "tiny"
    missing = httpx.post(
        f"{site.url}/sdapi/v1/options",
        json={"sd_model_checkpoint": "nope [abc123]"},
        headers={"X-Api-Key": KEY},
        timeout=30,
    )
    assert missing.status_code == 404 and missing.json()["error"] == "NotFound"
    assert api.get_loras() == [] and api.refresh_checkpoints() is None


def test_progress_while_a_job_runs_and_skip_ends_it(site: Served) -> None:
    """(Interrupting one's own job: tests/e2e/test_a1111_clients.py, as SillyTavern does.)"""
    api, other = client(site), client(site, OTHER)
    answers: list[Any] = []

    def long_job() -> None:
        try:
            api.txt2img(prompt="a long one", steps=150, width=64, height=64, seed=3)
        except RuntimeError as error:  # interrupted: A1111's error answer
            answers.append(error)

    thread = threading.Thread(target=long_job)
    thread.start()
    wait_until(lambda: api.get_progress()["state"]["sampling_step"] > 0, timeout=60)
    seen = api.get_progress()
    assert 0 < seen["progress"] < 1 and seen["state"]["sampling_steps"] == 150
    assert seen["state"]["job_count"] == 1 and seen["eta_relative"] > 0
    assert other.get_progress()["progress"] == 0  # another client's job is not theirs
    other.interrupt()  # ... nor theirs to stop
    other.skip()  # ... or to skip
    step = seen["state"]["sampling_step"]
    wait_until(lambda: api.get_progress()["state"]["sampling_step"] > step, timeout=60)
    api.skip()
    thread.join(60)
    job = next(j for j in jobs(site, source="a1111") if j["spec"]["prompt"] == "a long one")
    assert job["status"] == "cancelled"
    assert len(answers) == 1 and "409" in str(answers[0])


def test_what_it_refuses_comes_in_a1111s_shape(site: Served) -> None:
    def post(path: str, body: Any, key: str | None = KEY) -> httpx.Response:
        headers = {"Authorization": "Basic " + base64.b64encode(f"u:{key}".encode()).decode()}
        return httpx.post(
            f"{site.url}{path}", json=body, headers=headers if key else {}, timeout=30
        )

    before = len(jobs(site))
    for body, field in [
        ({"prompt": "x", "sampler_name": "Nope"}, "sampler_name"),
        ({"prompt": "x", "sampler_name": "Euler", "scheduler": "Turbo"}, "scheduler"),
        ({"prompt": "x", "enable_hr": True, "hr_upscaler": "SwinIR 4x"}, "hr_upscaler"),
        ({"prompt": "x", "restore_faces": True}, "restore_faces"),
        ({"prompt": "x", "batch_size": 0}, "batch_size"),
        ({"prompt": "x", "batch_size": 8, "n_iter": 4}, "batch_size"),
        ({"prompt": "x", "width": 65}, "width"),
        ({"prompt": "x", "steps": 0}, "steps"),
        ({"prompt": ""}, "prompt"),
        (
            {"prompt": "x", "override_settings": {"sd_model_checkpoint": "no"}},
            "sd_model_checkpoint",
        ),
        ({"prompt": "x", "enable_hr": "maybe"}, "enable_hr"),
    ]:
        answer = post("/sdapi/v1/txt2img", body)
        assert 400 <= answer.status_code < 500, (body, answer.text)
        shown = answer.json()
        assert set(shown) >= {"error", "detail", "body", "errors"}, shown
        assert shown["body"] == field, (field, shown)
    img = post("/sdapi/v1/img2img", {"prompt": "x", "init_images": []})
    assert img.status_code == 400 and img.json()["body"] == "init_images"
    bad_image = post("/sdapi/v1/img2img", {"prompt": "x", "init_images": ["@@@"]})
    assert bad_image.status_code == 400
    refused = post("/sdapi/v1/txt2img", {"prompt": "x"}, key="wrong")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Basic"
    assert post("/sdapi/v1/txt2img", {"prompt": "x"}, key=None).status_code == 401
    assert len(jobs(site)) == before  # nothing was queued


def test_an_a1111_job_batches_with_a_native_one_and_makes_what_it_makes_alone(
    site: Served,
) -> None:
    api = client(site)
    asked = {"prompt": "a quiet bay", "seed": 11, "width": 64, "height": 64, "cfg_scale": 7.0}
    blocker = httpx.post(  # the runner busy while both are queued behind it
        f"{site.url}/v1/jobs",
        json={"prompt": "long", "steps": 150, "n": 4, "width": 64, "height": 64},
        headers={"X-Api-Key": KEY},
        timeout=30,
    ).json()
    wait_until(lambda: job_of(site, blocker["id"])["status"] == "running", timeout=60)
    answers: list[Any] = []
    thread = threading.Thread(target=lambda: answers.append(api.txt2img(**asked)))
    thread.start()
    wait_until(lambda: bool(jobs(site, source="a1111", status="queued")), timeout=30)
    native = httpx.post(
        f"{site.url}/v1/jobs",
        json={"prompt": "a loud harbour", "seed": 12, "steps": 2, "width": 64, "height": 64,
              "scheduler": "Euler a Uniform", "guidance_scale": 7.0},  # A1111's Automatic
        headers={"X-Api-Key": KEY},
        timeout=30,
    ).json()  # fmt: skip
    thread.join(120)
    (batched,) = answers
    a1111_job = job_of(site, batched.info["job_id"])
    wait_until(lambda: job_of(site, native["id"])["status"] == "succeeded", timeout=60)
    native_job = job_of(site, native["id"])
    assert a1111_job["result"]["timings"]["batch_images"] == 2  # one pipeline call for both
    assert native_job["result"]["timings"]["batch_images"] == 2
    alone = api.txt2img(**asked)  # nothing else queued now
    assert job_of(site, alone.info["job_id"])["result"]["timings"]["batch_images"] == 1
    together = np.asarray(batched.images[0], dtype=np.int16)
    assert np.abs(together - np.asarray(alone.images[0], dtype=np.int16)).max() <= 2


def job_of(site: Served, job_id: str) -> dict[str, Any]:
    answer = http_get(f"{site.url}/v1/jobs/{job_id}", headers={"X-Api-Key": KEY}, timeout=30)
    return dict(answer.json())


def test_lora_tags_and_the_checkpoint_override(site: Served) -> None:
    from alice_spool.engine.tiny import create_tiny_lora

    create_tiny_lora(site.root / "var" / "models", "a1111-style", replace=True)
    api = client(site)
    refreshed = httpx.post(f"{site.url}/sdapi/v1/refresh-loras", auth=("u", KEY), timeout=30)
    assert refreshed.status_code == 200
    assert "a1111-style" in [lora["name"] for lora in api.get_loras()]
    styled = api.txt2img(
        prompt="a fox <lora:a1111-style:0.8>",
        seed=21,
        width=64,
        height=64,
        override_settings={"sd_model_checkpoint": "tiny [0123abcd]"},  # A1111's title form
    )
    made = job_of(site, styled.info["job_id"])
    assert made["spec"]["loras"] == [{"name": "lora/a1111-style", "scale": 0.8}]
    assert made["spec"]["prompt"] == "a fox" and made["model"] == "sd/tiny"
    assert "<lora:a1111-style:0.8>" in styled.info["infotexts"][0]
    plain = api.txt2img(prompt="a fox", seed=21, width=64, height=64)
    assert plain.images[0].tobytes() != styled.images[0].tobytes()  # the LoRA changed it
