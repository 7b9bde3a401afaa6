"""`alice-spool submit --vae NAME` becomes the request's `vae` field, checked at the door
like a model or a LoRA; `models ls` lists the VAEs of <models>/vae/ in a section of their own."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from alice_spool.store import Store
from tests.integration.cli.results import fails, ok
from tests.support.fake_model import write_fake_model


@pytest.fixture(autouse=True)
def installed(data_dir: Path) -> None:
    models = data_dir / "models"
    write_fake_model(models / "tiny")
    # A diffusers folder (the registry reads its config, never its weights) and a single
    # file whose header has the decoder's first convolution (4 latent channels).
    folder = models / "vae" / "ft-mse"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    conv_in = {"dtype": "F16", "shape": [8, 4, 3, 3], "data_offsets": [0, 576]}
    header = json.dumps({"decoder.conv_in.weight": conv_in}).encode()
    file = models / "vae" / "kl-f8-anime.safetensors"
    file.write_bytes(struct.pack("<Q", len(header)) + header + bytes(576))


def test_submit_with_a_vae_and_one_that_is_not_installed(run, store: Store) -> None:
    job_id = ok(run("submit", "a fox", "--vae", "kl-f8-anime.safetensors")).strip()
    assert store.jobs.get(job_id).spec.vae == "vae/kl-f8-anime"
    plain = ok(run("submit", "a fox", "--vae", "Automatic")).strip()
    assert store.jobs.get(plain).spec.vae is None
    fails(
        run("submit", "a fox", "--vae", "nope"),
        3,
        "vae/nope is not installed",
        "installed: vae/ft-mse, vae/kl-f8-anime",
        "[vae_not_found]",
    )
    assert sum(store.jobs.counts().values()) == 2


def test_models_ls_lists_the_vaes(run) -> None:
    table = ok(run("models", "ls"))
    assert "VAE" in table and "vae/ft-mse" in table and "kl-f8-anime.safetensors" in table
    listed = json.loads(ok(run("models", "ls", "--json")))
    assert [(v["id"], v["format"], v["status"]) for v in listed["vaes"]] == [
        ("vae/ft-mse", "diffusers", "ok"),
        ("vae/kl-f8-anime", "single_file", "ok"),
    ]
    assert [m["id"] for m in listed["models"]] == ["sd/tiny"]
