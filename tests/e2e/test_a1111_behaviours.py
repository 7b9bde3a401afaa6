"""AUTOMATIC1111's API against a real `serve` on the tiny model: what
A1111's own API tests send (its v1.10 `test/` bodies, written here from what they send),
hires fix and clip skip as A1111's clients ask for them (and at the native door), and
what a Discord bot sends (numbers as text, the old `sampler_index`, `png-info` on every
image), and what is taken and what refused, field by field."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.support import a1111
from tests.support.a1111 import png
from tests.support.live_server import Served, serve, wait_until

KEY = "behaviours-key"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[Served]:
    config = f'[server.api_keys]\nops = "{KEY}"\n'
    root = tmp_path_factory.mktemp("behaviours")
    with serve(root, config, scheduler="euler", models=tiny_models, split=True) as server:
        yield server


def call(site: Served, method: str, path: str, body: Any = None) -> Any:
    return a1111.call(site, method, path, KEY, body)


def post(site: Served, path: str, body: Any) -> httpx.Response:
    return httpx.post(f"{site.url}{path}", json=body, headers=a1111.basic(KEY), timeout=180)


def data_url(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


# The txt2img body A1111's API tests start from (every field as they send it).
TXT2IMG: dict[str, Any] = {
    "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0, "enable_hr": False, "eta": 0,
    "firstphase_height": 0, "firstphase_width": 0, "height": 64, "n_iter": 1,
    "negative_prompt": "", "prompt": "example prompt", "restore_faces": False, "s_churn": 0,
    "s_noise": 1, "s_tmax": 0, "s_tmin": 0, "sampler_index": "Euler a", "seed": -1,
    "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3, "styles": [],
    "subseed": -1, "subseed_strength": 0, "tiling": False, "width": 64,
}  # fmt: skip


def img2img_body() -> dict[str, Any]:
    picture = Image.linear_gradient("L").resize((64, 64)).convert("RGB")
    return {
        "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0.75, "eta": 0, "height": 64,
        "include_init_images": False, "init_images": [data_url(picture)],
        "inpaint_full_res": False, "inpaint_full_res_padding": 0, "inpainting_fill": 0,
        "inpainting_mask_invert": False, "mask": None, "mask_blur": 4, "n_iter": 1,
        "negative_prompt": "", "override_settings": {}, "prompt": "example prompt",
        "resize_mode": 0, "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0,
        "s_tmin": 0, "sampler_index": "Euler a", "seed": -1, "seed_resize_from_h": -1,
        "seed_resize_from_w": -1, "steps": 3, "styles": [], "subseed": -1,
        "subseed_strength": 0, "tiling": False, "width": 64,
    }  # fmt: skip


def left_half_mask() -> str:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    return data_url(mask)


def test_what_a1111s_own_api_tests_send(site: Served) -> None:
    for change in [
        {},
        {"negative_prompt": "example negative prompt"},
        {"prompt": "((emphasis)), (emphasis1:1.1), [to:1], [from::2], [from:to:0.3], [alt|alt1]"},
        {"height": 128},
        {"enable_hr": True},  # hires fix at A1111's defaults: 2x, Latent, strength 0 as sent
        {"sampler_index": "PLMS"},
        {"sampler_index": "DDIM"},
        {"sampler_index": "UniPC"},
        {"n_iter": 2},
        {"batch_size": 2},
    ]:
        made = call(site, "POST", "/sdapi/v1/txt2img", TXT2IMG | change)
        images = [png(data) for data in made["images"]]
        expected = 2 if change.get("n_iter") == 2 or change.get("batch_size") == 2 else 1
        assert len(images) == expected, change
        size = (128, 128) if change.get("enable_hr") else (64, change.get("height", 64))
        assert images[0].size == size, change
    img2img = img2img_body()
    plain = call(site, "POST", "/sdapi/v1/img2img", img2img | {"seed": 4})
    masked = call(
        site, "POST", "/sdapi/v1/img2img", img2img | {"mask": left_half_mask(), "seed": 4}
    )
    inverted = call(
        site, "POST", "/sdapi/v1/img2img",
        img2img | {"mask": left_half_mask(), "inpainting_mask_invert": True, "seed": 4},
    )  # fmt: skip
    source = img2img["init_images"][0].split(",", 1)[1]
    given = Image.open(io.BytesIO(base64.b64decode(source))).convert("RGB")
    kept = [png(made["images"][0]).convert("RGB") for made in (masked, inverted)]
    # Outside the mask, the input's own pixels: the right half, then the left half.
    assert kept[0].crop((32, 0, 64, 64)).tobytes() == given.crop((32, 0, 64, 64)).tobytes()
    assert kept[1].crop((0, 0, 32, 64)).tobytes() == given.crop((0, 0, 32, 64)).tobytes()
    assert kept[1].crop((32, 0, 64, 64)).tobytes() != given.crop((32, 0, 64, 64)).tobytes()
    assert png(plain["images"][0]).size == (64, 64)
    # What it tests that this server does not offer: refused, naming the field.
    for body, field in [
        (TXT2IMG | {"tiling": True}, "tiling"),
        (TXT2IMG | {"restore_faces": True}, "restore_faces"),
    ]:
        refused = post(site, "/sdapi/v1/txt2img", body)
        assert refused.status_code == 400 and refused.json()["body"] == field
    script = img2img | {"script_name": "sd upscale", "script_args": ["", 8, "Lanczos", 2.0]}
    assert post(site, "/sdapi/v1/img2img", script).json()["body"] == "script_name"
    for path in ["cmd-flags", "samplers", "upscalers", "sd-models", "hypernetworks",
                 "face-restorers", "realesrgan-models", "prompt-styles", "embeddings"]:  # fmt: skip
        call(site, "GET", f"/sdapi/v1/{path}")


def test_hires_fix_and_clip_skip_as_a1111_clients_ask(site: Served) -> None:
    body = {
        "prompt": "a harbour", "seed": 9, "width": 64, "height": 64, "steps": 3,
        "sampler_name": "Euler", "scheduler": "Karras", "enable_hr": True, "hr_scale": 2,
        "hr_upscaler": "Latent (nearest)", "hr_second_pass_steps": 2,
        "denoising_strength": 0.5, "hr_sampler_name": "DPM++ 2M", "hr_prompt": "a harbour, sharp",
        "override_settings": {"CLIP_stop_at_last_layers": 2},
    }  # fmt: skip
    made = call(site, "POST", "/sdapi/v1/txt2img", body)
    assert png(made["images"][0]).size == (128, 128)
    info = json.loads(made["info"])
    assert (info["width"], info["height"], info["clip_skip"]) == (64, 64, 2)  # A1111's: first pass
    text = info["infotexts"][0]
    for part in ["Sampler: Euler, Schedule type: Karras", "Denoising strength: 0.5",
                 "Clip skip: 2", "Hires upscale: 2", "Hires steps: 2",
                 "Hires upscaler: Latent (nearest)", "Hires sampler: DPM++ 2M"]:  # fmt: skip
        assert part in text, (part, text)
    assert info["extra_generation_params"]["Hires upscaler"] == "Latent (nearest)"
    spec = call(site, "GET", f"/v1/jobs/{info['job_id']}")["spec"]
    assert spec["hires"]["scheduler"] == "dpm++_2m_karras" and spec["clip_skip"] == 2
    again = call(site, "POST", "/sdapi/v1/txt2img", body)
    assert again["images"][0] == made["images"][0]  # reproducible
    resized = call(
        site, "POST", "/sdapi/v1/txt2img",
        body | {"hr_resize_x": 96, "hr_resize_y": 64, "hr_upscaler": "Lanczos",
                "hr_scheduler": "Exponential"},
    )  # fmt: skip
    assert png(resized["images"][0]).size == (96, 64)
    resized_text = json.loads(resized["info"])["infotexts"][0]
    assert "Hires resize: 96x64" in resized_text
    hires_part = 'Hires sampler: DPM++ 2M, Hires prompt: "a harbour, sharp", Hires schedule type'
    assert f"{hires_part}: Exponential" in resized_text
    refused = post(site, "/sdapi/v1/txt2img", body | {"hr_upscaler": "ESRGAN_4x"})
    assert refused.status_code == 400 and "hr_upscaler" in refused.text


def test_what_a_discord_bot_sends_and_reads(site: Served) -> None:
    # At start: the flags without a key (401 tells it to send one), then its lists.
    assert httpx.get(f"{site.url}/sdapi/v1/cmd-flags", timeout=30).status_code == 401
    embeddings = call(site, "GET", "/sdapi/v1/embeddings")
    assert embeddings == {"loaded": {}, "skipped": {}}
    body = {
        "prompt": "a lighthouse", "negative_prompt": "", "steps": 3, "width": 64, "height": 64,
        "cfg_scale": "7.0", "sampler_index": "Euler a", "seed": 4294967295,
        "seed_resize_from_h": -1, "seed_resize_from_w": -1, "denoising_strength": None,
        "n_iter": 1, "batch_size": 1, "styles": ["None"],
        "override_settings": {"CLIP_stop_at_last_layers": 1},
    }  # fmt: skip
    made = call(site, "POST", "/sdapi/v1/txt2img", body)
    info = json.loads(made["info"])
    assert info["all_seeds"] == [4294967295] and info["cfg_scale"] == 7.0
    read = call(
        site, "POST", "/sdapi/v1/png-info", {"image": "data:image/png;base64," + made["images"][0]}
    )
    assert isinstance(read["info"], str) and read["info"] == info["infotexts"][0]
    assert read["parameters"]["Seed"] == "4294967295" and read["parameters"]["Sampler"] == "Euler a"
    blank = Image.new("RGB", (8, 8))
    assert call(site, "POST", "/sdapi/v1/png-info", {"image": data_url(blank)})["info"] == ""
    hires = body | {"enable_hr": True, "hr_upscaler": "Latent", "hr_scale": 1,
                    "hr_second_pass_steps": 1.0, "denoising_strength": "0.75"}  # fmt: skip
    assert png(call(site, "POST", "/sdapi/v1/txt2img", hires)["images"][0]).size == (64, 64)
    assert call(site, "POST", "/sdapi/v1/skip") is None


def test_a_native_hires_job_with_clip_skip_runs_end_to_end(site: Served) -> None:
    """The same features at the native door: a `/v1/jobs` request in, an image at the
    target size and A1111's infotext out."""
    request = {
        "prompt": "a harbour", "steps": 2, "seed": 5, "scheduler": "euler",
        "hires": {"scale": 1.5, "steps": 1, "upscaler": "Latent (antialiased)"},
        "clip_skip": 2, "width": 64, "height": 64,
    }  # fmt: skip
    created = post(site, "/v1/jobs", request)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]

    def finished() -> bool:
        status = call(site, "GET", f"/v1/jobs/{job_id}")["status"]
        assert status not in ("failed", "cancelled"), status
        return bool(status == "succeeded")

    wait_until(finished, timeout=120)
    refused = post(site, "/v1/jobs", {**request, "hires": {"scale": 9}})
    assert refused.status_code == 400 and "hires.scale" in refused.text
    folder = site.root / "var" / "outbox" / job_id
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


