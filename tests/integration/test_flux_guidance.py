"""FLUX.1's guidance and its other variants, on tiny random-weight
models and the real diffusers pipelines: true CFG runs the negative prompt, which without
it is refused; a T5 prompt length within the family's limit; what a family has no use
for runs without it and is recorded; a Kontext model edits an image after the prompt, a
Fill model inpaints; the infotext writes FLUX.1's guidance as Forge does."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from alice_spool.engine.device import choose
from alice_spool.engine.generate import BatchOutput, Loaded, generate, load
from alice_spool.engine.tiny import create_tiny
from alice_spool.errors import InvalidParameters
from alice_spool.library.registry import ModelRegistry
from alice_spool.outbox import infotext
from alice_spool.spec import BuiltinDefaults, JobSpec, parse_spec

SERVER = BuiltinDefaults(default_steps=7, default_guidance_scale=6.0)
IMAGE, MASK = "sha256:" + "1" * 64, "sha256:" + "2" * 64


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    for variant in ("dev", "schnell", "kontext", "fill"):
        create_tiny(directory, f"flux-{variant}", family="flux", variant=variant)
    create_tiny(directory, "sd3", family="sd3")
    create_tiny(directory, "tiny")
    return directory


@pytest.fixture(scope="module")
def registry(models: Path) -> ModelRegistry:
    return ModelRegistry(models)


def loaded_model(registry: ModelRegistry, name: str) -> Loaded:
    info = registry.get(name)
    return load(info.path, info.id, choose("cpu"), family=str(info.family))


def queued(registry: ModelRegistry, **fields: Any) -> JobSpec:
    """A request as a door queues it: parsed, then made the model's (with_model)."""
    return registry.with_model(parse_spec({"prompt": "a red fox", **fields}, SERVER))


def ready(registry: ModelRegistry, name: str, **fields: Any) -> JobSpec:
    """A small job for the model, as its door queued it."""
    base = {"steps": 3, "width": 64, "height": 64, "seed": 5}
    return queued(registry, model=name, **base, **fields)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def images_of(output: BatchOutput) -> list[Image.Image]:
    assert all(job.error is None for job in output.jobs), [job.error for job in output.jobs]
    return [image for job in output.jobs for image in job.images]


def source_and_mask() -> tuple[Image.Image, Image.Image]:
    rng = np.random.default_rng(4)
    source = Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))  # white: repaint
    return source, mask


# -- the door -------------------------------------------------------------------------------


def test_the_variants_are_listed_with_their_model_cards_defaults(registry: ModelRegistry) -> None:
    for name, variant, steps, guidance, inputs in [
        ("flux-kontext", "kontext", 28, 2.5, {"init_image": IMAGE}),
        ("flux-fill", "fill", 50, 30.0, {"init_image": IMAGE, "mask_image": MASK}),
    ]:
        info = registry.get(name)
        assert (info.family, info.variant) == ("flux", variant)
        spec = queued(registry, model=name, **inputs)
        assert (spec.steps, spec.guidance_scale) == (steps, guidance)


def test_a_flux_negative_prompt_runs_with_true_cfg_and_is_refused_without(
    registry: ModelRegistry,
) -> None:
    with pytest.raises(InvalidParameters) as refused:
        queued(registry, model="flux-dev", negative_prompt="blurry")
    assert refused.value.details["field"] == "negative_prompt"
    assert "true_cfg_scale" in refused.value.message
    # true_cfg_scale 1 is off: refused the same
    with pytest.raises(InvalidParameters):
        queued(registry, model="flux-dev", negative_prompt="blurry", true_cfg_scale=1)
    spec = queued(registry, model="flux-dev", negative_prompt="blurry", true_cfg_scale=4)
    assert (spec.negative_prompt, spec.true_cfg_scale) == ("blurry", 4.0)
    # the Fill pipeline has neither: a negative prompt is refused, saying so; true CFG
    # alone (an A1111 client's usual cfg_scale 7) runs without it, recorded
    inpaint = {"model": "flux-fill", "init_image": IMAGE, "mask_image": MASK}
    with pytest.raises(InvalidParameters) as refused:
        queued(registry, **inpaint, negative_prompt="blurry", true_cfg_scale=3)
    assert refused.value.details["field"] == "negative_prompt"
    assert "Fill" in refused.value.message and "true_cfg_scale" not in refused.value.message
    fill = queued(registry, **inpaint, true_cfg_scale=7)
    assert fill.true_cfg_scale is None
    assert "Fill model's pipeline has no true CFG" in dict(fill.client_fields)["ignored"]


