"""Tiny random-weight pipelines of each model family (SD 1.x by default, SDXL, FLUX.1,
SD 3.x), written to the models directory, so that everything runs offline and in tests
without downloading weights.

Their images are noise. Each has its real architecture's parts (CLIP and T5 text
encoders with tokenizers built here, a UNet or a transformer, a VAE, the family's
scheduler config) at a size that makes a 64x64 image in well under a second on a CPU.
The weights come from a fixed seed, so two tiny models made anywhere are identical.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxFillPipeline,
    FluxKontextPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from ..errors import InvalidParameters
from ..library.loras import LORAS_DIR
from ..library.registry import TINY_MARKER
from ..spec import normalise_lora_id, normalise_model_id
from .generate import quiet_libraries

TINY_NAME = "tiny"
TINY_FAMILIES = ("sd1", "sdxl", "flux", "sd3")
# dev has a distilled-guidance embedder, schnell none; Kontext is dev's shape in its own
# pipeline; Fill's transformer also reads the masked image's latents and the mask.
FLUX_VARIANTS = ("dev", "schnell", "kontext", "fill")
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

# The flow-matching scheduler configs FLUX.1 dev and SD 3.x ship with. Both FLUX
# variants get dev's: a tiny model's variant is its transformer's, nothing else.
FLUX_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
SD3_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}


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


def letter_t5_tokenizer() -> T5Tokenizer:
    """A T5 tokenizer (a Unigram model under T5's own pre-tokenizer and `</s>` ending)
    over single letters: words become a word-start mark and letters. It is built here
    from a list of pieces, with no sentencepiece file, and saves as `tokenizer.json`."""
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]  # T5's ids 0, 1, 2
    pieces = [("\u2581", -2.0)] + [(chr(c), -3.0) for c in range(33, 127)]
    return T5Tokenizer(vocab=specials + pieces, extra_ids=0, model_max_length=512)


def _text_config(tokenizer: CLIPTokenizer, width: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=width,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=width,
    )


def _t5_encoder(tokenizer: T5Tokenizer) -> T5EncoderModel:
    """T5 v1.1's shape (gated GELU, untied embeddings), as FLUX and SD 3 use, at d_model 32."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config)


def _vae(latent_channels: int = 4, **latent_space: Any) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        # Four blocks, as in SD: latents are 1/8 of the image's size.
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=NATIVE_SIZE,
        **latent_space,
    )


