"""A tiny random-weight Stable Diffusion 1.x-shaped pipeline, written to the models
directory, so that everything runs offline and in tests without downloading weights.

Its images are noise. It has the real architecture's parts (CLIP text encoder and
tokenizer, UNet with cross-attention, VAE, an SD 1.5 scheduler config) at a size that
makes a 64x64 image in a fraction of a second on a CPU. The weights come from a fixed
seed, so two tiny models made anywhere are identical.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from ..errors import InvalidParameters
from ..loras import LORAS_DIR
from ..registry import TINY_MARKER
from ..spec import normalise_lora_id, normalise_model_id
from .generate import quiet_libraries

TINY_NAME = "tiny"
NATIVE_SIZE = 64
WEIGHTS_SEED = 20261122

# The scheduler config Stable Diffusion 1.5 ships with.
SD15_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}


def letter_tokenizer(directory: Path) -> CLIPTokenizer:
    """A CLIP tokenizer with a byte-sized vocabulary and no merges: words become letters."""
    letters = [chr(c) for c in range(33, 127)]
    vocab = {letter: i for i, letter in enumerate(letters)}
    vocab.update({f"{letter}</w>": len(letters) + i for i, letter in enumerate(letters)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        str(directory / "vocab.json"),
        str(directory / "merges.txt"),
        model_max_length=77,
        pad_token="<|endoftext|>",
    )


def _text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=32,
    )


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        # Four blocks, as in SD: latents are 1/8 of the image's size.
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=NATIVE_SIZE,
    )


def _unet(**shape: Any) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=NATIVE_SIZE // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        **shape,
    )


def _sd1(workdir: Path) -> StableDiffusionPipeline:
    tokenizer = letter_tokenizer(workdir)
    unet = _unet(
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
    )
    parts = {
        "vae": _vae(),
        "text_encoder": CLIPTextModel(_text_config(tokenizer)),
        "tokenizer": tokenizer,
        "unet": unet,
    }
    return assemble(parts, PNDMScheduler.from_config(SD15_SCHEDULER))


def _sdxl(workdir: Path) -> StableDiffusionXLPipeline:
    """SDXL's shape: two text encoders (one with a pooled projection) and a UNet that
    also takes the pooled text and the size/crop conditioning ("text_time")."""
    tokenizer = letter_tokenizer(workdir)
    time_dim = 8
    unet = _unet(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * time_dim + 32,  # six size numbers + pooled
        cross_attention_dim=64,  # both encoders' hidden states side by side
    )
    parts = {
        "vae": _vae(),
        "text_encoder": CLIPTextModel(_text_config(tokenizer)),
        "text_encoder_2": CLIPTextModelWithProjection(_text_config(tokenizer)),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer,
        "unet": unet,
    }
    return assemble(parts, EulerDiscreteScheduler.from_config(SD15_SCHEDULER))


def assemble(parts: dict[str, Any], scheduler: Any) -> DiffusionPipeline:
    """A pipeline from its parts: SDXL's when there is a second text encoder, else SD's;
    without a safety checker or a watermarker, its progress bar off."""
    pipeline: DiffusionPipeline
    if "text_encoder_2" in parts:
        pipeline = StableDiffusionXLPipeline(**parts, scheduler=scheduler, add_watermarker=False)
    else:
        pipeline = StableDiffusionPipeline(
            **parts,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def build_tiny_pipeline(workdir: Path, family: str = "sd1") -> DiffusionPipeline:
    """A tiny pipeline of the family's shape, with weights from a fixed seed."""
    builders = {"sd1": _sd1, "sdxl": _sdxl}
    if family not in builders:
        raise InvalidParameters(f"no tiny model of family {family!r}", field="family")
    state = torch.random.get_rng_state()
    torch.manual_seed(WEIGHTS_SEED)
    try:
        return builders[family](workdir)
    finally:
        torch.random.set_rng_state(state)


def create_tiny(
    models_dir: Path, name: str = TINY_NAME, *, replace: bool = False, family: str = "sd1"
) -> Path:
    """Write a tiny pipeline (SD 1.x-shaped, or `family="sdxl"`) to `models_dir/<name>`,
    atomically, and return its path."""
    quiet_libraries()
    model_id = normalise_model_id(name, "name")
    target = Path(models_dir) / model_id.removeprefix("sd/")
    if target.exists() and not replace:
        raise InvalidParameters(f"{target} already exists", field="name")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as scratch:
        work = Path(scratch)
        pipeline = build_tiny_pipeline(work, family)
        staged = work / "model"
        pipeline.save_pretrained(staged, safe_serialization=True)
        index = json.loads((staged / "model_index.json").read_text())
        index[TINY_MARKER] = "random weights for smoke tests: its images are noise"
        (staged / "model_index.json").write_text(json.dumps(index, indent=2))
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return target


TINY_LORA_NAME = "tiny-lora"
LORA_SEED = 20261201


def create_tiny_lora(
    models_dir: Path, name: str = TINY_LORA_NAME, *, replace: bool = False
) -> Path:
    """Write a random LoRA for the tiny model (diffusers/PEFT keys, rank 4, on the UNet's
    attention projections) to `models_dir/loras/<name>.safetensors`, atomically. Its
    weights come from a fixed seed and are strong enough to change the tiny model's
    images visibly at scale 1."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    quiet_libraries()
    lora_id = normalise_lora_id(name, "name")
    target = Path(models_dir) / LORAS_DIR / f"{lora_id.removeprefix('lora/')}.safetensors"
    if target.exists() and not replace:
        raise InvalidParameters(f"{target} already exists", field="name")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.stem}.") as scratch:
        state = torch.random.get_rng_state()
        try:
            unet = build_tiny_pipeline(Path(scratch)).unet
            torch.manual_seed(LORA_SEED)
            config = LoraConfig(
                r=4,
                lora_alpha=4,
                target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                init_lora_weights=False,  # random A and B: a LoRA that does something
            )
            unet.add_adapter(config, adapter_name="tiny")
            weights = get_peft_model_state_dict(unet, adapter_name="tiny")
        finally:
            torch.random.set_rng_state(state)
        staged = Path(scratch) / "lora.safetensors"
        save_file(
            {f"unet.{key}": (3 * value).contiguous() for key, value in weights.items()},
            str(staged),
            metadata={"alice_spool": "random LoRA for the tiny model, for smoke tests"},
        )
        staged.replace(target)
    return target
