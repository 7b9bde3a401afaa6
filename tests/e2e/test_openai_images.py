"""OpenAI's images API as OpenAI's own clients call it (model names, output formats,
variations), with the official `openai` SDK against a real `serve`
on two tiny models: OpenAI's image model names at generations, edits, variations and
chat; a configured alias to the other model; each output format decoded; the answer
shapes of gpt-image and DALL-E names; and every refused value on an in-process server,
with nothing queued."""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.support.bare import Bare
from tests.support.live_server import Served, serve, wait_until

pytestmark = [
    pytest.mark.slow,
    # The SDK marks create_variation deprecated (OpenAI retired DALL-E 2); clients call it.
    pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning"),
]

KEY = "openai-images-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}
# OpenAI's names, each with the shape of the API it belongs to.
GPT_IMAGE = ("gpt-image-1", "gpt-image-1-mini", "gpt-image-2.5-flare", "chatgpt-image-latest")
DALL_E = ("dall-e-3",)  # dall-e-2 is configured as an alias of the other model here
SMALL = {"steps": 2}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[Served]:
    from alice_spool.engine.tiny import create_tiny

    config = f'[server.api_keys]\nops = "{KEY}"\n'
    config += '[models.aliases]\n"dall-e-2" = "sd/other"\n"house-style" = "other"\n'
    models = tmp_path_factory.mktemp("openai-images-models")
    shutil.copytree(tiny_models, models, dirs_exist_ok=True)
    create_tiny(models, "other")
    create_tiny(models, "flux-schnell", family="flux", variant="schnell")
    with serve(
        tmp_path_factory.mktemp("openai-images"), config, models=models, split=True
    ) as server:
        chosen = httpx.post(
            f"{server.url}/v1/models/default", json={"model": "sd/tiny"}, headers=HEADERS
        )
        assert chosen.status_code == 200, chosen.text
        yield server


