"""A VAE for the tiny model, for tests: its own VAE with the decoder's weights moved by
a fixed seed, written to `<models>/vae/` as a diffusers folder and as a single file in
the original (LDM) layout, as AUTOMATIC1111's users have them (no `first_stage_model.`
prefix)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from tests.support.ldm_checkpoint import vae_to_ldm

GRAIN_SEED = 5


def grain_vae(tiny_dir: Path, seed: int = GRAIN_SEED) -> AutoencoderKL:
    """The tiny model's VAE, its decoder's weights each moved by noise of `seed`."""
    vae = AutoencoderKL.from_pretrained(tiny_dir / "vae", local_files_only=True)
    noise = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, weight in vae.decoder.named_parameters():
            weight.add_(torch.randn(weight.shape, generator=noise) * 0.1)
    return vae


def write_vae_folder(vae: AutoencoderKL, models_dir: Path, name: str) -> Path:
    target = models_dir / "vae" / name
    vae.save_pretrained(target, safe_serialization=True)
    return target


def write_vae_file(vae: AutoencoderKL, models_dir: Path, name: str) -> Path:
    """`<models>/vae/<name>.safetensors`, its tensors under their LDM names."""
    target = models_dir / "vae" / f"{name}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    tensors = vae_to_ldm(vae.state_dict(), dict(vae.config))
    save_file(
        {key.removeprefix("first_stage_model."): t.contiguous() for key, t in tensors.items()},
        str(target),
    )
    return target
