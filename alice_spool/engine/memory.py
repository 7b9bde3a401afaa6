"""Fitting a model into the GPU's memory as its plan says (memory_plan.py decides):

- `full`: everything on the device.
- `low`: attention slicing, VAE slicing and tiling, and model CPU offload (accelerate
  moves each whole model part to the GPU while it runs); or, asked for, group offload
  (a block of the transformer at a time).
- `minimal`: the same with sequential CPU offload (layer by layer): slowest, smallest.
- The transformer families' transformer and T5 encoder quantized: nf4 or int8 with
  bitsandbytes as they load (`quantization_config`), fp8 as storage cast to the compute
  dtype layer by layer (`cast_to_fp8`, diffusers' layerwise casting).
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch
from diffusers import DiffusionPipeline

from ..memory_plan import MemoryPlan
from .device import Placement

log = logging.getLogger(__name__)

# The pipeline part that is each transformer family's T5 encoder.
T5_PARTS = {"flux": "text_encoder_2", "sd3": "text_encoder_3"}


def free_memory(placement: Placement) -> int | None:
    """Bytes this process can still use on the GPU (None off CUDA): what the card has
    free, plus what PyTorch's allocator holds cached but unused."""
    if placement.device.type != "cuda":
        return None
    device = placement.device
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free) + max(0, int(cached))


def bitsandbytes_installed() -> bool:
    """Whether bitsandbytes (the [gpu] extra: nf4 and int8) can be imported."""
    return importlib.util.find_spec("bitsandbytes") is not None


def quantization_config(plan: MemoryPlan, family: str, compute_dtype: torch.dtype) -> Any:
    """diffusers' PipelineQuantizationConfig for the plan's nf4 or int8 (bitsandbytes),
    for the transformer and the T5 encoder as the pipeline loads; None otherwise."""
    if plan.quantize not in ("nf4", "int8"):
        return None
    if not bitsandbytes_installed():
        raise RuntimeError(
            f"runner.quantize = {plan.quantize} needs bitsandbytes, which is not installed: "
            "pip install -c constraints.txt 'alice-spool[gpu]'"
        )
    try:
        from diffusers import PipelineQuantizationConfig

        parts = ["transformer", T5_PARTS[family]]
        if plan.quantize == "nf4":
            return PipelineQuantizationConfig(
                quant_backend="bitsandbytes_4bit",
                quant_kwargs={
                    "load_in_4bit": True,
                    "bnb_4bit_quant_type": "nf4",
                    "bnb_4bit_compute_dtype": compute_dtype,
                },
                components_to_quantize=parts,
            )
        return PipelineQuantizationConfig(
            quant_backend="bitsandbytes_8bit",
            quant_kwargs={"load_in_8bit": True},
            components_to_quantize=parts,
        )
    except (ImportError, ValueError) as exc:  # bitsandbytes is the GPU extra's
        raise RuntimeError(
            f"runner.quantize = {plan.quantize} needs bitsandbytes: "
            f"pip install 'alice-spool[gpu]' ({exc})"
        ) from exc


# The T5 encoder's layers that stay as they are under fp8 storage, beside diffusers'
# own (norms, embeddings in and out): its token embedding, which the encoder shares, and
# each block's `wo`, whose weight's dtype T5 casts its activations to before calling it.
_T5_KEPT = ("shared", "embed_tokens", r"\.wo$")


def cast_to_fp8(pipeline: DiffusionPipeline, family: str, compute_dtype: torch.dtype) -> None:
    """The transformer and the T5 encoder stored in float8 (e4m3), each layer cast to
    `compute_dtype` as it runs: about half their bf16 memory, no other library needed.
    The norms, embeddings and projections in and out stay as they are."""
    from diffusers.hooks import apply_layerwise_casting
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    transformer = pipeline.transformer
    if not getattr(transformer, "is_quantized", False):  # (a GGUF file's is already)
        transformer.enable_layerwise_casting(
            storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype
        )
    encoder = getattr(pipeline, T5_PARTS[family], None)
    if encoder is not None:
        apply_layerwise_casting(
            encoder,
            storage_dtype=torch.float8_e4m3fn,
            compute_dtype=compute_dtype,
            skip_modules_pattern=(*DEFAULT_SKIP_MODULES_PATTERN, *_T5_KEPT),
        )


def place(pipeline: DiffusionPipeline, placement: Placement, plan: MemoryPlan) -> None:
    """Put a pipeline loaded on the CPU where the plan says it goes."""
    if plan.offload == "none" or placement.device.type != "cuda":
        pipeline.to(placement.device)
        return
    if hasattr(pipeline, "enable_attention_slicing"):  # (the transformer families' lack it)
        pipeline.enable_attention_slicing()
    vae = getattr(pipeline, "vae", None)
    for saving in ("enable_slicing", "enable_tiling"):  # (diffusers 0.42: the VAE's own)
        if hasattr(vae, saving):
            getattr(vae, saving)()
    if plan.offload == "model":
        pipeline.enable_model_cpu_offload(device=placement.device)
    elif plan.offload == "sequential":
        pipeline.enable_sequential_cpu_offload(device=placement.device)
    elif plan.offload == "group":
        pipeline.enable_group_offload(
            onload_device=placement.device,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=True,
            low_cpu_mem_usage=True,  # no second, pinned copy of the model in host memory
        )
    else:
        raise ValueError(f"unknown offload {plan.offload!r}")
