"""The model registry over a real directory: diffusers folders, single-file checkpoints,
families, broken models with their reasons, other files left out, rescans on change."""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import pytest

from alice_spool.engine.tiny import create_tiny
from alice_spool.errors import ModelNotFound
from alice_spool.library.registry import ModelRegistry
from alice_spool.library.safetensors_file import read_safetensors_header


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_tiny(tmp_path_factory.mktemp("source"))


def copy_tree(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def write_safetensors(path: Path, names: list[str]) -> Path:
    """A real .safetensors file holding one tiny float32 tensor per name."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    data = b""
    for name in names:
        header[name] = {"dtype": "F32", "shape": [1], "data_offsets": [len(data), len(data) + 4]}
        data += struct.pack("<f", 1.0)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


def fake_folder(path: Path, pipeline: str, unet: dict[str, object]) -> Path:
    (path / "unet").mkdir(parents=True)
    (path / "vae").mkdir()
    (path / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    (path / "unet" / "config.json").write_text(json.dumps(unet))
    (path / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [1, 2, 3, 4]}))
    return path


def test_a_directory_of_every_kind(tmp_path: Path, tiny_source: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    copy_tree(tiny_source, models / "tiny")
    fake_folder(
        models / "v15", "StableDiffusionPipeline", {"cross_attention_dim": 768, "sample_size": 64}
    )
    fake_folder(
        models / "v21", "StableDiffusionPipeline", {"cross_attention_dim": 1024, "sample_size": 96}
    )
    fake_folder(
        models / "xl",
        "StableDiffusionXLPipeline",
        {"cross_attention_dim": 2048, "addition_embed_type": "text_time", "sample_size": 128},
    )
    write_safetensors(models / "anime.safetensors", ["cond_stage_model.transformer.text_model.x"])
    write_safetensors(models / "v2single.safetensors", ["cond_stage_model.model.ln_final.weight"])
    write_safetensors(models / "xlsingle.safetensors", ["conditioner.embedders.1.model.x"])
    write_safetensors(models / "lora.safetensors", ["lora_unet_down.weight"])
    (models / "garbage.safetensors").write_bytes(b"\xff" * 64)
    broken = models / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{not json")
    (models / "half").mkdir()
    (models / "half" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (models / "README.txt").write_text("not a model")
    (models / "tiny" / "dangling").symlink_to(models / "nowhere")  # never crashes the listing
    (models / "not-a-model").mkdir()
    (models / ".partial-download").mkdir()

    listing = {m.id: m for m in ModelRegistry(models).scan()}
    assert sorted(listing) == sorted(
        f"sd/{n}"
        for n in (
            "tiny",
            "v15",
            "v21",
            "xl",
            "anime",
            "v2single",
            "xlsingle",
            "lora",
            "garbage",
            "broken",
            "half",
        )
    )
    families = {i: m.family for i, m in listing.items() if m.ok}
    assert families == {
        "sd/tiny": "sd1", "sd/v15": "sd1", "sd/v21": "sd2", "sd/xl": "sdxl",
        "sd/anime": "sd1", "sd/v2single": "sd2", "sd/xlsingle": "sdxl",
    }  # fmt: skip
    assert listing["sd/tiny"].native_size == 64 and listing["sd/tiny"].smoke_test
    assert listing["sd/v15"].native_size == 512 and listing["sd/v21"].native_size == 768
    assert listing["sd/xl"].native_size == 1024 and listing["sd/xlsingle"].native_size == 1024
    assert listing["sd/anime"].format == "single_file" and listing["sd/tiny"].format == "diffusers"
    assert listing["sd/tiny"].size_bytes > 1_000_000
    assert "unreadable config" in listing["sd/broken"].broken
    assert "missing unet" in listing["sd/half"].broken
    assert "no known text encoder" in listing["sd/lora"].broken
    assert "safetensors" in listing["sd/garbage"].broken
    shown = listing["sd/xl"].to_dict()
    assert shown["status"] == "ok" and shown["family_name"] == "SDXL"
    assert listing["sd/broken"].to_dict()["status"] == "broken"


def test_get_default_and_not_found(tmp_path: Path, tiny_source: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    with pytest.raises(ModelNotFound, match="models create-tiny"):
        registry.default()
    copy_tree(tiny_source, tmp_path / "models" / "tiny")
    assert registry.default().id == "sd/tiny"  # the only one
    fake_folder(
        tmp_path / "models" / "real", "StableDiffusionPipeline", {"cross_attention_dim": 768}
    )
    # The first default worked out is pinned: a model that arrives later (a download)
    # does not move it, even a real one; an admin's choice does.
    assert registry.default().id == "sd/tiny"
    registry.set_default("sd/real")
    assert registry.default().id == "sd/real"
    assert registry.default("tiny").id == "sd/tiny"
    registry.default_file.unlink()  # no choice made: a real model before the smoke-test one
    assert ModelRegistry(tmp_path / "models").default().id == "sd/real"
    assert registry.get("sd/real").family == "sd1"
    with pytest.raises(
        ModelNotFound, match=r"sd/nope is not installed \(installed: sd/real, sd/tiny\)"
    ):
        registry.get("nope")
    (tmp_path / "models" / "real" / "model_index.json").write_text("{")
    with pytest.raises(ModelNotFound):
        registry.get("real")  # broken models are not usable


def test_rescans_only_when_the_directory_changes(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    registry = ModelRegistry(models)
    assert registry.scan() == []
    write_safetensors(models / "a.safetensors", ["cond_stage_model.transformer.x"])
    assert [m.id for m in registry.scan()] == ["sd/a"]
    first = registry.scan()
    assert registry.scan()[0] is first[0]  # unchanged: the same objects, nothing reread
    write_safetensors(models / "b.safetensors", ["cond_stage_model.transformer.x"])
    os.utime(models, ns=(1, 1))  # the directory's own time does not matter
    assert [m.id for m in registry.scan()] == ["sd/a", "sd/b"]


def test_header_reader_refuses_non_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"abc")
    with pytest.raises(ValueError, match="too short"):
        read_safetensors_header(path)
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(ValueError, match="no safetensors header"):
        read_safetensors_header(path)


def test_the_chosen_default_is_read_again_when_it_changes(tmp_path: Path) -> None:
    """The choice is cached by its file's stat: another process's `models default`
    (a rename) is seen at once, a rewrite in place too; a change a stat cannot tell
    apart (the same stamp) within CHOSEN_RECHECK_S."""
    for name in ("alpha", "gamma"):
        fake_folder(tmp_path / name, "StableDiffusionPipeline", {"cross_attention_dim": 768})
    registry = ModelRegistry(tmp_path)
    other = ModelRegistry(tmp_path)  # another process, sharing the directory
    other.set_default("alpha")
    assert registry.default().id == "sd/alpha"
    other.set_default("gamma")  # a rename: a new inode
    assert registry.default().id == "sd/gamma"
    registry.default_file.write_text("sd/alpha\n", encoding="utf-8")  # in place
    assert registry.default().id == "sd/alpha"
    # What the cache holds for the file's stamp, as if a stat had missed a change:
    assert registry._chosen is not None
    stamp = registry._chosen[0]
    registry._chosen = (stamp, "sd/gamma", time.monotonic())  # read just now: trusted
    assert registry.default().id == "sd/gamma"
    registry._chosen = (stamp, "sd/gamma", time.monotonic() - registry.CHOSEN_RECHECK_S)
    assert registry.default().id == "sd/alpha"  # too old to trust: the file is read
