"""LoRA adapters: the files in <models>/loras/ with their family, checked at the door,
and the real diffusers/PEFT pipeline on the tiny model (its VAE is random, so pixels
are compared only where the contract is exact: scale 0 is no LoRA, a tag is the field,
a call without LoRAs is the plain model's)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from alice_spool.engine.device import choose
from alice_spool.engine.resident import Engine
from alice_spool.engine.tiny import create_tiny, create_tiny_lora
from alice_spool.errors import InvalidParameters, LoraNotFound
from alice_spool.library.loras import lora_family
from alice_spool.library.registry import ModelRegistry
from alice_spool.library.safetensors_file import read_safetensors_header
from alice_spool.outbox import infotext
from alice_spool.spec import JobSpec, parse_spec


def write_lora(path: Path, tensors: dict[str, tuple[int, ...]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: np.zeros(shape, dtype=np.float16) for key, shape in tensors.items()}, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    create_tiny(directory, "tiny")
    create_tiny_lora(directory)
    create_tiny_lora(directory, "second")
    # An SDXL LoRA in kohya's key style (only the header matters here).
    write_lora(
        directory / "loras" / "xl-style.safetensors",
        {
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (
                4,
                2048,
            ),
            "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 1280),
        },
    )
    return directory


@pytest.fixture(scope="module")
def engine(models: Path) -> Engine:
    return Engine(ModelRegistry(models), choose("cpu"), max_cached_loras=2)


def spec(**fields: object) -> JobSpec:
    return parse_spec({"prompt": "a lighthouse", "steps": 3, "seed": 7, "model": "tiny", **fields})


def pixels(output: object) -> np.ndarray:
    image = output.jobs[0].images[0]  # type: ignore[attr-defined]
    return np.asarray(image).astype(np.int16)


def test_families_from_both_key_styles() -> None:
    def header(tensors: dict[str, list[int]]) -> dict[str, object]:
        return {key: {"dtype": "F16", "shape": shape} for key, shape in tensors.items()}

    kohya_to_k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    kohya_sd1 = header({f"{kohya_to_k}.lora_down.weight": [4, 768]})
    kohya_sd2 = header({f"{kohya_to_k}.lora_down.weight": [4, 1024]})
    peft_sdxl = header(
        {"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": [4, 2048]}
    )
    peft_te2 = header(
        {"text_encoder_2.text_model.encoder.layers.0.q_proj.lora_A.weight": [4, 1280]}
    )
    diffusers_old = header(
        {
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora.down.weight": [
                4,
                768,
            ]
        }
    )
    assert lora_family(kohya_sd1) == "sd1"
    assert lora_family(kohya_sd2) == "sd2"
    assert lora_family(peft_sdxl) == "sdxl"
    assert lora_family(peft_te2) == "sdxl"
    assert lora_family(diffusers_old) == "sd1"
    assert lora_family(header({"model.diffusion_model.x.weight": [4, 4]})) is None


def test_loras_are_listed_with_their_family_and_broken_ones_say_why(models: Path) -> None:
    (models / "loras" / "garbage.safetensors").write_bytes(b"not a safetensors file")
    write_lora(models / "loras" / "no-lora.safetensors", {"model.weight": (2, 2)})
    (models / "loras" / "notes.txt").write_text("not listed")
    try:
        listed = {lora.id: lora for lora in ModelRegistry(models).loras.scan()}
        assert {k: v.family for k, v in listed.items() if v.ok} == {
            "lora/tiny-lora": "sd1",
            "lora/second": "sd1",
            "lora/xl-style": "sdxl",
        }
        assert listed["lora/garbage"].broken and listed["lora/no-lora"].broken == (
            "no LoRA tensors in it"
        )
        with pytest.raises(LoraNotFound):
            ModelRegistry(models).loras.get("garbage")  # a broken one is not usable
    finally:
        (models / "loras" / "garbage.safetensors").unlink()
        (models / "loras" / "no-lora.safetensors").unlink()


def test_create_tiny_lora_is_fixed_and_refuses_to_overwrite(models: Path, tmp_path: Path) -> None:
    again = create_tiny_lora(tmp_path)
    assert again.read_bytes() == (models / "loras" / "tiny-lora.safetensors").read_bytes()
    keys = read_safetensors_header(again)
    assert any(k.startswith("unet.") and "lora_A" in k for k in keys)
    with pytest.raises(InvalidParameters, match="already exists"):
        create_tiny_lora(tmp_path)


def test_the_door_checks_loras_before_anything_is_queued(models: Path) -> None:
    registry = ModelRegistry(models)
    queued = registry.with_model(spec(loras=[{"name": "tiny-lora", "scale": 0.5}]))
    assert queued.loras == (("lora/tiny-lora", 0.5),)
    with pytest.raises(LoraNotFound, match="lora/missing is not installed") as missing:
        registry.with_model(spec(loras=["missing"]))
    assert missing.value.code == "lora_not_found"
    with pytest.raises(InvalidParameters, match="lora/xl-style is a SDXL LoRA") as family:
        registry.with_model(spec(prompt="x <lora:xl-style:1>"))
    assert family.value.field == "loras"


def test_scale_zero_is_no_lora_and_scale_one_changes_the_image(engine: Engine) -> None:
    plain = pixels(engine.generate([spec()]))
    zero = pixels(engine.generate([spec(loras=[{"name": "tiny-lora", "scale": 0}])]))
    one = pixels(engine.generate([spec(loras=["tiny-lora"])]))
    assert np.array_equal(zero, plain)
    moved = (np.abs(one - plain) > 2).mean()
    # a LoRA changes the image: >= 1% of channel values by more than 2/255
    assert moved >= 0.01, moved
    after = pixels(engine.generate([spec()]))
    assert np.array_equal(after, plain)  # a call without LoRAs never sees them


def test_a_prompt_tag_and_alices_fields_equal_the_field(engine: Engine) -> None:
    field = pixels(engine.generate([spec(loras=[{"name": "lora/tiny-lora", "scale": 0.8}])]))
    tag = pixels(engine.generate([spec(prompt="a lighthouse <lora:tiny-lora:0.8>")]))
    alice = pixels(
        engine.generate(
            [spec(lora_paths=["/anywhere/loras/tiny-lora.safetensors"], lora_scales=[0.8])]
        )
    )
    assert np.array_equal(field, tag) and np.array_equal(field, alice)


def test_adapters_are_cached_and_the_least_recently_used_unloaded(models: Path) -> None:
    engine = Engine(ModelRegistry(models), choose("cpu"), max_cached_loras=1)
    first = pixels(engine.generate([spec(loras=["tiny-lora"])]))
    loaded = engine.current
    assert loaded is not None
    adapters = engine.adapters(loaded)
    assert (adapters.loads, adapters.hits) == (1, 0)
    engine.generate([spec(loras=["tiny-lora"])])
    assert (adapters.loads, adapters.hits) == (1, 1)  # from the cache
    both = engine.generate([spec(loras=["tiny-lora", "second"])])
    assert adapters.loaded == 2  # both needed at once: over capacity for that call
    engine.generate([spec(loras=["second"])])
    assert adapters.loaded == 1  # tiny-lora, least recently used, unloaded
    again = pixels(engine.generate([spec(loras=["tiny-lora"])]))
    assert adapters.loads == 3 and np.array_equal(again, first)  # reloaded: the same
    records = both.loras
    assert [r["name"] for r in records] == ["lora/second", "lora/tiny-lora"]
    assert all(len(r["sha256"]) == 64 and r["scale"] == 1.0 for r in records)


def test_a_lora_batch_and_a_plain_batch_each_match_their_jobs_alone(engine: Engine) -> None:
    lora_jobs = [spec(loras=["tiny-lora"], seed=s) for s in (1, 2)]
    batch = engine.generate(lora_jobs)
    for job, made in zip(lora_jobs, batch.jobs, strict=True):
        alone = engine.generate([job]).jobs[0].images[0]
        difference = np.abs(np.asarray(alone, np.int16) - np.asarray(made.images[0], np.int16))
        assert difference.max() <= 2  # the 2/255 rule
    with pytest.raises(InvalidParameters, match="share"):
        engine.generate([spec(loras=["tiny-lora"]), spec()])  # never in one call


def test_infotext_writes_loras_as_a1111_does() -> None:
    job = spec(loras=[{"name": "tiny-lora", "scale": 0.5}])
    records = [
        {"name": "lora/tiny-lora", "scale": 0.5, "sha256": "ab" * 32, "tensors_sha256": "cd" * 32},
        {"name": "lora/odd,name", "scale": -1, "sha256": "ef" * 32, "tensors_sha256": "01" * 32},
    ]
    first, settings = infotext(job, 7, 64, 64, loras=records).splitlines()
    assert first == "a lighthouse <lora:tiny-lora:0.5> <lora:odd,name:-1>"
    # The tensor data's hash, not the file's; A1111 drops ':' and ',' from the names.
    assert settings.endswith('Lora hashes: "tiny-lora: cdcdcdcdcdcd, oddname: 010101010101"')


def test_a_loras_hashes_are_the_files_and_its_tensor_datas(models: Path) -> None:
    from alice_spool.library.loras import LoraRegistry

    registry = LoraRegistry(models)
    lora = registry.get("tiny-lora")
    data = lora.path.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    hashes = registry.hashes(lora)
    assert hashes.sha256 == hashlib.sha256(data).hexdigest()
    assert hashes.tensors_sha256 == hashlib.sha256(data[header_end:]).hexdigest()
    # Metadata lives in the header: a file that differs only there keeps A1111's hash.
    from safetensors.torch import load_file, save_file

    other = models / "loras" / "renamed-copy.safetensors"
    save_file(load_file(str(lora.path)), str(other), metadata={"note": "other metadata"})
    try:
        copy = registry.hashes(registry.get("renamed-copy"))
        assert copy.sha256 != hashes.sha256
        assert copy.tensors_sha256 == hashes.tensors_sha256
        assert copy.a1111_short == hashes.tensors_sha256[:12]
    finally:
        other.unlink()


def test_the_cli_generates_with_a_lora(models: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from alice_spool.cli import cli

    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\nmodels = "{models}"\ndata_dir = "{tmp_path}"\n')
    run = CliRunner().invoke(
        cli,
        [
            *("--config", str(config), "generate", "a lighthouse", "--steps", "3"),
            *("--seed", "7", "--lora", "tiny-lora:0.8", "--device", "cpu"),
            *("-o", str(tmp_path / "out.png")),
        ],
    )
    assert run.exit_code == 0, run.output
    made = np.asarray(Image.open(tmp_path / "out.png")).astype(np.int16)
    engine = Engine(ModelRegistry(models), choose("cpu"))
    assert np.array_equal(
        made, pixels(engine.generate([spec(loras=[{"name": "tiny-lora", "scale": 0.8}])]))
    )
    refused = CliRunner().invoke(
        cli,
        ["--config", str(config), "generate", "x", "--lora", "nope", "-o", str(tmp_path / "n.png")],
    )
    assert refused.exit_code == 3 and "lora_not_found" in refused.output
    assert not (tmp_path / "n.png").exists()
    assert json.loads(
        CliRunner().invoke(cli, ["--config", str(config), "models", "ls", "--json"]).output
    )["loras"]
