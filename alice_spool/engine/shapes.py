"""Stable Diffusion 1.5, SDXL, FLUX.1 (dev, schnell) and SD 3.5 Large pipelines of the
real architecture with random weights, built in code from the published configs, for
benchmarks: the same layers, sizes and FLOPs as the real models, without downloading
them (their images are noise).

`build_pipeline(shape, workdir, device=..., dtype=...)` makes one on a device;
`write_model_folder` writes what the model registry reads (model_index.json and the
configs, no weights), so the spool can queue jobs for a pipeline that
`Engine.adopt` made resident.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
)

from ..errors import InvalidParameters
from .tiny import (
    FLUX_SCHEDULER,
    SD3_SCHEDULER,
    SD15_SCHEDULER,
    assemble,
    letter_t5_tokenizer,
    letter_tokenizer,
)

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
# CLIP ViT-L/14's text tower (SD 1.x, SDXL's first encoder, FLUX.1's and SD 3.5's CLIP-L).
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

# FLUX.1 dev and schnell: transformer/config.json (schnell: no guidance embedder).
FLUX_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,  # the VAE's 16 channels, packed 2x2
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,  # T5-XXL's width
    "pooled_projection_dim": 768,  # CLIP-L's
    "axes_dims_rope": (16, 56, 56),
}
# stable-diffusion-3.5-large: transformer/config.json (no dual-attention layers: those
# are 3.5 Medium's).
SD35_LARGE_TRANSFORMER: dict[str, Any] = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 38,
    "attention_head_dim": 64,
    "num_attention_heads": 38,
    "joint_attention_dim": 4096,  # T5-XXL's width
    "caption_projection_dim": 2432,  # the transformer's width, 38 x 64
    "pooled_projection_dim": 2048,  # CLIP-L's 768 and CLIP-G's 1280 pooled, side by side
    "out_channels": 16,
    "pos_embed_max_size": 192,
    "qk_norm": "rms_norm",
}
# google/t5-v1_1-xxl's encoder, as FLUX.1 (text_encoder_2) and SD 3.x (text_encoder_3)
# ship it: gated GELU ("gelu_new"), untied embeddings.
T5_XXL: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_ff": 10240,
    "d_kv": 64,
    "num_heads": 64,
    "num_layers": 24,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
}
# The 16-channel VAE of FLUX.1 and SD 3.x (no quant convs, a shifted latent space).
FLOW_VAE: dict[str, Any] = {
    **SD_VAE,
    "latent_channels": 16,
    "sample_size": 1024,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "force_upcast": True,
}
FLUX_VAE = {**FLOW_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159}
SD3_VAE = {**FLOW_VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609}
# FLUX.1 schnell ships its own scheduler config: no shift, no dynamic shifting.
FLUX_SCHNELL_SCHEDULER = {**FLUX_SCHEDULER, "shift": 1.0, "use_dynamic_shifting": False}

SHAPES = ("sd15", "sdxl", "flux-dev", "flux-schnell", "sd35-large")
NATIVE = {"sd15": 512, "sdxl": 1024, "flux-dev": 1024, "flux-schnell": 1024, "sd35-large": 1024}
# Each shape's model family (families.py) and variant, as the registry lists its folder.
FAMILY = {
    "sd15": ("sd1", None),
    "sdxl": ("sdxl", None),
    "flux-dev": ("flux", "dev"),
    "flux-schnell": ("flux", "schnell"),
    "sd35-large": ("sd3", None),
}
FLOW_SHAPES = tuple(shape for shape, (family, _) in FAMILY.items() if family in ("flux", "sd3"))


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


def _t5(tokenizer: Any) -> T5EncoderModel:
    return T5EncoderModel(
        T5Config(
            **T5_XXL,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )


def _flux_transformer(shape: str) -> FluxTransformer2DModel:
    return FluxTransformer2DModel(**FLUX_TRANSFORMER, guidance_embeds=shape == "flux-dev")


def _makers(shape: str, workdir: Path) -> dict[str, Callable[[], Any]]:
    """How to make each part of the shape (tokenizers built here: letters, offline)."""
    tokenizer = letter_tokenizer(workdir)
    if shape == "sd15":
        return {
            "unet": lambda: UNet2DConditionModel(**SD15_UNET),
            "vae": lambda: AutoencoderKL(**SD_VAE),
            "text_encoder": lambda: CLIPTextModel(_text(CLIP_L, tokenizer)),
            "tokenizer": lambda: tokenizer,
        }
    if shape == "sdxl":
        return {
            "unet": lambda: UNet2DConditionModel(**SDXL_UNET),
            "vae": lambda: AutoencoderKL(**SDXL_VAE),
            "text_encoder": lambda: CLIPTextModel(_text(CLIP_L, tokenizer)),
            "text_encoder_2": lambda: CLIPTextModelWithProjection(_text(CLIP_BIG_G, tokenizer)),
            "tokenizer": lambda: tokenizer,
            "tokenizer_2": lambda: tokenizer,
        }
    t5_tokenizer = letter_t5_tokenizer()
    if shape in ("flux-dev", "flux-schnell"):
        return {
            "transformer": lambda: _flux_transformer(shape),
            "text_encoder_2": lambda: _t5(t5_tokenizer),
            "text_encoder": lambda: CLIPTextModel(_text(CLIP_L, tokenizer)),
            "vae": lambda: AutoencoderKL(**FLUX_VAE),
            "tokenizer": lambda: tokenizer,
            "tokenizer_2": lambda: t5_tokenizer,
        }
    return {
        "transformer": lambda: SD3Transformer2DModel(**SD35_LARGE_TRANSFORMER),
        "text_encoder_3": lambda: _t5(t5_tokenizer),
        "text_encoder": lambda: CLIPTextModelWithProjection(_text(CLIP_L, tokenizer)),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(_text(CLIP_BIG_G, tokenizer)),
        "vae": lambda: AutoencoderKL(**SD3_VAE),
        "tokenizer": lambda: tokenizer,
        "tokenizer_2": lambda: tokenizer,
        "tokenizer_3": lambda: t5_tokenizer,
    }


def build_parts(shape: str, workdir: Path, *, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The shape's parts with random weights, on the current default device (use
    `with torch.device("meta"):` to build them without memory). With `dtype`, each
    model is converted as soon as it is made, so at most one of them is ever in float32
    (FLUX.1's transformer alone is 48 GB in float32)."""
    _check(shape)
    parts = {}
    for name, make in _makers(shape, workdir).items():
        part = make()
        if dtype is not None and isinstance(part, torch.nn.Module):
            part = part.to(dtype=dtype).eval()
        parts[name] = part
    return parts