@pytest.mark.parametrize("bad", [0.5, 31, "x", True])
def test_true_cfg_scale_out_of_range_is_a_400_naming_it(registry: ModelRegistry, bad: Any) -> None:
    with pytest.raises(InvalidParameters) as refused:
        queued(registry, model="flux-dev", true_cfg_scale=bad)
    assert refused.value.details["field"] == "true_cfg_scale"


def test_the_t5_prompt_length_is_the_familys_to_limit(registry: ModelRegistry) -> None:
    assert queued(registry, model="flux-dev", max_sequence_length=512).max_sequence_length == 512
    assert queued(registry, model="sd3", max_sequence_length=77).max_sequence_length == 77
    for model, asked, limit in [("flux-schnell", 300, 256), ("flux-dev", 513, None)]:
        with pytest.raises(InvalidParameters) as refused:
            queued(registry, model=model, max_sequence_length=asked)
        assert refused.value.details["field"] == "max_sequence_length"
        if limit is not None:
            assert f"at most {limit}" in refused.value.message


def test_what_a_family_has_no_use_for_runs_without_it_and_is_recorded(
    registry: ModelRegistry,
) -> None:
    schnell = queued(registry, model="flux-schnell", guidance_scale=7)
    assert "FLUX.1 schnell takes no guidance" in dict(schnell.client_fields)["ignored"]
    # kept as given (the pipeline does not read it): the request hashes as it did before
    # the note existed, so a repeated idempotency key still matches
    assert schnell.guidance_scale == 7
    assert schnell.fingerprint() == replace(schnell, client_fields=()).fingerprint()
    sd = queued(registry, model="tiny", true_cfg_scale=5, max_sequence_length=100)
    assert (sd.true_cfg_scale, sd.max_sequence_length) == (None, None)
    noted = dict(sd.client_fields)["ignored"]
    assert "true_cfg_scale 5" in noted and "max_sequence_length 100" in noted
    # what was ignored does not split batches: the same key as without it
    assert sd.batch_key() == queued(registry, model="tiny").batch_key()
    plain = queued(registry, model="flux-dev", guidance_scale=7)
    assert plain.client_fields == () and plain.guidance_scale == 7


def test_the_variants_refuse_what_their_pipelines_cannot_do(registry: ModelRegistry) -> None:
    cases = [
        ("flux-kontext", {"init_image": IMAGE, "mask_image": MASK}, "mask_image"),
        ("flux-fill", {}, "init_image"),
        ("flux-fill", {"init_image": IMAGE}, "mask_image"),
    ]
    for model, fields, field in cases:
        with pytest.raises(InvalidParameters) as refused:
            queued(registry, model=model, **fields)
        assert refused.value.details["field"] == field, (model, fields)
    kontext = queued(registry, model="flux-kontext", init_image=IMAGE, strength=0.3)
    assert kontext.strength is None and kontext.mode == "img2img"


def test_true_cfg_and_the_sequence_length_split_batches(registry: ModelRegistry) -> None:
    plain = queued(registry, model="flux-dev")
    assert queued(registry, model="flux-dev", true_cfg_scale=3).batch_key() != plain.batch_key()
    longer = queued(registry, model="flux-dev", max_sequence_length=64)
    assert longer.batch_key() != plain.batch_key()


# -- the engine -----------------------------------------------------------------------------


