"""Write a diffusers SD 1.x pipeline as an original ("LDM") single-file checkpoint: the
layout other SD tools and most downloadable checkpoints use. Tests use it to make a
single-file model from the tiny one; `to_ldm` is checked against diffusers' own
converter (LDM -> diffusers), which must give back exactly the pipeline's weights."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from safetensors.torch import save_file

_RESNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]
_VAE_ATTENTION = [
    ("group_norm", "norm"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "proj_out"),
]


def _rename(rest: str, pairs: list[tuple[str, str]]) -> str:
    for new, old in pairs:
        if rest.startswith(new + "."):
            return old + rest[len(new) :]
    return rest


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    stride = config["layers_per_block"] + 1
    fixed = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    has_attention = {
        int(k.split(".")[1]) for k in state if k.startswith("up_blocks.") and ".attentions." in k
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if key in fixed:
            new = fixed[key]
        elif parts[0] == "down_blocks":
            block = int(parts[1])
            if parts[2] == "downsamplers":
                new = f"input_blocks.{(block + 1) * stride}.0.op." + ".".join(parts[5:])
            else:
                index = block * stride + int(parts[3]) + 1
                rest = ".".join(parts[4:])
                if parts[2] == "resnets":
                    new = f"input_blocks.{index}.0.{_rename(rest, _RESNET)}"
                else:
                    new = f"input_blocks.{index}.1.{rest}"
        elif parts[0] == "mid_block":
            rest = ".".join(parts[3:])
            if parts[1] == "resnets":
                new = f"middle_block.{2 * int(parts[2])}.{_rename(rest, _RESNET)}"
            else:
                new = f"middle_block.1.{rest}"
        elif parts[0] == "up_blocks":
            block = int(parts[1])
            if parts[2] == "upsamplers":
                slot = 2 if block in has_attention else 1
                new = f"output_blocks.{block * stride + stride - 1}.{slot}.conv." + parts[-1]
            else:
                index = block * stride + int(parts[3])
                rest = ".".join(parts[4:])
                if parts[2] == "resnets":
                    new = f"output_blocks.{index}.0.{_rename(rest, _RESNET)}"
                else:
                    new = f"output_blocks.{index}.1.{rest}"
        else:
            raise KeyError(f"no LDM name for UNet weight {key}")
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    blocks = len(config["up_block_types"])
    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    shortcut = [("conv_shortcut", "nin_shortcut")]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        side = parts[0]
        if key in fixed:
            new = fixed[key]
        elif parts[1] == "down_blocks":
            if parts[3] == "downsamplers":
                new = f"{side}.down.{parts[2]}.downsample.conv.{parts[-1]}"
            else:
                rest = _rename(".".join(parts[5:]), shortcut)
                new = f"{side}.down.{parts[2]}.block.{parts[4]}.{rest}"
        elif parts[1] == "up_blocks":
            block = blocks - 1 - int(parts[2])
            if parts[3] == "upsamplers":
                new = f"{side}.up.{block}.upsample.conv.{parts[-1]}"
            else:
                rest = _rename(".".join(parts[5:]), shortcut)
                new = f"{side}.up.{block}.block.{parts[4]}.{rest}"
        elif parts[1] == "mid_block":
            rest = ".".join(parts[4:])
            if parts[2] == "resnets":
                new = f"{side}.mid.block_{int(parts[3]) + 1}.{_rename(rest, shortcut)}"
            else:
                new = f"{side}.mid.attn_1.{_rename(rest, _VAE_ATTENTION)}"
        else:
            raise KeyError(f"no LDM name for VAE weight {key}")
        out["first_stage_model." + new] = value
    return out


def to_ldm(pipeline) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Every weight of an SD 1.x pipeline under its original (LDM) name."""
    checkpoint = unet_to_ldm(pipeline.unet.state_dict(), dict(pipeline.unet.config))
    checkpoint.update(vae_to_ldm(pipeline.vae.state_dict(), dict(pipeline.vae.config)))
    for key, value in pipeline.text_encoder.state_dict().items():
        # The LDM layout names CLIP's weights as transformers 4 did: under text_model.
        name = key if key.startswith("text_model.") else "text_model." + key
        checkpoint["cond_stage_model.transformer." + name] = value
    return checkpoint


def write_single_file(pipeline, path: Path) -> Path:  # type: ignore[no-untyped-def]
    save_file({k: v.contiguous() for k, v in to_ldm(pipeline).items()}, str(path))
    return path
