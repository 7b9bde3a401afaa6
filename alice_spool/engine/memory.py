"""Fitting a model into the GPU's memory (`runner.memory`): all on the GPU, or with
attention and VAE slicing/tiling and CPU offload for small cards (6-8 GB, a GTX 1060).

- `full`: everything on the device.
- `low`: attention slicing, VAE slicing and tiling, and model CPU offload (accelerate
  moves each whole model part to the GPU while it runs).
- `minimal`: the same with sequential CPU offload (layer by layer): slowest, smallest.
- `auto`: chosen from the card's free memory and the model family.
"""

from __future__ import annotations

import logging

import torch
from diffusers import DiffusionPipeline

from .device import Placement

log = logging.getLogger(__name__)

GB = 1024**3
# Free GPU memory (bytes) a family needs to run `full`, and to run `low`, at fp16
# with a batch of a few images.
THRESHOLDS = {
    "sd1": (4 * GB, 2 * GB),
    "sd2": (5 * GB, 2.5 * GB),
    "sdxl": (12 * GB, 6 * GB),
    # bf16 transformer and T5 encoder resident / offloaded a model at a time
    "sd3": (30 * GB, 12 * GB),
    "flux": (36 * GB, 14 * GB),
}


def plan(mode: str, *, free_bytes: int | None, family: str) -> str:
    """The mode to use: `mode` itself unless it is `auto`. Without a CUDA GPU
    (free_bytes None) nothing is offloaded, whatever the setting: `full`."""
    if free_bytes is None:
        return "full"
    if mode != "auto":
        return mode
    full, low = THRESHOLDS.get(family, THRESHOLDS["sd1"])
    if free_bytes >= full:
        return "full"
    return "low" if free_bytes >= low else "minimal"


def free_memory(placement: Placement) -> int | None:
    """Bytes this process can still use on the GPU (None off CUDA): what the card has
    free, plus what PyTorch's allocator holds cached but unused."""
    if placement.device.type != "cuda":
        return None
    device = placement.device
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free) + max(0, int(cached))


def place(pipeline: DiffusionPipeline, placement: Placement, mode: str) -> None:
    """Put a pipeline loaded on the CPU where `mode` says it goes."""
    if mode == "full" or placement.device.type != "cuda":
        pipeline.to(placement.device)
        return
    for saving in ("enable_attention_slicing", "enable_vae_slicing", "enable_vae_tiling"):
        if hasattr(pipeline, saving):  # (the transformer families' pipelines lack some)
            getattr(pipeline, saving)()
    if mode == "low":
        pipeline.enable_model_cpu_offload(device=placement.device)
    elif mode == "minimal":
        pipeline.enable_sequential_cpu_offload(device=placement.device)
    else:
        raise ValueError(f"unknown memory mode {mode!r}")
