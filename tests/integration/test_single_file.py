"""Single-file checkpoints (the original LDM layout): made from the tiny model, listed,
loaded with the configs of an installed model of their family, refused clearly without."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from safetensors.torch import load_file, save_file

from alice_spool.engine.device import choose
from alice_spool.engine.resident import Engine
from alice_spool.engine.tiny import create_tiny
from alice_spool.errors import ModelLoadFailed
from alice_spool.library.registry import ModelRegistry
from alice_spool.spec import parse_spec
from tests.support.ldm_checkpoint import to_ldm, write_single_file


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> StableDiffusionPipeline:
    path = create_tiny(tmp_path_factory.mktemp("source"))
    return StableDiffusionPipeline.from_pretrained(
        path, safety_checker=None, requires_safety_checker=False
    )


@pytest.fixture
def models(tmp_path: Path, tiny_pipeline: StableDiffusionPipeline) -> Path:
    directory = tmp_path / "models"
    tiny_pipeline.save_pretrained(directory / "tiny")
    write_single_file(tiny_pipeline, directory / "single.safetensors")
    return directory


def spec(model: str):  # type: ignore[no-untyped-def]
    return parse_spec(
        {"prompt": "a lighthouse", "seed": 5, "steps": 3, "size": "64x64", "model": model}
    )


def test_the_ldm_layout_converts_back_to_the_same_weights(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    checkpoint = to_ldm(tiny_pipeline)
    assert "model.diffusion_model.input_blocks.1.1.proj_in.weight" in checkpoint
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in checkpoint
    assert (
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in checkpoint
    )
    unet = convert_ldm_unet_checkpoint(checkpoint, dict(tiny_pipeline.unet.config))
    vae = convert_ldm_vae_checkpoint(checkpoint, dict(tiny_pipeline.vae.config))
    clip = convert_ldm_clip_checkpoint(checkpoint)
    for converted, model in ((unet, tiny_pipeline.unet), (vae, tiny_pipeline.vae)):
        reference = model.state_dict()
        assert converted.keys() == reference.keys()
        assert all(torch.equal(converted[k], reference[k]) for k in reference)
    text = tiny_pipeline.text_encoder.state_dict()
    assert {k.removeprefix("text_model."): v for k, v in clip.items()}.keys() == text.keys()


def test_a_single_file_loads_with_its_familys_configs(models: Path) -> None:
    registry = ModelRegistry(models)
    single = registry.get("single")
    assert (single.format, single.family) == ("single_file", "sd1")
    engine = Engine(registry, choose("cpu"))
    folder = engine.generate([spec("tiny")]).jobs[0].images[0]
    loaded = engine.generate([spec("single")])
    assert engine.current is not None and engine.current.model_id == "sd/single"
    # The same weights in the other layout: the same image.
    assert np.array_equal(np.asarray(folder), np.asarray(loaded.jobs[0].images[0]))


def test_without_configs_the_error_says_what_to_install(models: Path, tmp_path: Path) -> None:
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(models / "single.safetensors", alone / "single.safetensors")
    engine = Engine(ModelRegistry(alone), choose("cpu"))
    with pytest.raises(ModelLoadFailed) as info:
        engine.generate([spec("single")])
    message = info.value.message
    assert "SD 1.x" in message
    assert "alice-spool models pull stable-diffusion-v1-5/stable-diffusion-v1-5" in message


def test_weights_that_do_not_fit_the_configs(models: Path) -> None:
    broken = load_file(str(models / "single.safetensors"))
    key = "model.diffusion_model.out.2.weight"
    broken[key] = broken[key][:2].contiguous()  # half the output channels
    save_file(broken, str(models / "single.safetensors"))
    engine = Engine(ModelRegistry(models), choose("cpu"))
    with pytest.raises(ModelLoadFailed, match="with the configs of tiny"):
        engine.generate([spec("single")])
    assert engine.generate([spec("tiny")]).image_count == 1  # the engine lives on