def test_true_cfg_runs_the_negative_prompt(registry: ModelRegistry) -> None:
    dev = loaded_model(registry, "flux-dev")
    plain = images_of(generate(dev, [ready(registry, "flux-dev")]))[0]
    guided = ready(registry, "flux-dev", true_cfg_scale=4, negative_prompt="blurry")
    with_cfg = images_of(generate(dev, [guided]))[0]
    assert np.abs(pixels(with_cfg) - pixels(plain)).mean() > 1
    other = ready(registry, "flux-dev", true_cfg_scale=4, negative_prompt="sharp lines")
    assert np.abs(pixels(images_of(generate(dev, [other]))[0]) - pixels(with_cfg)).max() > 0
    # alone or with another true-CFG job: the same image
    together = images_of(generate(dev, [guided, replace(other, seed=9)]))
    assert np.abs(pixels(together[0]) - pixels(with_cfg)).max() <= 2


def test_the_sequence_length_reaches_the_pipeline(registry: ModelRegistry) -> None:
    """A prompt longer than the T5 length asked for is cut to it: a shorter length
    changes the image of a long prompt."""
    sd3 = loaded_model(registry, "sd3")
    prompt = "a red fox " * 20
    full = images_of(generate(sd3, [ready(registry, "sd3", prompt=prompt)]))[0]
    cut = ready(registry, "sd3", prompt=prompt, max_sequence_length=4)
    assert np.abs(pixels(images_of(generate(sd3, [cut]))[0]) - pixels(full)).max() > 0


def test_a_kontext_model_edits_after_the_image_and_the_prompt(registry: ModelRegistry) -> None:
    kontext = loaded_model(registry, "flux-kontext")
    source, _ = source_and_mask()
    edit = ready(registry, "flux-kontext", init_image=IMAGE, prompt="make it blue")
    (edited,) = images_of(generate(kontext, [edit], images=[{"init_image": source}]))
    assert edited.size == (64, 64)
    other_source = Image.fromarray(255 - np.asarray(source))
    (from_other,) = images_of(generate(kontext, [edit], images=[{"init_image": other_source}]))
    assert np.abs(pixels(edited) - pixels(from_other)).max() > 0  # the image counts
    (again,) = images_of(generate(kontext, [edit], images=[{"init_image": source}]))
    assert np.array_equal(pixels(again), pixels(edited))
    # and it makes images from a prompt alone too
    (made,) = images_of(generate(kontext, [ready(registry, "flux-kontext")]))
    assert made.size == (64, 64)


def test_a_fill_model_inpaints_and_keeps_every_pixel_outside_the_mask(
    registry: ModelRegistry,
) -> None:
    fill = loaded_model(registry, "flux-fill")
    source, mask = source_and_mask()
    job = ready(registry, "flux-fill", init_image=IMAGE, mask_image=MASK, strength=1.0)
    (painted,) = images_of(
        generate(fill, [job], images=[{"init_image": source, "mask_image": mask}])
    )
    keep = np.asarray(mask) == 0
    assert np.array_equal(pixels(painted)[keep], pixels(source)[keep])
    assert (pixels(painted)[~keep] != pixels(source)[~keep]).mean() > 0.5


def test_the_infotext_writes_flux_guidance_as_forge_does(registry: ModelRegistry) -> None:
    dev = loaded_model(registry, "flux-dev")
    spec = ready(registry, "flux-dev", true_cfg_scale=3, negative_prompt="blurry")
    output = generate(dev, [spec])
    assert output.guidance == "distilled"
    schnell_model = loaded_model(registry, "flux-schnell")
    assert generate(schnell_model, [ready(registry, "flux-schnell")]).guidance == "none"
    sd_model = loaded_model(registry, "tiny")
    sd_spec = replace(ready(registry, "tiny"), steps=1)
    assert generate(sd_model, [sd_spec]).guidance == "classifier-free"
    text = infotext(spec, 5, 64, 64, guidance=output.guidance)
    assert f"CFG scale: 3, Distilled CFG Scale: {spec.guidance_scale:g}," in text
    plain = ready(registry, "flux-dev")
    plain_text = infotext(plain, 5, 64, 64, guidance="distilled")
    assert "CFG scale: 1, Distilled CFG Scale: 3.5," in plain_text
    schnell = ready(registry, "flux-schnell")
    schnell_text = infotext(schnell, 5, 64, 64, guidance="none")
    assert "CFG scale: 1," in schnell_text and "Distilled" not in schnell_text
    sd = ready(registry, "tiny", guidance_scale=6.5)
    assert "CFG scale: 6.5," in infotext(sd, 5, 64, 64)
