"""img2img and inpainting: the intake (decode, check, store) and the real pipeline on the
tiny model (its VAE is random: pixels are compared only where the contract is exact:
the same inputs give the same image, inpainting keeps every pixel outside the mask)."""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alice_spool import inputs
from alice_spool.engine.device import choose
from alice_spool.engine.resident import Engine
from alice_spool.engine.tiny import create_tiny
from alice_spool.errors import InputUnavailable, InvalidParameters
from alice_spool.library.registry import ModelRegistry
from alice_spool.spec import JobSpec, parse_spec


def encoded(seed: int, size: tuple[int, int] = (64, 64), kind: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, kind)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def mask_png(size: tuple[int, int] = (64, 64)) -> bytes:
    mask = Image.new("L", size, 0)
    mask.paste(255, (16, 16, 48, 48))  # white: repaint the middle
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    models = tmp_path_factory.mktemp("models")
    create_tiny(models, "tiny")
    return Engine(ModelRegistry(models), choose("cpu"))


def taken(**fields: object) -> tuple[JobSpec, inputs.Staged]:
    data, staged = inputs.take({"prompt": "a harbour", "steps": 3, "seed": 5, **fields}, 10**6)
    return parse_spec(data), staged


def run(engine: Engine, *jobs: tuple[JobSpec, inputs.Staged]) -> list[np.ndarray]:
    images = []
    for _, staged in jobs:
        images.append(
            {role: Image.open(io.BytesIO(decoded.data)) for role, decoded in staged.images.items()}
        )
    output = engine.generate([spec for spec, _ in jobs], images=images)
    return [np.asarray(job.images[0]).astype(np.int16) for job in output.jobs]


def test_the_intake_decodes_checks_and_names_the_inputs() -> None:
    png = encoded(1, (100, 70))
    spec, staged = taken(init_image="data:image/png;base64," + b64(png))
    assert spec.mode == "img2img" and spec.strength == 0.75
    assert (spec.width, spec.height) == (96, 64)  # the input's size, down to multiples of 8
    assert spec.init_image == "sha256:" + hashlib.sha256(png).hexdigest()
    jpeg, webp = encoded(2, kind="JPEG"), encoded(3, kind="WEBP")
    spec, staged = taken(input_images=[b64(jpeg), b64(webp)], width=128, height=64)
    assert staged.images["init_image"].extension == "jpg"  # ALICE's: the first is used
    assert (spec.width, spec.height) == (128, 64)  # a size given wins
    spec, staged = taken(init_image=b64(png), mask_image=b64(mask_png((100, 70))))
    assert spec.mode == "inpaint" and set(staged.images) == {"init_image", "mask_image"}
    plain, none = taken()
    assert plain.mode == "txt2img" and not none and plain.strength is None


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"init_image": "%%%"}, "init_image", "not valid base64"),
        ({"init_image": b64(b"GIF89a not really")}, "init_image", "not a PNG, JPEG or WebP"),
        ({"init_image": b64(encoded(1)[:200])}, "init_image", "not a readable image"),
        ({"init_image": b64(encoded(1, (1200, 1000)))}, "init_image", "max_input_pixels"),
        ({"init_image": 7}, "init_image", "base64 text"),
        ({"mask_image": b64(mask_png())}, "mask_image", "needs an init_image"),
        (
            {"init_image": b64(encoded(1)), "mask_image": b64(mask_png((32, 32)))},
            "mask_image",
            "the same size",
        ),
        ({"init_image": b64(encoded(1)), "strength": 0}, "strength", "more than 0"),
        ({"init_image": b64(encoded(1)), "strength": 1.5}, "strength", "between 0 and 1"),
        ({"input_images": "x"}, "input_images", "a list of images"),
        ({"input_image_urls": ["http://127.0.0.1/a.png"]}, "input_image_urls", "not taken here"),
        (
            {"init_image": b64(encoded(1)), "input_images": [b64(encoded(2))]},
            "input_images",
            "not both",
        ),
    ],
)
def test_every_bad_input_names_its_field(
    fields: dict[str, object], field: str, message: str
) -> None:
    with pytest.raises(InvalidParameters, match=message) as info:
        taken(**fields)
    assert info.value.field == field


