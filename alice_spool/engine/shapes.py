"""Stable Diffusion 1.5 and SDXL pipelines of the real architecture with random weights,
built in code from the published configs, for benchmarks: the same layers, sizes and
FLOPs as the real models, without downloading them (their images are noise).

`build_pipeline("sd15" | "sdxl", device=..., dtype=...)` makes one on a device;
`write_model_folder` writes what the model registry reads (model_index.json and the
configs, no weights), so the spool can queue jobs for a pipeline that
`Engine.adopt` made resident.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from ..errors import InvalidParameters
from .tiny import SD15_SCHEDULER, assemble, letter_tokenizer

# stable-diffusion-v1-5: unet/config.json (what differs from UNet2DConditionModel's
# defaults, which are SD 1.x's) and vae/config.json.
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SD_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
}
# CLIP ViT-L/14's text tower (SD 1.x, and SDXL's first encoder).
CLIP_L: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
# stable-diffusion-xl-base-1.0: unet/config.json, text_encoder_2 (OpenCLIP ViT-bigG/14).
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
}
CLIP_BIG_G: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}
SDXL_VAE = {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
SDXL_SCHEDULER = {**SD15_SCHEDULER, "timestep_spacing": "leading"}

SHAPES = ("sd15", "sdxl")
NATIVE = {"sd15": 512, "sdxl": 1024}


def _check(shape: str) -> None:
    if shape not in SHAPES:
        raise InvalidParameters(
            f"no model shape {shape!r}; choose one of: {', '.join(SHAPES)}", field="shape"
        )


def _text(config: dict[str, Any], tokenizer: Any) -> CLIPTextConfig:
    return CLIPTextConfig(
        **config,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_parts(shape: str, workdir: Path) -> dict[str, Any]:
    """The shape's parts with random weights, on the current default device (use
    `with torch.device("meta"):` to build them without memory)."""
    _check(shape)
    tokenizer = letter_tokenizer(workdir)  # a letter tokenizer: prompts tokenize offline
    if shape == "sd15":
        return {
            "unet": UNet2DConditionModel(**SD15_UNET),
            "vae": AutoencoderKL(**SD_VAE),
            "text_encoder": CLIPTextModel(_text(CLIP_L, tokenizer)),
            "tokenizer": tokenizer,
        }
    return {
        "unet": UNet2DConditionModel(**SDXL_UNET),
        "vae": AutoencoderKL(**SDXL_VAE),
        "text_encoder": CLIPTextModel(_text(CLIP_L, tokenizer)),
        "text_encoder_2": CLIPTextModelWithProjection(_text(CLIP_BIG_G, tokenizer)),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer,
    }


def build_pipeline(
    shape: str, workdir: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype
) -> DiffusionPipeline:
    """A random-weight pipeline of the real architecture on `device` in `dtype`."""
    with torch.device(device):
        parts = build_parts(shape, workdir)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if name in parts:
            parts[name] = parts[name].to(dtype=dtype).eval()
    if shape == "sd15":
        return assemble(parts, PNDMScheduler.from_config(SD15_SCHEDULER))
    return assemble(parts, EulerDiscreteScheduler.from_config(SDXL_SCHEDULER))


def write_model_folder(shape: str, folder: Path) -> Path:
    """What the registry reads of a model of this shape: model_index.json and the UNet's
    and VAE's configs (no weights: load the pipeline with `build_pipeline`)."""
    _check(shape)
    pipeline_class = "StableDiffusionPipeline" if shape == "sd15" else "StableDiffusionXLPipeline"
    unet = SD15_UNET if shape == "sd15" else SDXL_UNET
    vae = SD_VAE if shape == "sd15" else SDXL_VAE
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(
        json.dumps({"_class_name": pipeline_class, "random_weights_of_shape": shape})
    )
    for part, config in (("unet", unet), ("vae", vae)):
        (folder / part).mkdir(exist_ok=True)
        (folder / part / "config.json").write_text(json.dumps(config))
    return folder