def client(site: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{site.url}/v1", api_key=KEY, max_retries=0, timeout=180)


def job(site: Served, job_id: str) -> dict[str, Any]:
    answer = site.get(f"/v1/jobs/{job_id}", headers=HEADERS)
    assert answer.status_code == 200, answer.text
    return answer.json()


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def photo(path: Path, size: tuple[int, int] = (64, 64)) -> Path:
    rng = np.random.default_rng(11)
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(path)
    return path


def check_shape(answer: Any, name: str, model: str, prompt: str) -> dict[str, Any]:
    """The answer of the API `name` belongs to: gpt-image's base64 with `usage` and its
    settings, DALL-E's URLs with `revised_prompt`; both say which model ran."""
    extra = answer.model_extra
    assert extra["model"] == model
    if name in GPT_IMAGE:
        assert answer.usage is not None and answer.usage.total_tokens == 0
        assert answer.usage.input_tokens_details.text_tokens == 0
        assert answer.background == "opaque" and answer.output_format == "png"
        for item in answer.data:
            assert item.b64_json and item.url is None and item.revised_prompt is None
            assert decoded(base64.b64decode(item.b64_json)).format == "PNG"
    else:
        assert answer.usage is None
        for item in answer.data:
            assert item.url and item.b64_json is None
            if prompt:
                assert item.revised_prompt == prompt
    return extra


# -- model names at every door -------------------------------------------------------------


@pytest.mark.parametrize("name", [*GPT_IMAGE, *DALL_E])
def test_openai_model_names_generate_on_the_default_model(site: Served, name: str) -> None:
    answer = client(site).images.generate(
        model=name, prompt="a red fox", size="64x64", n=2, extra_body=SMALL
    )
    assert len(answer.data) == 2
    extra = check_shape(answer, name, "sd/tiny", "a red fox")
    record = job(site, extra["job_id"])
    assert (record["model"], record["source"]) == ("sd/tiny", "openai")
    assert record["spec"]["client_fields"] == {"model": name}
    if name in DALL_E:
        fetched = httpx.get(answer.data[0].url, timeout=30)  # no key: the URL is the capability
        assert fetched.headers["content-type"] == "image/png"
        assert decoded(fetched.content).size == (64, 64)
    else:
        assert answer.size == "64x64" and answer.quality == "low"  # 2 steps reached no more


def test_gpt_image_names_answer_base64_even_when_a_url_is_asked(site: Served) -> None:
    answer = client(site).images.generate(
        model="gpt-image-1", prompt="a fox", size="64x64", response_format="url",
        extra_body=SMALL,
    )  # fmt: skip
    check_shape(answer, "gpt-image-1", "sd/tiny", "a fox")


def test_a_configured_alias_runs_its_model_in_its_apis_shape(site: Served) -> None:
    api = client(site)
    dalle = api.images.generate(model="dall-e-2", prompt="a kite", size="64x64", extra_body=SMALL)
    extra = check_shape(dalle, "dall-e-2", "sd/other", "a kite")
    assert job(site, extra["job_id"])["model"] == "sd/other"
    house = api.images.generate(
        model="house-style", prompt="a kite", size="64x64", response_format="b64_json",
        extra_body=SMALL,
    )  # fmt: skip
    assert house.model_extra["model"] == "sd/other" and house.data[0].b64_json
    record = job(site, house.model_extra["job_id"])
    assert (record["model"], record["spec"]["client_fields"]) == (
        "sd/other", {"model": "house-style"},
    )  # fmt: skip
    own = api.images.generate(model="sd/tiny", prompt="a kite", size="64x64", extra_body=SMALL)
    assert own.data[0].url and own.model_extra["model"] == "sd/tiny"
    assert job(site, own.model_extra["job_id"])["spec"]["client_fields"] == {}


@pytest.mark.parametrize("name", ["gpt-image-1", "dall-e-3", "dall-e-2", "house-style"])
def test_each_name_edits_and_makes_variations(site: Served, name: str, tmp_path: Path) -> None:
    api = client(site)
    model = "sd/other" if name in ("dall-e-2", "house-style") else "sd/tiny"
    source = photo(tmp_path / "photo.png", (80, 64))
    with source.open("rb") as image:
        edited = api.images.edit(model=name, image=image, prompt="a painting", extra_body=SMALL)
    extra = check_shape(edited, name, model, "a painting")
    record = job(site, extra["job_id"])
    assert (record["model"], record["result"]["mode"]) == (model, "img2img")
    with source.open("rb") as image:
        varied = api.images.create_variation(model=name, image=image, n=2, extra_body=SMALL)
    extra = check_shape(varied, name, model, "")
    assert len(varied.data) == 2
    record = job(site, extra["job_id"])
    spec = record["result"]["spec"]
    assert (spec["prompt"], spec["strength"], spec["width"], spec["height"]) == ("", 0.6, 80, 64)
    assert record["result"]["mode"] == "img2img"
    assert record["spec"]["client_fields"] == {"model": name}
    if name not in GPT_IMAGE:
        assert all(item.revised_prompt is None for item in varied.data)  # it had no prompt


def test_a_variation_is_made_from_its_image(site: Served, tmp_path: Path) -> None:
    """img2img of the image: the same image and seed make the same variation, another
    image (or strength) another one; a size makes it that size."""
    api = client(site)
    first = photo(tmp_path / "first.png")
    second = tmp_path / "second.png"
    Image.open(first).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(second)

    def vary(source: Path, **fields: Any) -> bytes:
        with source.open("rb") as image:
            answer = api.images.create_variation(
                image=image, response_format="b64_json",
                extra_body={"steps": 4, "seed": 3, **fields},
            )  # fmt: skip
        return base64.b64decode(answer.data[0].b64_json)

    again = vary(first)
    assert vary(first) == again
    assert vary(second) != again
    assert vary(first, strength=0.9) != again
    with first.open("rb") as image:
        sized = api.images.create_variation(image=image, size="256x256", extra_body=SMALL)
    assert decoded(httpx.get(sized.data[0].url, timeout=30).content).size == (256, 256)


def test_chat_with_an_image_model_name_runs_the_default_model(site: Served) -> None:
    completion = client(site).chat.completions.create(
        model="gpt-image-1",
        messages=[{"role": "user", "content": "a lighthouse"}],
        extra_body={"metadata": {"steps": 2, "width": 64, "height": 64}},
    )
    metadata = completion.choices[0].message.model_extra["metadata"]
    assert metadata["model"] == "sd/tiny"
    record = job(site, metadata["job_id"])
    assert record["spec"]["client_fields"] == {"model": "gpt-image-1"}
    aliased = client(site).chat.completions.create(
        model="dall-e-2", messages=[{"role": "user", "content": "a lighthouse"}],
        extra_body={"metadata": {"steps": 2, "width": 64, "height": 64}},
    )  # fmt: skip
    assert aliased.choices[0].message.model_extra["metadata"]["model"] == "sd/other"


def test_an_unknown_name_is_a_404_naming_the_models_and_the_aliases(site: Served) -> None:
    api = client(site)
    with pytest.raises(openai.NotFoundError) as missing:
        api.images.generate(model="midjourney-v7", prompt="x")
    message = missing.value.body["message"]
    assert "installed: sd/flux-schnell, sd/other, sd/tiny" in message and "dall-e-3" in message
    assert "house-style" in message
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])


