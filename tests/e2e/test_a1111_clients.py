"""AUTOMATIC1111's API as the clients people point at it call it,
against a real `serve` on the tiny models: SillyTavern's and Open WebUI's call
sequences replayed as their code makes them (their headers, bodies and order), the
options object round trip, and the behaviours A1111's own API tests check."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.support import a1111
from tests.support.a1111 import png
from tests.support.live_server import Served, serve, wait_until
from tests.support.vaes import grain_vae, write_vae_file

KEY = "clients-key"
OTHER_KEY = "clients-other-key"
TINY, OTHER = "tiny", "other"  # checkpoint titles: the SD 1.x and the SDXL tiny model


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[Served]:
    from alice_spool.engine.tiny import create_tiny

    config = f'[server.api_keys]\nops = "{KEY}"\nother = "{OTHER_KEY}"\n'
    root = tmp_path_factory.mktemp("clients")
    with serve(root, config, scheduler="euler", models=tiny_models, split=True) as server:
        models = server.root / "var" / "models"
        create_tiny(models, OTHER, family="sdxl")
        write_vae_file(grain_vae(models / TINY), models, "grain")
        yield server


def call(site: Served, method: str, path: str, body: Any = None, key: str = KEY) -> Any:
    return a1111.call(site, method, path, key, body)


def basic(key: str = KEY) -> dict[str, str]:
    return a1111.basic(key)


def job(site: Served, job_id: str) -> dict[str, Any]:
    return dict(call(site, "GET", f"/v1/jobs/{job_id}"))


# SillyTavern's txt2img body with its default settings (its `url` and `auth` ride along).
def sillytavern_body(auth: str, sampler: str | None, scheduler: str | None) -> dict[str, Any]:
    return {
        "url": "http://127.0.0.1:7860", "auth": auth,
        "prompt": "best quality, absurdres, aesthetic, a lighthouse at dusk",
        "negative_prompt": "lowres, bad anatomy, bad hands, text, error, cropped, worst quality",
        "sampler_name": sampler, "scheduler": scheduler,
        "steps": 20, "cfg_scale": 7, "width": 512, "height": 512,
        "restore_faces": False, "enable_hr": False, "hr_upscaler": "Latent", "hr_scale": 1.0,
        "hr_additional_modules": [], "denoising_strength": 0.7, "hr_second_pass_steps": 0,
        "override_settings": {"CLIP_stop_at_last_layers": 1},
        "override_settings_restore_afterwards": True, "clip_skip": 1,
        "save_images": True, "send_images": True,
        "do_not_save_grid": False, "do_not_save_samples": False,
    }  # fmt: skip


def test_sillytavern_connects_lists_sets_the_model_generates_and_interrupts(site: Served) -> None:
    auth = f"me:{KEY}"
    # Connect: its ping is GET options (the status only).
    call(site, "GET", "/sdapi/v1/options")
    # The lists, asked at once.
    paths = ["/sdapi/v1/samplers", "/sdapi/v1/options", "/sdapi/v1/sd-models",
             "/sdapi/v1/upscalers", "/sdapi/v1/latent-upscale-modes", "/sdapi/v1/schedulers",
             "/sdapi/v1/sd-vae", "/sdapi/v1/sd-modules"]  # fmt: skip
    with ThreadPoolExecutor(len(paths)) as pool:
        samplers, options, models, upscalers, latent, schedules, vaes, modules = pool.map(
            lambda path: call(site, "GET", path), paths
        )
    sampler_names = [s["name"] for s in samplers]
    schedule_names = [s["name"] for s in schedules]
    titles = [m["title"] for m in models]
    assert {"DDIM", "Euler a", "DPM++ 2M"} <= set(sampler_names)
    assert {"normal", "karras", "automatic"} <= set(schedule_names)
    assert options["sd_model_checkpoint"] in titles  # its dropdown shows the current one
    assert sorted(titles) == [OTHER, TINY]
    upscaler_names = [u["name"] for u in upscalers] + [m["name"] for m in latent]
    assert {"None", "Lanczos", "Latent", "Latent (nearest-exact)"} <= set(upscaler_names)
    assert isinstance(vaes, list) and isinstance(modules, list)
    # Set the model: options with that one key, then progress until idle.
    call(site, "POST", "/sdapi/v1/options", {"sd_model_checkpoint": TINY})
    idle = call(site, "GET", "/sdapi/v1/progress")
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    # Generate: options first (Forge or not), then its default body.
    assert "forge_preset" not in call(site, "GET", "/sdapi/v1/options")
    # (its default body as it is, but for the size: 512x512 takes the tiny model on a
    # CPU 25 s, and the size is no field of its own)
    default = sillytavern_body(auth, "DDIM", "normal") | {"width": 128, "height": 128}
    made = call(site, "POST", "/sdapi/v1/txt2img", default)
    image = png(made["images"][0])
    assert image.size == (128, 128)
    info = json.loads(made["info"])
    assert (
        "Sampler: DDIM" in info["infotexts"][0] and "Schedule type: Normal" in info["infotexts"][0]
    )
    stored = job(site, info["job_id"])
    assert stored["spec"]["scheduler"] == "ddim_normal" and stored["model"] == f"sd/{TINY}"
    # Its password rides in the body: never echoed, never kept.
    assert KEY not in json.dumps(made["parameters"]) and KEY not in json.dumps(stored)
    # After the user picks the "auto" source: the first entries of the lists.
    first = sillytavern_body(auth, sampler_names[0], schedule_names[0])
    first.update(width=64, height=64, steps=3)
    assert call(site, "POST", "/sdapi/v1/txt2img", first)["images"]
    # The user stops: it aborts its request and interrupts.
    answers: list[httpx.Response] = []
    long = sillytavern_body(auth, "DDIM", "normal") | {"steps": 150, "width": 64, "height": 64}
    thread = threading.Thread(
        target=lambda: answers.append(
            httpx.post(f"{site.url}/sdapi/v1/txt2img", json=long, headers=basic(), timeout=180)
        )
    )
    thread.start()
    wait_until(lambda: call(site, "GET", "/sdapi/v1/progress")["state"]["sampling_step"] > 0)
    busy = call(site, "GET", "/sdapi/v1/progress")
    assert busy["state"]["job_count"] == 1 and 0 < busy["progress"] < 1
    assert call(site, "GET", "/sdapi/v1/progress", key=OTHER_KEY)["state"]["job_count"] == 0
    call(site, "POST", "/sdapi/v1/interrupt")
    thread.join(120)
    assert answers[0].status_code == 409


def test_open_webui_switches_the_model_by_sending_the_whole_options_back(site: Served) -> None:
    # Its base URL as its settings page suggests it: with a trailing slash.
    base = site.url + "/"
    headers = {"authorization": basic(OTHER_KEY)["Authorization"]}

    def get(path: str) -> Any:
        answer = httpx.get(base + path, headers=headers, timeout=60)
        assert answer.status_code == 200, (path, answer.text)
        return answer.json()

    get("/sdapi/v1/options")  # verify the URL
    models = [{"id": m["title"], "name": m["model_name"]} for m in get("/sdapi/v1/sd-models")]
    assert {m["id"] for m in models} == {TINY, OTHER}
    options = get("/sdapi/v1/options")
    assert options["sd_model_checkpoint"] == TINY  # the server's default model
    options["sd_model_checkpoint"] = OTHER
    switched = httpx.post(base + "/sdapi/v1/options", json=options, headers=headers, timeout=60)
    assert switched.status_code == 200 and switched.json() is None
    assert get("/sdapi/v1/options")["sd_model_checkpoint"] == OTHER
    # The other client's model did not move.
    assert call(site, "GET", "/sdapi/v1/options")["sd_model_checkpoint"] == TINY
    body = {
        "prompt": "a red kite",
        "batch_size": 1,
        "width": 64,
        "height": 64,
        "steps": 3,
        "negative_prompt": "blurry",
        "cfg_scale": 7.0,
        "sampler_name": "Euler a",
        "scheduler": "Karras",
    }  # its examples
    res = httpx.post(base + "/sdapi/v1/txt2img", json=body, headers=headers, timeout=180).json()
    assert res["images"] and isinstance(res["info"], str)
    info = json.loads(res["info"])
    assert info["sd_model_name"] == OTHER
    made = job(site, info["job_id"])
    assert made["model"] == f"sd/{OTHER}" and made["spec"]["scheduler"] == "euler_a_karras"
    # The same request from the other client's default model makes another image.
    mine = call(site, "POST", "/sdapi/v1/txt2img", body | {"seed": info["seed"]})
    assert mine["images"][0] != res["images"][0]
    # Every sampler and schedule type its settings page suggests that this server lists.
    listed = {s["name"] for s in call(site, "GET", "/sdapi/v1/samplers")}
    labels = {s["label"] for s in call(site, "GET", "/sdapi/v1/schedulers")}
    assert {"Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform",
            "Simple", "Normal", "DDIM", "Beta"} <= labels  # fmt: skip
    assert listed >= {"DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun",
                      "DPM++ 3M SDE", "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a",
                      "DDIM", "PLMS", "UniPC"}  # fmt: skip


def test_the_options_object_round_trips_and_what_is_understood_takes_effect(site: Served) -> None:
    options = call(site, "GET", "/sdapi/v1/options", key=OTHER_KEY)
    expected = {"samples_format": "png", "send_seed": True, "sd_vae": "Automatic",
                "CLIP_stop_at_last_layers": 1.0, "eta_noise_seed_delta": 0,
                "img2img_fix_steps": False, "sd_vae_overrides_per_model_preferences": True,
                "sd_checkpoint_hash": ""}  # fmt: skip
    assert {k: options[k] for k in expected} == expected
    assert "forge_preset" not in options and len(options) > 300
    # A1111's own test: flip send_seed, see it flipped, put it back.
    call(site, "POST", "/sdapi/v1/options", {"send_seed": False})
    assert call(site, "GET", "/sdapi/v1/options")["send_seed"] is False
    call(site, "POST", "/sdapi/v1/options", {"send_seed": True})
    # Unknown keys (an extension's) are kept and echoed, never refused.
    call(site, "POST", "/sdapi/v1/options", {"my_extension": {"level": [1, 2]}})
    assert call(site, "GET", "/sdapi/v1/options")["my_extension"] == {"level": [1, 2]}
    # A wrong type for an understood option: 422, and nothing of that body is kept.
    refused = httpx.post(
        f"{site.url}/sdapi/v1/options",
        json={"send_seed": False, "CLIP_stop_at_last_layers": "two"},
        headers=basic(),
        timeout=30,
    )
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "CLIP_stop_at_last_layers"]
    assert call(site, "GET", "/sdapi/v1/options")["send_seed"] is True
    # Clip skip and the image format take effect for this client's requests.
    call(
        site,
        "POST",
        "/sdapi/v1/options",
        {"CLIP_stop_at_last_layers": 2.0, "samples_format": "jpg"},
    )
    body = {"prompt": "a barn owl", "seed": 5, "width": 64, "height": 64, "steps": 3}
    made = call(site, "POST", "/sdapi/v1/txt2img", body)
    jpeg = Image.open(io.BytesIO(base64.b64decode(made["images"][0])))
    assert jpeg.format == "JPEG"
    comment = jpeg.getexif().get_ifd(0x8769)[0x9286]
    assert comment.startswith(b"UNICODE\x00") and "Clip skip: 2" in comment[8:].decode("utf-16-be")
    info = json.loads(made["info"])
    assert info["clip_skip"] == 2 and job(site, info["job_id"])["spec"]["clip_skip"] == 2
    # A Discord bot reads each image's parameters back: from the JPEG's EXIF too.
    read = call(site, "POST", "/sdapi/v1/png-info", {"image": made["images"][0]})
    assert read["info"] == info["infotexts"][0] and read["parameters"]["Clip skip"] == "2"
    # Options whose A1111 default is a whole number come back as floats, as A1111's do.
    call(site, "POST", "/sdapi/v1/options", {"jpeg_quality": 90})
    quality = call(site, "GET", "/sdapi/v1/options")["jpeg_quality"]
    assert quality == 90 and isinstance(quality, float)
    # A request's override_settings win for that request only...
    once = body | {"override_settings": {"CLIP_stop_at_last_layers": 1, "samples_format": "png"}}
    png(call(site, "POST", "/sdapi/v1/txt2img", once)["images"][0])
    assert call(site, "GET", "/sdapi/v1/options")["samples_format"] == "jpg"
    # ... unless the client asks not to restore them.
    kept = once | {"override_settings_restore_afterwards": False}
    call(site, "POST", "/sdapi/v1/txt2img", kept)
    after = call(site, "GET", "/sdapi/v1/options")
    assert after["samples_format"] == "png" and after["CLIP_stop_at_last_layers"] == 1.0
    # Another client sees none of it.
    theirs = call(site, "GET", "/sdapi/v1/options", key=OTHER_KEY)
    assert "my_extension" not in theirs and theirs["samples_format"] == "png"


def test_a_vae_chosen_as_a1111_clients_choose_it(site: Served) -> None:
    vaes = call(site, "GET", "/sdapi/v1/sd-vae")
    assert [v["model_name"] for v in vaes] == ["Automatic", "None", "grain.safetensors"]
    assert [v["model_name"] for v in call(site, "GET", "/sdapi/v1/sd-modules")] == [
        "grain.safetensors"
    ]
    call(site, "POST", "/sdapi/v1/options", {"sd_model_checkpoint": TINY})
    body = {"prompt": "a heron", "seed": 3, "width": 64, "height": 64, "steps": 3}
    own = call(site, "POST", "/sdapi/v1/txt2img", body)
    # SillyTavern's way: in each request's override_settings.
    once = body | {"override_settings": {"sd_vae": "grain.safetensors"}}
    grained = call(site, "POST", "/sdapi/v1/txt2img", once)
    info = json.loads(grained["info"])
    assert info["sd_vae_name"] == "grain.safetensors" and len(info["sd_vae_hash"]) == 10
    assert "VAE: grain.safetensors" in info["infotexts"][0]
    assert call(site, "GET", f"/v1/jobs/{info['job_id']}")["spec"]["vae"] == "vae/grain"
    assert grained["images"][0] != own["images"][0]
    # A1111's settings way: the option, until set back.
    call(site, "POST", "/sdapi/v1/options", {"sd_vae": "grain.safetensors"})
    assert call(site, "POST", "/sdapi/v1/txt2img", body)["images"][0] == grained["images"][0]
    call(site, "POST", "/sdapi/v1/options", {"sd_vae": "None"})
    assert call(site, "POST", "/sdapi/v1/txt2img", body)["images"][0] == own["images"][0]
    missing = httpx.post(
        f"{site.url}/sdapi/v1/options", json={"sd_vae": "nope.safetensors"}, headers=basic(),
        timeout=30,
    )  # fmt: skip
    assert missing.status_code == 404 and missing.json()["body"] == "sd_vae"
    assert call(site, "GET", "/sdapi/v1/options")["sd_vae"] == "None"