def test_an_inbox_request_names_files_beside_it_and_nothing_outside(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "pictures").mkdir(parents=True)
    (inbox / "pictures" / "boat.png").write_bytes(encoded(4))
    (tmp_path / "secret.png").write_bytes(encoded(5))
    (inbox / "link.png").symlink_to(tmp_path / "secret.png")
    _, staged = inputs.take({"prompt": "x", "init_image": "pictures/boat.png"}, 10**6, inbox=inbox)
    assert staged.images["init_image"].data == (inbox / "pictures" / "boat.png").read_bytes()
    for name in ("../secret.png", "/etc/passwd", "link.png", "pictures/../../secret.png"):
        with pytest.raises(InvalidParameters, match="outside the inbox") as info:
            inputs.take({"prompt": "x", "init_image": name}, 10**6, inbox=inbox)
        assert info.value.field == "init_image"
    with pytest.raises(InvalidParameters, match="cannot read"):
        inputs.take({"prompt": "x", "init_image": "missing.png"}, 10**6, inbox=inbox)


def test_a_door_without_an_intake_refuses_raw_images() -> None:
    with pytest.raises(InvalidParameters, match="not taken here") as info:
        parse_spec({"prompt": "x", "init_image": b64(encoded(1))})
    assert info.value.details["field"] == "init_image"


def test_inputs_are_stored_durably_and_read_back(tmp_path: Path) -> None:
    spec, staged = taken(init_image=b64(encoded(6)), mask_image=b64(mask_png()))
    wanted = {"init_image": spec.init_image, "mask_image": spec.mask_image}
    directory = inputs.store(tmp_path, "job1", staged)
    assert sorted(p.name for p in directory.iterdir()) == ["init.png", "mask.png"]
    loaded = inputs.load(tmp_path, "job1", wanted)
    assert loaded["init_image"].mode == "RGB" and loaded["mask_image"].mode == "L"
    assert inputs.load(tmp_path, "job1", {"init_image": None}) == {}  # txt2img: none read
    # Damaged since it was queued (other bytes than its spec's hash): refused by name.
    (directory / "mask.png").write_bytes(encoded(7))
    with pytest.raises(InputUnavailable, match="not the image it was queued with") as info:
        inputs.load(tmp_path, "job1", wanted)
    assert info.value.details["field"] == "mask_image" and info.value.code == "input_unavailable"
    inputs.remove(tmp_path, "job1")
    assert not directory.exists()
    with pytest.raises(InputUnavailable, match="no longer stored") as info:
        inputs.load(tmp_path, "job1", wanted)
    assert info.value.details["field"] == "init_image"


def test_img2img_is_reproducible_and_depends_on_its_input(engine: Engine) -> None:
    first = taken(init_image=b64(encoded(1)), strength=0.6)
    again = run(engine, first)[0]
    assert np.array_equal(again, run(engine, first)[0])
    other = run(engine, taken(init_image=b64(encoded(2)), strength=0.6))[0]
    assert not np.array_equal(again, other)
    plain = run(engine, taken())[0]
    assert not np.array_equal(again, plain)


def test_img2img_jobs_batched_get_what_they_get_alone(engine: Engine) -> None:
    jobs = [taken(init_image=b64(encoded(s)), seed=s, strength=0.6) for s in (1, 2, 3)]
    together = run(engine, *jobs)
    for job, made in zip(jobs, together, strict=True):
        assert np.abs(run(engine, job)[0] - made).max() <= 2  # the 2/255 rule


def test_inpainting_keeps_every_pixel_outside_the_mask(engine: Engine) -> None:
    init = encoded(7)
    job = taken(init_image=b64(init), mask_image=b64(mask_png()), strength=1.0)
    made = run(engine, job)[0]
    source = np.asarray(Image.open(io.BytesIO(init)).convert("RGB")).astype(np.int16)
    keep = np.asarray(Image.open(io.BytesIO(mask_png()))) == 0
    assert np.array_equal(made[keep], source[keep])
    assert (made[~keep] != source[~keep]).mean() > 0.5  # and the middle was repainted


def test_a_job_without_its_stored_inputs_is_refused_by_the_engine(engine: Engine) -> None:
    spec, _ = taken(init_image=b64(encoded(1)))
    with pytest.raises(InvalidParameters, match="input image is missing"):
        engine.generate([spec], images=[{}])
