"""FLUX.1 and SD 3.x transformers in one file: `.gguf` and
`.safetensors` files under <models>/ are told by their tensors (never their names),
listed with family and variant, and run with the components of an installed model of the
same family and variant; without one, the load says which repository to install. On the
tiny models and the real diffusers code: a GGUF (Q8_0) transformer makes nearly the
folder's image, a .safetensors one exactly it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from alice_spool.engine.device import choose
from alice_spool.engine.resident import Engine
from alice_spool.engine.tiny import create_tiny
from alice_spool.errors import ModelLoadFailed
from alice_spool.library.registry import ModelRegistry
from alice_spool.library.transformer_files import NotATransformer, classify, read
from alice_spool.spec import JobSpec
from tests.support.transformer_files import write_gguf, write_safetensors


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny FLUX.1 dev, schnell and SD 3.x folders, made once (copied per test)."""
    root = tmp_path_factory.mktemp("made")
    create_tiny(root, "flux-dev", family="flux", variant="dev")
    create_tiny(root, "flux-schnell", family="flux", variant="schnell")
    create_tiny(root, "sd3", family="sd3")
    return root


def install(made: Path, models: Path, *names: str) -> Path:
    models.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(made / name, models / name)
    return models


def image(engine: Engine, model: str, **fields: object) -> np.ndarray:
    base = {"prompt": "a red fox", "width": 64, "height": 64, "steps": 3, "seed": 5}
    base.update(scheduler="euler", guidance_scale=3.5)
    spec = JobSpec(model=model, **{**base, **fields})
    output = engine.generate([spec])
    assert output.jobs[0].error is None, output.jobs[0].error
    return np.asarray(output.jobs[0].images[0], dtype=np.int16)


# -- telling them apart ---------------------------------------------------------------------


def test_the_released_layouts_are_told_by_their_tensors() -> None:
    flux = {"double_blocks.0.img_attn.qkv.weight": [9216, 3072], "img_in.weight": [3072, 64]}
    assert classify(flux) == classify({f"model.diffusion_model.{k}": v for k, v in flux.items()})
    assert (classify(flux).family, classify(flux).variant) == ("flux", "schnell")
    dev = {**flux, "guidance_in.in_layer.weight": [3072, 256]}
    assert (classify(dev).variant, classify(dev).layout) == ("dev", "original")
    fill = {**dev, "img_in.weight": [3072, 384]}
    assert classify(fill).variant == "fill"
    reversed_fill = {**dev, "img_in.weight": [384, 3072]}  # GGUF lists dimensions reversed
    assert classify(reversed_fill).variant == "fill"
    sd3 = {"joint_blocks.0.x_block.attn.qkv.weight": [4608, 1536]}
    assert (classify(sd3).family, classify(sd3).variant) == ("sd3", None)
    with pytest.raises(NotATransformer):
        classify({"model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3]})


def test_the_registry_lists_each_file_with_its_family_and_variant(
    made: Path, tmp_path: Path
) -> None:
    models = install(made, tmp_path / "models", "flux-dev")
    write_gguf(made / "flux-dev", models / "dev-q8.gguf")
    write_safetensors(made / "flux-schnell", models / "fast.safetensors")
    write_gguf(made / "sd3", models / "medium.gguf")
    (models / "junk.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    listed = {m.id: m for m in ModelRegistry(models).scan()}
    expected = {
        "sd/dev-q8": ("flux", "dev"),
        "sd/fast": ("flux", "schnell"),
        "sd/medium": ("sd3", None),
    }
    for model_id, (family, variant) in expected.items():
        info = listed[model_id]
        assert (info.format, info.family, info.variant, info.ok) == (
            "transformer_file", family, variant, True,
        ), info  # fmt: skip
        assert info.to_dict()["defaults"]["scheduler"] == "euler"  # its family's
    assert not listed["sd/junk"].ok and "GGUF" in str(listed["sd/junk"].broken)
    assert read(models / "dev-q8.gguf").quantization == "Q8_0"


def test_without_the_gguf_package_a_gguf_file_says_what_to_install(
    made: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_gguf(made / "flux-dev", tmp_path / "dev.gguf")
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if it were not installed
    with pytest.raises(NotATransformer, match=r"alice-spool\[gpu\]"):
        read(path)


# -- running them ---------------------------------------------------------------------------


def test_a_gguf_transformer_runs_with_an_installed_models_components(
    made: Path, tmp_path: Path
) -> None:
    models = install(made, tmp_path / "models", "flux-dev")
    write_gguf(made / "flux-dev", models / "dev-q8.gguf")
    engine = Engine(ModelRegistry(models), choose("cpu"), preload=False)
    from_folder = image(engine, "sd/flux-dev")
    from_file = image(engine, "sd/dev-q8")
    assert engine.current is not None  # the file's transformer, dequantized as it runs
    assert "GGUFLinear" in str(engine.current.pipeline.transformer)
    difference = np.abs(from_file - from_folder)
    assert difference.mean() < 2 and difference.max() > 0  # Q8_0: nearly, not exactly
    engine.unload()


def test_a_safetensors_transformer_runs_exactly_as_its_folder(made: Path, tmp_path: Path) -> None:
    models = install(made, tmp_path / "models", "sd3")
    write_safetensors(made / "sd3", models / "sd3-file.safetensors")
    engine = Engine(ModelRegistry(models), choose("cpu"), preload=False)
    assert np.array_equal(
        image(engine, "sd/sd3-file", guidance_scale=4.5),
        image(engine, "sd/sd3", guidance_scale=4.5),
    )
    engine.unload()


def test_without_components_of_its_variant_the_load_names_what_to_install(
    made: Path, tmp_path: Path
) -> None:
    models = install(made, tmp_path / "models", "flux-dev")  # dev's, not schnell's
    write_gguf(made / "flux-schnell", models / "fast.gguf")
    engine = Engine(ModelRegistry(models), choose("cpu"), preload=False)
    spec = JobSpec(prompt="x", model="sd/fast", width=64, height=64, steps=1, seed=1,
                   scheduler="euler", guidance_scale=0.0)  # fmt: skip
    with pytest.raises(ModelLoadFailed) as refused:
        engine.generate([spec])
    assert "alice-spool models pull black-forest-labs/FLUX.1-schnell" in refused.value.message
