"""The tiny FLUX.1 (dev, schnell) and SD 3.x models: written offline, loaded back by
diffusers as their family's pipeline, and run by its real code on the CPU (text to
image, and image to image and inpainting through `from_pipe`), from the same weights
wherever they are made."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from diffusers import (
    DiffusionPipeline,
    FluxImg2ImgPipeline,
    FluxInpaintPipeline,
    FluxPipeline,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3InpaintPipeline,
    StableDiffusion3Pipeline,
)
from huggingface_hub import constants
from PIL import Image

from alice_spool.cli import cli
from alice_spool.cli import models as models_cli
from alice_spool.engine import tiny
from alice_spool.engine.tiny import create_tiny
from alice_spool.errors import InvalidParameters
from alice_spool.library.registry import TINY_MARKER


class Kind(NamedTuple):
    family: str
    variant: str | None
    pipeline: type
    img2img: type
    inpaint: type
    guidance: float


FLUX = (FluxPipeline, FluxImg2ImgPipeline, FluxInpaintPipeline)
SD3 = (StableDiffusion3Pipeline, StableDiffusion3Img2ImgPipeline, StableDiffusion3InpaintPipeline)
KINDS = {
    "flux-dev": Kind("flux", "dev", *FLUX, guidance=3.5),
    "flux-schnell": Kind("flux", "schnell", *FLUX, guidance=0.0),
    "sd3": Kind("sd3", None, *SD3, guidance=4.5),
}
# Measured: 0.84 MB (schnell), 0.88 MB (dev), 1.01 MB (SD 3).
MOST_BYTES = 1_500_000


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    models = tmp_path_factory.mktemp("models")
    return {
        kind: create_tiny(models, kind, family=family, variant=variant)
        for kind, (family, variant, *_) in KINDS.items()
    }


@pytest.fixture(scope="module")
def loaded(made: dict[str, Path]) -> dict[str, DiffusionPipeline]:
    assert constants.HF_HUB_OFFLINE  # tests/conftest.py: nothing can come from the Hub
    pipelines = {}
    for kind, path in made.items():
        pipeline = DiffusionPipeline.from_pretrained(path)
        pipeline.set_progress_bar_config(disable=True)
        pipelines[kind] = pipeline
    return pipelines


def run(pipeline: DiffusionPipeline, kind: str, seed: int = 1, **inputs: Any) -> np.ndarray:
    image = pipeline(
        prompt="a fox",
        num_inference_steps=2,
        height=64,
        width=64,
        guidance_scale=KINDS[kind].guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="pil",
        **inputs,
    ).images[0]
    assert image.size == (64, 64)
    return np.asarray(image)


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in folder.rglob("*") if f.is_file()}


@pytest.mark.parametrize("kind", KINDS)
def test_loads_back_as_its_family_pipeline(
    kind: str, made: dict[str, Path], loaded: dict[str, DiffusionPipeline]
) -> None:
    expected = KINDS[kind]
    index = json.loads((made[kind] / "model_index.json").read_text())
    assert index["_class_name"] == expected.pipeline.__name__ and TINY_MARKER in index
    pipeline = loaded[kind]
    assert type(pipeline) is expected.pipeline
    assert pipeline.vae.config.latent_channels == 16
    if expected.family == "flux":
        assert pipeline.transformer.config.guidance_embeds is (expected.variant == "dev")
    else:
        assert "guidance_embeds" not in pipeline.transformer.config


@pytest.mark.parametrize("kind", KINDS)
def test_text_to_image_follows_the_seed(kind: str, loaded: dict[str, DiffusionPipeline]) -> None:
    pipeline = loaded[kind]
    first = run(pipeline, kind, seed=1)
    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, run(pipeline, kind, seed=1))
    assert not np.array_equal(first, run(pipeline, kind, seed=2))


@pytest.mark.parametrize("kind", KINDS)
def test_image_to_image_and_inpainting_share_its_weights(
    kind: str, loaded: dict[str, DiffusionPipeline]
) -> None:
    picture = Image.new("RGB", (64, 64), (200, 90, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    img2img = KINDS[kind].img2img.from_pipe(loaded[kind])
    inpaint = KINDS[kind].inpaint.from_pipe(loaded[kind])
    for pipeline in (img2img, inpaint):
        pipeline.set_progress_bar_config(disable=True)
        assert pipeline.transformer is loaded[kind].transformer
    run(img2img, kind, image=picture, strength=0.8)
    run(inpaint, kind, image=picture, mask_image=mask, strength=0.8)


@pytest.mark.parametrize("kind", KINDS)
def test_made_anywhere_it_is_the_same_small_model(
    kind: str, made: dict[str, Path], tmp_path: Path
) -> None:
    again = create_tiny(tmp_path, kind, family=KINDS[kind].family, variant=KINDS[kind].variant)
    first, second = files_of(made[kind]), files_of(again)
    weights = "transformer/diffusion_pytorch_model.safetensors"
    assert first[weights] == second[weights]
    assert first == second
    assert sum(len(data) for data in first.values()) < MOST_BYTES


def test_dev_and_schnell_differ_only_in_the_guidance_embedder(made: dict[str, Path]) -> None:
    dev, schnell = files_of(made["flux-dev"]), files_of(made["flux-schnell"])
    assert {name for name in dev if dev[name] != schnell[name]} == {
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
    }


def test_an_unknown_family_or_variant_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameters, match="flux2") as error:
        create_tiny(tmp_path, family="flux2")
    assert error.value.field == "family"
    for family, variant in (("flux", "pro"), ("sd3", "dev"), ("sd1", "schnell")):
        with pytest.raises(InvalidParameters) as error:
            create_tiny(tmp_path, family=family, variant=variant)
        assert error.value.field == "variant"
    assert list(tmp_path.iterdir()) == []


def test_the_cli_writes_each_family(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no stray ./config.toml
    for var in [v for v in os.environ if v.startswith("ALICE_")]:
        monkeypatch.delenv(var)
    data_dir = tmp_path / "state"

    def create(*args: str) -> Result:
        return CliRunner().invoke(
            cli, ["--data-dir", str(data_dir), "models", "create-tiny", *args]
        )

    assert models_cli.TINY_FAMILIES == tiny.TINY_FAMILIES
    assert models_cli.FLUX_VARIANTS == tiny.FLUX_VARIANTS
    for name, args, guidance in (("flux", (), True), ("schnell", ("--variant", "schnell"), False)):
        result = create("--family", "flux", "--name", name, *args)
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        path = Path(result.stdout.strip())
        assert path == data_dir / "models" / name
        index = json.loads((path / "model_index.json").read_text())
        assert index["_class_name"] == "FluxPipeline" and TINY_MARKER in index
        transformer = json.loads((path / "transformer" / "config.json").read_text())
        assert transformer["guidance_embeds"] is guidance
    result = create("--family", "sd3", "--name", "sd3")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    index = json.loads((data_dir / "models" / "sd3" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    refused = create("--family", "sd3", "--variant", "dev", "--name", "other")
    assert refused.exit_code != 0 and "variant" in refused.stderr
    assert create("--family", "flux2").exit_code == 2  # click's usage error
    assert not (data_dir / "models" / "other").exists()