def _flow_vae(scaling_factor: float, shift_factor: float) -> AutoencoderKL:
    """The 16-channel VAE of FLUX.1 and SD 3.x: no quant convs, a shifted latent space."""
    return _vae(
        16,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
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


def _flux(workdir: Path, variant: str) -> DiffusionPipeline:
    """FLUX.1's shape: CLIP for the pooled text, T5 for the sequence, and an MMDiT with
    double- and single-stream blocks over 2x2-packed 16-channel latents. A Fill model's
    transformer reads the masked image's latents and the mask (8x8 per latent) too."""
    tokenizer = letter_tokenizer(workdir)
    t5_tokenizer = letter_t5_tokenizer()
    # The transformer comes last, so dev and schnell share every other part's weights.
    vae = _flow_vae(scaling_factor=0.3611, shift_factor=0.1159)
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    text_encoder_2 = _t5_encoder(t5_tokenizer)
    packed = 16 * 4  # the VAE's 16 channels, packed 2x2
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=packed if variant != "fill" else packed * 2 + 8 * 8 * 4,
        out_channels=packed,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # T5's d_model
        pooled_projection_dim=32,  # CLIP's width
        guidance_embeds=variant != "schnell",
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    )
    cls = {"kontext": FluxKontextPipeline, "fill": FluxFillPipeline}.get(variant, FluxPipeline)
    pipeline = cls(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(FLUX_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _sd3(workdir: Path) -> StableDiffusion3Pipeline:
    """SD 3.5's shape: two projected CLIP encoders and a T5, an MMDiT with QK norm over
    16-channel latents in 2x2 patches."""
    tokenizer = letter_tokenizer(workdir)
    t5_tokenizer = letter_t5_tokenizer()
    # The pipeline lays the two CLIPs' hidden states side by side and pads them to T5's
    # width, so each CLIP is half of T5's d_model; their pooled outputs join likewise.
    clip_width = 16
    vae = _flow_vae(scaling_factor=1.5305, shift_factor=0.0609)
    text_encoder = CLIPTextModelWithProjection(_text_config(tokenizer, clip_width))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer, clip_width))
    text_encoder_3 = _t5_encoder(t5_tokenizer)
    transformer = SD3Transformer2DModel(
        sample_size=NATIVE_SIZE // 8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # T5's d_model
        caption_projection_dim=32,  # the transformer's width
        pooled_projection_dim=2 * clip_width,
        pos_embed_max_size=32,  # images up to 512 pixels a side
        qk_norm="rms_norm",
    )
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(SD3_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer,
        text_encoder_3=text_encoder_3,
        tokenizer_3=t5_tokenizer,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


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


def _builder(family: str, variant: str | None) -> Callable[[Path], DiffusionPipeline]:
    """The function that builds a family's tiny pipeline; only FLUX has variants."""
    builders: dict[str, Callable[[Path], DiffusionPipeline]] = {
        "sd1": _sd1,
        "sdxl": _sdxl,
        "sd3": _sd3,
    }
    if family == "flux":
        variant = variant or "dev"
        if variant not in FLUX_VARIANTS:
            raise InvalidParameters(
                f"no tiny FLUX.1 of variant {variant!r} (choose from {', '.join(FLUX_VARIANTS)})",
                field="variant",
            )
        return partial(_flux, variant=variant)
    if family not in builders:
        raise InvalidParameters(
            f"no tiny model of family {family!r} (choose from {', '.join(TINY_FAMILIES)})",
            field="family",
        )
    if variant is not None:
        raise InvalidParameters(f"family {family} has no variants", field="variant")
    return builders[family]


def build_tiny_pipeline(
    workdir: Path, family: str = "sd1", variant: str | None = None
) -> DiffusionPipeline:
    """A tiny pipeline of the family's shape, with weights from a fixed seed. FLUX's
    `variant` is "dev" (the default: a guidance embedder), "schnell" (none), "kontext"
    or "fill" (FLUX_VARIANTS)."""
    build = _builder(family, variant)
    state = torch.random.get_rng_state()
    torch.manual_seed(WEIGHTS_SEED)
    try:
        return build(workdir)
    finally:
        torch.random.set_rng_state(state)


def create_tiny(
    models_dir: Path,
    name: str = TINY_NAME,
    *,
    replace: bool = False,
    family: str = "sd1",
    variant: str | None = None,
) -> Path:
    """Write a tiny pipeline of a family in TINY_FAMILIES (SD 1.x-shaped by default;
    FLUX.1 dev or schnell by `variant`) to `models_dir/<name>`, atomically, and return
    its path."""
    quiet_libraries()
    _builder(family, variant)  # a bad family or variant fails before anything is written
    model_id = normalise_model_id(name, "name")
    target = Path(models_dir) / model_id.removeprefix("sd/")
    if target.exists() and not replace:
        raise InvalidParameters(f"{target} already exists", field="name")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as scratch:
        work = Path(scratch)
        pipeline = build_tiny_pipeline(work, family, variant)
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


# The tiny models a LoRA can be made for: their family's denoiser, and its key prefix.
LORA_FAMILIES = ("sd1", "flux", "sd3")


def create_tiny_lora(
    models_dir: Path, name: str = TINY_LORA_NAME, *, replace: bool = False, family: str = "sd1"
) -> Path:
    """Write a random LoRA for the tiny model of `family` (diffusers/PEFT keys, rank 4,
    on the UNet's or the transformer's attention projections) to
    `models_dir/loras/<name>.safetensors`, atomically. Its weights come from a fixed
    seed and are strong enough to change the tiny model's images visibly at scale 1."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    quiet_libraries()
    if family not in LORA_FAMILIES:
        raise InvalidParameters(
            f"no tiny LoRA of family {family!r} (choose from {', '.join(LORA_FAMILIES)})",
            field="family",
        )
    lora_id = normalise_lora_id(name, "name")
    target = Path(models_dir) / LORAS_DIR / f"{lora_id.removeprefix('lora/')}.safetensors"
    if target.exists() and not replace:
        raise InvalidParameters(f"{target} already exists", field="name")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.stem}.") as scratch:
        state = torch.random.get_rng_state()
        try:
            pipeline = build_tiny_pipeline(Path(scratch), family)
            prefix = "unet" if family == "sd1" else "transformer"
            denoiser = getattr(pipeline, prefix)
            torch.manual_seed(LORA_SEED)
            config = LoraConfig(
                r=4,
                lora_alpha=4,
                target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                init_lora_weights=False,  # random A and B: a LoRA that does something
            )
            denoiser.add_adapter(config, adapter_name="tiny")
            weights = get_peft_model_state_dict(denoiser, adapter_name="tiny")
        finally:
            torch.random.set_rng_state(state)
        staged = Path(scratch) / "lora.safetensors"
        save_file(
            {f"{prefix}.{key}": (3 * value).contiguous() for key, value in weights.items()},
            str(staged),
            metadata={"alice_spool": "random LoRA for the tiny model, for smoke tests"},
        )
        staged.replace(target)
    return target