def test_models_lists_and_retrieves_the_aliases(site: Served) -> None:
    api = client(site)
    listed = {model.id: model for model in api.models.list().data}
    assert {"sd/tiny", "sd/other"} <= set(listed)
    assert not listed["sd/tiny"].model_extra.get("alias")
    for name, target in [
        ("dall-e-3", "sd/tiny"),
        ("gpt-image-1", "sd/tiny"),
        ("chatgpt-image-latest", "sd/tiny"),
        ("dall-e-2", "sd/other"),
        ("house-style", "sd/other"),
    ]:
        entry = listed[name]
        assert (entry.object, entry.owned_by, entry.model_extra["alias"]) == (
            "model", "alice", True,
        )  # fmt: skip
        assert entry.model_extra["alias_of"] == target and isinstance(entry.created, int)
    retrieved = api.models.retrieve("dall-e-3")
    assert (retrieved.id, retrieved.model_extra["alias_of"]) == ("dall-e-3", "sd/tiny")
    assert api.models.retrieve("tiny").id == "sd/tiny"
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("midjourney-v7")


def test_every_answer_is_as_the_description_says(site: Served, tmp_path: Path) -> None:
    """Each door's answer, checked against its schema in /openapi.json: the images in
    either API's shape (generations, edits, variations), the chat completion, the
    model list and one model, the LoRAs, a rescan, the default model chosen."""
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    document = site.get("/openapi.json").json()

    def check(path: str, method: str, answer: httpx.Response) -> None:
        assert answer.status_code == 200, answer.text
        described = document["paths"][path][method]["responses"]["200"]["content"]
        schema = {**described["application/json"]["schema"], "components": document["components"]}
        jsonschema_rs.validator_for(schema).validate(answer.json())

    def post(path: str, **options: Any) -> httpx.Response:
        return httpx.post(f"{site.url}{path}", headers=HEADERS, timeout=180, **options)

    image = photo(tmp_path / "photo.png").read_bytes()
    for name in ("gpt-image-1", "dall-e-3"):
        body = {"model": name, "prompt": "a fox", "size": "64x64", **SMALL}
        check("/v1/images/generations", "post", post("/v1/images/generations", json=body))
        form = {"model": name, "prompt": "a fox", "steps": "2"}
        edited = post("/v1/images/edits", files={"image": ("a.png", image)}, data=form)
        check("/v1/images/edits", "post", edited)
        varied = post(
            "/v1/images/variations",
            files={"image": ("a.png", image)},
            data={"model": name, "steps": "2"},
        )
        check("/v1/images/variations", "post", varied)
    chat = {"messages": [{"role": "user", "content": "a fox"}], "metadata": SMALL}
    check("/v1/chat/completions", "post", post("/v1/chat/completions", json=chat))
    for path in ("/v1/models", "/v1/loras"):
        check(path, "get", site.get(path, headers=HEADERS))
    check("/v1/models/{name}", "get", site.get("/v1/models/dall-e-3", headers=HEADERS))
    check("/v1/models/refresh", "post", post("/v1/models/refresh"))
    check("/v1/models/default", "post", post("/v1/models/default", json={"model": "sd/tiny"}))
    edits = document["paths"]["/v1/images/edits"]["post"]
    assert {"415", "504"} <= set(edits["responses"])  # not a form; the job not done in time
    form = edits["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["image"]["format"] == "binary" and "mask" in form["properties"]


# -- fields ---------------------------------------------------------------------------------


def _exif_comment(image: Image.Image) -> str:
    raw = image.getexif().get_ifd(0x8769)[0x9286]
    return bytes(raw[8:]).decode("utf-16-be")


@pytest.mark.parametrize(("kind", "pillow"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_each_output_format_as_base64_and_as_a_url(site: Served, kind: str, pillow: str) -> None:
    api = client(site)
    inline = api.images.generate(
        model="gpt-image-1", prompt="a blue door", size="64x64", output_format=kind,
        extra_body={"steps": 2, "seed": 7},
    )  # fmt: skip
    assert inline.output_format == kind
    image = decoded(base64.b64decode(inline.data[0].b64_json))
    assert (image.format, image.size) == (pillow, (64, 64))
    text = image.text["parameters"] if kind == "png" else _exif_comment(image)
    assert text.startswith("a blue door") and "Seed: 7" in text
    linked = api.images.generate(
        model="dall-e-3", prompt="a blue door", size="64x64", output_format=kind,
        extra_body=SMALL,
    )  # fmt: skip
    url = linked.data[0].url
    assert url.endswith(f".{kind}")
    fetched = httpx.get(url, timeout=30)
    assert fetched.status_code == 200
    assert fetched.headers["content-type"] == f"image/{kind}"
    assert decoded(fetched.content).format == pillow
    record = job(site, linked.model_extra["job_id"])
    assert record["spec"]["client_fields"]["output_format"] == kind


def test_output_compression_shrinks_jpeg_and_webp(site: Served) -> None:
    api = client(site)
    sizes = {}
    for compression in (5, 100):
        answer = api.images.generate(
            model="gpt-image-1", prompt="noise", size="128x128", output_format="jpeg",
            output_compression=compression, extra_body={"steps": 2, "seed": 1},
        )  # fmt: skip
        sizes[compression] = len(base64.b64decode(answer.data[0].b64_json))
    assert sizes[5] * 2 < sizes[100]
    linked = api.images.generate(
        model="dall-e-3", prompt="noise", size="128x128", output_format="webp",
        output_compression=5, extra_body={"steps": 2, "seed": 1},
    )  # fmt: skip
    url = linked.data[0].url
    assert url.endswith(".webp?compression=5")
    small = httpx.get(url, timeout=30)
    full = httpx.get(url.split("?")[0], timeout=30)
    assert small.status_code == full.status_code == 200
    assert len(small.content) * 2 < len(full.content)
    assert httpx.get(url.split("?")[0] + "?compression=101", timeout=30).status_code == 400


def test_quality_picks_steps_and_the_requests_steps_win(site: Served) -> None:
    api = client(site)
    for quality, steps, answered in [("low", 12, "low"), ("high", 30, "high"), ("hd", 40, "xhigh")]:
        answer = api.images.generate(
            model="gpt-image-1",
            prompt="a boat",
            size="64x64",
            quality=quality,  # type: ignore[arg-type]
        )
        assert answer.quality == answered
        record = job(site, answer.model_extra["job_id"])
        assert record["spec"]["steps"] == steps
        assert record["spec"]["client_fields"] == {"model": "gpt-image-1", "quality": quality}
    mine = api.images.generate(
        model="dall-e-3", prompt="a boat", size="64x64", quality="hd", extra_body={"steps": 3}
    )
    assert job(site, mine.model_extra["job_id"])["spec"]["steps"] == 3
    auto = api.images.generate(model="gpt-image-1", prompt="a boat", size="auto", quality="auto")
    spec = job(site, auto.model_extra["job_id"])["result"]["spec"]
    assert (spec["steps"], spec["width"], spec["height"]) == (2, 64, 64)  # defaults, native


def test_style_user_and_moderation_are_recorded(site: Served) -> None:
    answer = client(site).images.generate(
        model="dall-e-3", prompt="a cat", size="64x64", style="natural", user="u-42",
        moderation="low", background="opaque", extra_body=SMALL,
    )  # fmt: skip
    record = job(site, answer.model_extra["job_id"])
    assert record["spec"]["client_fields"] == {
        "model": "dall-e-3",
        "style": "natural",
        "user": "u-42",
        "moderation": "low",
        "background": "opaque",
    }


def test_every_size_openai_lists_and_auto(site: Served) -> None:
    """Each size OpenAI lists is taken as it is (checked without running: n is refused
    after the size is read), and auto is the model's native size."""
    api = client(site)
    for size in ("256x256", "512x512", "1024x1024", "1792x1024", "1024x1792", "1536x1024",
                 "1024x1536"):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as refused:
            api.images.generate(model="dall-e-3", prompt="x", size=size, n=99)  # type: ignore[arg-type]
        assert refused.value.body["param"] == "n", size
    native = api.images.generate(model="dall-e-3", prompt="x", size="auto", extra_body=SMALL)
    spec = job(site, native.model_extra["job_id"])["result"]["spec"]
    assert (spec["width"], spec["height"]) == (64, 64)


def test_streaming_answers_one_completed_event_per_image(site: Served) -> None:
    api = client(site)
    events = list(
        api.images.generate(
            model="gpt-image-1",
            prompt="a hill",
            size="64x64",
            n=2,
            stream=True,
            partial_images=1,
            output_format="webp",
            extra_body=SMALL,
        )
    )
    assert [event.type for event in events] == ["image_generation.completed"] * 2
    for event in events:
        assert (event.output_format, event.size, event.background) == ("webp", "64x64", "opaque")
        assert decoded(base64.b64decode(event.b64_json)).format == "WEBP"
        assert event.usage.total_tokens == 0
    source = photo(Path(site.root) / "stream.png")
    with source.open("rb") as image:
        edits = list(
            api.images.edit(
                model="gpt-image-1", image=image, prompt="x", stream=True, extra_body=SMALL
            )
        )
    assert [event.type for event in edits] == ["image_edit.completed"]
    # Any name streams as gpt-image does: base64 in the events, never a URL.
    dalle = list(
        api.images.generate(
            model="dall-e-3", prompt="a hill", size="64x64", stream=True, extra_body=SMALL
        )
    )
    (only,) = dalle
    assert decoded(base64.b64decode(only.b64_json)).format == "PNG"
    assert "url" not in only.model_extra and "revised_prompt" not in only.model_extra


# -- what is refused, with nothing queued ----------------------------------------------------


@pytest.fixture
def bare(make_bare: Callable[..., Bare]) -> Bare:
    """No runner: a request that gets past the door waits 1 s and answers 504, its job
    queued."""
    return make_bare(
        **{
            "models.aliases": {"house-style": "sd/tiny", "broken": "sd/nowhere"},
            "server.request_timeout_s": "1",
        }
    )


def _queued(bare: Bare) -> int:
    return len(bare.store.jobs.list_jobs(limit=100).jobs)


def _multipart(url: str, path: str, files: dict[str, Any], data: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{url}{path}", files=files, data=data, timeout=30)


def _png_bytes(size: tuple[int, int] = (64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"background": "transparent"}, 400, "background"),
        ({"output_format": "gif"}, 400, "output_format"),
        ({"output_format": "svg"}, 400, "output_format"),
        ({"output_compression": 150}, 400, "output_compression"),
        ({"quality": "ultra"}, 400, "quality"),
        ({"style": "comic"}, 400, "style"),
        ({"moderation": "none"}, 400, "moderation"),
        ({"response_format": "bytes"}, 400, "response_format"),
        ({"partial_images": 9}, 400, "partial_images"),
        ({"frame_count": 4}, 400, "frame_count"),
        ({"user": 5}, 400, "user"),
        ({"size": "1536x864x2"}, 400, "size"),
        ({"model": 3}, 400, "model"),
        ({"model": "midjourney"}, 404, None),
        ({"model": "broken"}, 404, None),
        ({"unknown_field": 1}, 400, "unknown_field"),
    ],
)
def test_generations_refuse_with_the_field_named_and_queue_nothing(
    bare: Bare, body: dict[str, Any], status: int, field: str | None
) -> None:
    answer = httpx.post(
        f"{bare.url}/v1/images/generations", json={"prompt": "x", **body}, timeout=30
    )
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    if field is not None:
        assert error["param"] == field, error
    if status == 404:
        assert "installed: sd/tiny" in error["message"]
        assert "house-style" in error["message"] and "gpt-image-1" in error["message"]
    assert _queued(bare) == 0


def test_variations_and_edits_refuse_bad_forms_and_queue_nothing(bare: Bare) -> None:
    png = _png_bytes()
    cases = [
        ("/v1/images/variations", {"picture": ("a.png", png)}, {"n": "1"}, "image"),
        ("/v1/images/variations", {"image": ("a.png", png)}, {"prompt": "x"}, "prompt"),
        ("/v1/images/variations", {"image": ("a.png", b"not an image")}, {}, "image"),
        ("/v1/images/variations", {"image": ("a.png", png), "mask": ("m.png", png)}, {}, "image"),
        ("/v1/images/variations", {"image": ("a.png", png)}, {"strength": "0"}, "strength"),
        ("/v1/images/variations", {"image": ("a.png", png)}, {"quality": "best"}, "quality"),
        ("/v1/images/variations", {"image": ("a.png", png)}, {"background": "transparent"},
         "background"),
        ("/v1/images/edits", {"image": ("a.png", png)}, {"prompt": "x", "output_format": "gif"},
         "output_format"),
        ("/v1/images/edits", {"image": ("a.png", png)}, {"prompt": "x", "input_fidelity": "max"},
         "input_fidelity"),
        ("/v1/images/variations", {"image": ("a.png", png)}, {"stream": "true"}, "stream"),
        ("/v1/images/variations", {"image": ("a.png", png)}, {"output_compression": "\u00b2"},
         "output_compression"),
    ]  # fmt: skip
    for path, files, data, field in cases:
        answer = _multipart(bare.url, path, files, data)
        assert answer.status_code == 400, (path, data, answer.text)
        assert answer.json()["error"]["param"] == field, (path, data, answer.text)
    as_json = httpx.post(f"{bare.url}/v1/images/variations", json={"image": "x"}, timeout=30)
    assert as_json.status_code == 415
    assert _queued(bare) == 0


def test_a_user_that_looks_like_a_number_stays_text(bare: Bare) -> None:
    """Form fields OpenAI defines as text are taken as text, whatever they spell."""
    answer = _multipart(
        bare.url, "/v1/images/variations", {"image": ("a.png", _png_bytes())},
        {"user": "12345", "style": "vivid", "n": "2"},
    )  # fmt: skip
    assert answer.status_code == 504  # no runner here: its job stays queued
    (queued,) = bare.store.jobs.list_jobs(limit=10).jobs
    assert dict(queued.spec.client_fields) == {"user": "12345", "style": "vivid"}
    assert (queued.spec.n, queued.spec.prompt, queued.spec.strength) == (2, "", 0.6)


def test_an_image_url_in_another_format_needs_the_images_secret(bare: Bare) -> None:
    from tests.support.bare import served_image_job

    job_id, url = served_image_job(bare)
    assert httpx.get(url.removesuffix(".png") + ".webp", timeout=30).status_code == 200
    wrong = url.replace(url.split("/")[-2], "0" * 32).removesuffix(".png") + ".jpeg"
    assert httpx.get(wrong, timeout=30).status_code == 404
    gif = httpx.get(url.removesuffix(".png") + ".gif", timeout=30)
    assert gif.status_code == 404
    assert job_id in url
    for bad in ("101", "\u00b2", "-1", "abc"):
        answer = httpx.get(url.removesuffix(".png") + f".jpeg?compression={bad}", timeout=30)
        assert answer.status_code == 400, bad


def test_a_stream_whose_job_does_not_finish_ends_with_an_error_event(bare: Bare) -> None:
    """The stream's `error` event (here: the job still queued when the request's time is
    up), which the SDK raises; the job stays queued, fetchable by its id."""
    api = openai.OpenAI(base_url=f"{bare.url}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.APIError, match="did not finish") as failed:
        list(api.images.generate(model="gpt-image-1", prompt="x", size="64x64", stream=True))
    assert failed.value.body["code"] == "timeout"
    (queued,) = bare.store.jobs.list_jobs(limit=10).jobs
    assert queued.status.value == "queued"


def test_each_stream_gives_its_slot_back(make_bare: Callable[..., Bare]) -> None:
    """With one stream slot per client, streams one after another all run: each gives
    its slot back when it ends (here: an error event, no runner to finish the job)."""
    bare = make_bare(**{"server.request_timeout_s": "1", "server.max_streams_per_client": "1"})
    api = openai.OpenAI(base_url=f"{bare.url}/v1", api_key="none", max_retries=0)
    for _ in range(3):
        with pytest.raises(openai.APIError, match="did not finish"):
            list(api.images.generate(model="gpt-image-1", prompt="x", size="64x64", stream=True))
    assert len(bare.store.jobs.list_jobs(limit=10).jobs) == 3


def test_a_flux_model_at_every_door(site: Served) -> None:
    """A FLUX.1 schnell model through the OpenAI images and chat doors, the native API,
    AUTOMATIC1111's and the inbox: each job runs on it with the family's 4 steps unless
    the request gives its own; a negative prompt is a 400 naming it."""
    api = client(site)
    image = api.images.generate(model="sd/flux-schnell", prompt="a fox", size="64x64")
    ran = job(site, image.model_extra["job_id"])["result"]["spec"]
    assert (ran["model"], ran["steps"], ran["scheduler"]) == ("sd/flux-schnell", 4, "euler")
    chat = api.chat.completions.create(
        model="sd/flux-schnell", messages=[{"role": "user", "content": "a fox"}],
        extra_body={"metadata": {"width": 64, "height": 64}},
    )  # fmt: skip
    assert chat.choices[0].message.model_extra["metadata"]["steps"] == 4
    native = httpx.post(
        f"{site.url}/v1/jobs", headers=HEADERS, timeout=30,
        json={"prompt": "a fox", "model": "flux-schnell", "width": 64, "height": 64},
    )  # fmt: skip
    assert native.status_code == 202, native.text
    a1111 = httpx.post(
        f"{site.url}/sdapi/v1/txt2img", headers=HEADERS, timeout=120,
        json={"prompt": "a fox", "steps": 2, "width": 64, "height": 64, "cfg_scale": 1,
              "sampler_name": "Euler",
              "override_settings": {"sd_model_checkpoint": "flux-schnell"}},
    )  # fmt: skip
    assert a1111.status_code == 200, a1111.text
    assert json.loads(a1111.json()["info"])["steps"] == 2
    inbox = site.root / "var" / "inbox"
    (inbox / ".flux.json").write_text(
        json.dumps({"prompt": "a fox", "model": "flux-schnell", "width": 64, "height": 64})
    )
    (inbox / ".flux.json").rename(inbox / "flux.json")

    def finished() -> list[dict[str, Any]]:
        listed = site.get("/v1/jobs?model=sd/flux-schnell&limit=20", headers=HEADERS).json()
        return [j for j in listed["data"] if j["status"] == "succeeded"]

    wait_until(lambda: len(finished()) == 5, timeout=120)
    sources = sorted(j["source"] for j in finished())
    assert sources == ["a1111", "api", "inbox", "openai", "openai"]
    with pytest.raises(openai.BadRequestError) as refused:
        api.images.generate(
            model="sd/flux-schnell", prompt="x", extra_body={"negative_prompt": "blurry"}
        )
    assert refused.value.body["param"] == "negative_prompt"