def test_what_a1111_takes_is_taken_and_the_rest_refused_naming_the_field(site: Served) -> None:
    """What asks for nothing of what this server cannot do is taken; every other value
    is refused, naming the field (and /openapi.json says which: tests/e2e/test_api.py
    runs schemathesis over it)."""
    nothing_asked = {"restore_faces": "no", "tiling": 0, "alwayson_scripts": {},
                     "script_name": "", "firstphase_width": 0, "subseed_strength": "0",
                     "seed_resize_from_w": -1, "sampler_index": "Euler",
                     "steps": "2.0"}  # fmt: skip
    made = call(site, "POST", "/sdapi/v1/txt2img", TXT2IMG | nothing_asked)
    assert json.loads(made["info"])["steps"] == 2
    for change, field in [
        ({"restore_faces": 1}, "restore_faces"),
        ({"alwayson_scripts": {"ADetailer": {"args": []}}}, "alwayson_scripts"),
        ({"seed": "1e3"}, "seed"),
        ({"cfg_scale": "inf"}, "cfg_scale"),
        ({"override_settings": []}, "override_settings"),
        ({"enable_hr": 2}, "enable_hr"),
        ({"sampler_name": "Euler", "sampler_index": "Nope"}, "sampler_index"),
        ({"negative_prompt": 0}, "negative_prompt"),
    ]:
        refused = post(site, "/sdapi/v1/txt2img", TXT2IMG | change)
        assert refused.status_code == 400 and refused.json()["body"] == field, refused.text
    for options, field in [({"sd_model_checkpoint": "../x"}, "sd_model_checkpoint"),
                           ({"sd_vae": ".x"}, "sd_vae")]:  # fmt: skip
        missing = post(site, "/sdapi/v1/options", options)  # no such name: none installed
        assert missing.status_code == 404 and missing.json()["body"] == field, missing.text
