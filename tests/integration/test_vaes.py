"""VAEs chosen per request: the entries of <models>/vae/ (diffusers folders and A1111's
single files), checked at the door, and the real diffusers pipeline on the tiny model with
one swapped in for a call (its own VAE is random, so images are compared where the
contract is exact: a VAE's image is diffusers' with that VAE, the model's own comes back)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from PIL import Image

from alice_spool.engine.device import choose
from alice_spool.engine.resident import Engine
from alice_spool.engine.schedulers import make_scheduler
from alice_spool.engine.tiny import create_tiny, create_tiny_lora
from alice_spool.errors import InvalidParameters, VaeNotFound
from alice_spool.library.registry import ModelRegistry
from alice_spool.outbox import infotext
from alice_spool.spec import JobSpec, parse_spec
from tests.support.vaes import grain_vae, write_vae_file, write_vae_folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    tiny = create_tiny(directory, "tiny")
    vae = grain_vae(tiny)
    write_vae_folder(vae, directory, "grain")
    write_vae_file(vae, directory, "grain-file")  # the same weights, A1111's layout
    return directory


@pytest.fixture(scope="module")
def engine(models: Path) -> Engine:
    return Engine(ModelRegistry(models), choose("cpu"))


def spec(**fields: object) -> JobSpec:
    request = {"prompt": "a lighthouse", "steps": 3, "seed": 7, "model": "tiny"}
    return parse_spec({**request, "scheduler": "euler", **fields})


def pixels(output: object) -> np.ndarray:
    image = output.jobs[0].images[0]  # type: ignore[attr-defined]
    return np.asarray(image).astype(np.int16)


def test_the_registry_lists_folders_and_single_files_and_nothing_else(models: Path) -> None:
    vaes = models / "vae"
    create_tiny_lora(models, "stray")  # a LoRA's tensors, moved here by mistake
    (models / "loras" / "stray.safetensors").rename(vaes / "stray.safetensors")
    (vaes / "notes.txt").write_text("not a VAE")
    (vaes / "empty").mkdir()
    (vaes / "None.safetensors").write_bytes(b"")  # A1111's word for the model's own
    try:
        registry = ModelRegistry(models)
        listed = {vae.id: vae for vae in registry.vaes.scan()}
        assert sorted(listed) == ["vae/grain", "vae/grain-file", "vae/stray"]
        folder, single = listed["vae/grain"], listed["vae/grain-file"]
        assert (folder.format, folder.file_name, folder.path) == (
            "diffusers",
            "grain",
            vaes / "grain",
        )
        assert (single.format, single.file_name) == ("single_file", "grain-file.safetensors")
        assert folder.latent_channels == single.latent_channels == 4
        assert folder.ok and single.ok and single.size_bytes == single.path.stat().st_size
        assert listed["vae/stray"].broken and "no VAE decoder tensors" in listed["vae/stray"].broken
        assert [m.id for m in registry.scan()] == ["sd/tiny"]  # vae/ is no model
        assert registry.vaes.get("grain-file.safetensors") == single  # A1111's model_name
        with pytest.raises(VaeNotFound):
            registry.vaes.get("stray")  # a broken one is not usable
    finally:
        for stray in ("stray.safetensors", "notes.txt", "None.safetensors"):
            (vaes / stray).unlink()
        (vaes / "empty").rmdir()


def test_the_door_refuses_a_vae_that_is_not_installed(models: Path) -> None:
    registry = ModelRegistry(models)
    assert registry.with_model(spec(vae="vae/grain")).vae == "vae/grain"
    assert registry.with_model(spec(vae="grain-file.safetensors")).vae == "vae/grain-file"
    assert registry.with_model(spec(vae="Automatic")).vae is None
    with pytest.raises(VaeNotFound, match="vae/nope is not installed") as missing:
        registry.with_model(spec(vae="nope"))
    assert missing.value.code == "vae_not_found" and missing.value.field == "vae"
    assert "installed: vae/grain, vae/grain-file" in missing.value.message


def test_a_vae_job_is_diffusers_with_that_vae_and_the_model_keeps_its_own(
    engine: Engine, models: Path
) -> None:
    plain = pixels(engine.generate([spec()]))
    output = engine.generate([spec(vae="grain")])
    with_vae = pixels(output)
    assert (np.abs(with_vae - plain) > 2).mean() > 0.1  # another decoder, another image
    assert output.vae is not None and output.vae["name"] == "vae/grain"
    assert len(output.vae["sha256"]) == 64

    # What diffusers makes with that VAE swapped in by hand.
    by_hand = StableDiffusionPipeline.from_pretrained(
        models / "tiny",
        vae=AutoencoderKL.from_pretrained(models / "vae" / "grain"),
        safety_checker=None,
        requires_safety_checker=False,
        local_files_only=True,
    )
    by_hand.scheduler = make_scheduler("euler", by_hand.scheduler.config, [7])
    made = by_hand(
        prompt=["a lighthouse"],
        negative_prompt=[""],
        width=64,
        height=64,
        num_inference_steps=3,
        guidance_scale=7.5,
        generator=[torch.Generator("cpu").manual_seed(7)],
        output_type="np",
    ).images
    expected = (np.asarray(made[0]) * 255).round().clip(0, 255).astype(np.int16)
    assert np.array_equal(with_vae, expected)

    # The single file holds the same weights: the same image, however it is named.
    single = engine.generate([spec(vae="vae/grain-file.safetensors")])
    assert np.array_equal(pixels(single), with_vae)
    assert single.vae is not None and single.vae["file_name"] == "grain-file.safetensors"
    assert engine.vaes.loads == 2
    engine.generate([spec(vae="grain")])
    assert engine.vaes.loads == 2  # from the cache

    after = engine.generate([spec()])
    assert np.array_equal(pixels(after), plain) and after.vae is None  # its own VAE back


def test_a_vae_job_and_a_plain_job_never_share_a_call(engine: Engine) -> None:
    assert spec(vae="grain").batch_key() != spec().batch_key()
    assert spec(vae="grain").batch_key() != spec(vae="grain-file").batch_key()
    with pytest.raises(InvalidParameters, match="share"):
        engine.generate([spec(vae="grain"), spec()])


def test_a_hires_job_with_a_vae_runs_and_img2img_gets_the_models_own_back(
    engine: Engine,
) -> None:
    hires = {"scale": 1.5, "steps": 1, "upscaler": "Lanczos"}  # decodes, encodes, decodes
    output = engine.generate([spec(vae="grain", hires=hires)])
    plain = engine.generate([spec(hires=hires)])
    assert (output.width, output.height, output.vae["name"]) == (96, 96, "vae/grain")
    assert (np.abs(pixels(output) - pixels(plain)) > 2).mean() > 0.1
    loaded = engine.current
    assert loaded is not None
    derived = loaded.derived["img2img"]
    assert derived.vae is loaded.pipeline.vae  # the second pass's pipeline has its own back


def test_a_vae_that_does_not_fit_the_model_is_refused(engine: Engine, models: Path) -> None:
    wide = AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=16,
        norm_num_groups=8,
    )
    write_vae_folder(wide, models, "wide")
    try:
        with pytest.raises(InvalidParameters, match="latent channels are 16") as refused:
            engine.generate([spec(vae="wide")])
        assert refused.value.field == "vae"
        assert (
            engine.current is not None and engine.current.pipeline.vae.config.latent_channels == 4
        )
    finally:
        for file in (models / "vae" / "wide").iterdir():
            file.unlink()
        (models / "vae" / "wide").rmdir()


def test_infotext_writes_the_vae_after_the_model_as_a1111_does() -> None:
    record = {"name": "vae/grain-file", "file_name": "grain-file.safetensors", "sha256": "ab" * 32}
    settings = infotext(spec(vae="grain-file"), 7, 64, 64, vae=record).splitlines()[-1]
    assert "Model: tiny, VAE hash: ababababab, VAE: grain-file.safetensors" in settings
    assert "VAE" not in infotext(spec(), 7, 64, 64)


def test_a_vaes_record_is_its_name_file_name_and_weights_hash(models: Path) -> None:
    registry = ModelRegistry(models)
    record = registry.vaes.record(registry.vaes.get("grain"))
    weights = models / "vae" / "grain" / "diffusion_pytorch_model.safetensors"
    assert record == {
        "name": "vae/grain",
        "file_name": "grain",
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }
    assert json.loads(json.dumps(record)) == record


def test_generate_with_a_vae_and_one_that_is_not_installed(
    engine: Engine, models: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from alice_spool.cli import cli

    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\nmodels = "{models}"\ndata_dir = "{tmp_path}"\n')
    base = ["--config", str(config), "generate", "a lighthouse", "--model", "tiny"]
    options = ["--steps", "3", "--seed", "7", "--scheduler", "euler", "--device", "cpu"]
    run = CliRunner().invoke(
        cli, [*base, *options, "--vae", "grain", "-o", str(tmp_path / "out.png")]
    )
    assert run.exit_code == 0, run.output
    made = np.asarray(Image.open(tmp_path / "out.png")).astype(np.int16)
    assert np.array_equal(made, pixels(engine.generate([spec(vae="grain")])))
    refused = CliRunner().invoke(cli, [*base, "--vae", "nope", "-o", str(tmp_path / "n.png")])
    assert refused.exit_code == 3 and "vae_not_found" in refused.output
    assert not (tmp_path / "n.png").exists()