def build_pipeline(
    shape: str, workdir: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype
) -> DiffusionPipeline:
    """A random-weight pipeline of the real architecture on `device` in `dtype`."""
    with torch.device(device):
        parts = build_parts(shape, workdir, dtype=dtype)
    pipeline: DiffusionPipeline
    if shape == "sd15":
        return assemble(parts, PNDMScheduler.from_config(SD15_SCHEDULER))
    if shape == "sdxl":
        return assemble(parts, EulerDiscreteScheduler.from_config(SDXL_SCHEDULER))
    if shape == "sd35-large":
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(SD3_SCHEDULER)
        pipeline = StableDiffusion3Pipeline(**parts, scheduler=scheduler)
    else:
        config = FLUX_SCHEDULER if shape == "flux-dev" else FLUX_SCHNELL_SCHEDULER
        pipeline = FluxPipeline(
            **parts, scheduler=FlowMatchEulerDiscreteScheduler.from_config(config)
        )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def write_model_folder(shape: str, folder: Path) -> Path:
    """What the registry reads of a model of this shape: model_index.json and the
    denoiser's (UNet's or transformer's) and VAE's configs (no weights: load the
    pipeline with `build_pipeline`)."""
    _check(shape)
    denoiser: tuple[str, dict[str, Any]]
    if shape == "sd15":
        pipeline_class, denoiser, vae = "StableDiffusionPipeline", ("unet", SD15_UNET), SD_VAE
    elif shape == "sdxl":
        pipeline_class, denoiser, vae = "StableDiffusionXLPipeline", ("unet", SDXL_UNET), SDXL_VAE
    elif shape == "sd35-large":
        pipeline_class, vae = "StableDiffusion3Pipeline", SD3_VAE
        denoiser = ("transformer", SD35_LARGE_TRANSFORMER)
    else:
        pipeline_class, vae = "FluxPipeline", FLUX_VAE
        guidance = {"guidance_embeds": shape == "flux-dev"}
        denoiser = ("transformer", {**FLUX_TRANSFORMER, **guidance})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(
        json.dumps({"_class_name": pipeline_class, "random_weights_of_shape": shape})
    )
    for part, config in (denoiser, ("vae", vae)):
        (folder / part).mkdir(exist_ok=True)
        (folder / part / "config.json").write_text(json.dumps(config))
    return folder
