"""Which device and number format the engine runs on: CUDA in fp16, MPS, or the CPU in
fp32, chosen automatically (`runner.device = "auto"`) or as configured."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype

    @property
    def label(self) -> str:
        return f"{self.device} {str(self.dtype).removeprefix('torch.')}"


def choose(setting: str = "auto") -> Placement:
    """`auto` | `cuda` | `cuda:N` | `mps` | `cpu` -> where to run and in what precision."""
    if setting == "auto":
        if torch.cuda.is_available():
            setting = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            setting = "mps"
        else:
            setting = "cpu"
    device = torch.device(setting)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {setting!r} was asked for, but no CUDA GPU is visible")
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise ConfigError(f"device {setting!r} was asked for, but only {count} GPU(s) exist")
        return Placement(device, torch.float16)
    if device.type == "mps":
        return Placement(device, torch.float16)
    return Placement(device, torch.float32)


def describe(placement: Placement) -> dict[str, object]:
    """The device as the runner reports it and `doctor` shows it: label, whether it is a
    GPU, and for CUDA its name and memory in use and in all (bytes)."""
    device = placement.device
    info: dict[str, object] = {
        "device": placement.label,
        "gpu_available": device.type in ("cuda", "mps"),
    }
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        info.update(
            gpu_name=torch.cuda.get_device_name(device),
            memory_used=int(total - free),
            memory_total=int(total),
        )
    elif device.type == "mps":
        info.update(gpu_name="Apple GPU", memory_used=int(torch.mps.current_allocated_memory()))
    return info


def cuda_devices() -> int:
    """How many CUDA devices this host has (serve's `runner.devices = "all"`)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def for_family(
    placement: Placement, family: str, *, bf16_supported: bool | None = None
) -> Placement:
    """Where a model of `family` runs: FLUX.1 and SD 3.x in bfloat16 on a GPU that has
    it, as they were trained (their transformers and T5 overflow float16: black or NaN
    images); every other model as `placement` says."""
    if family not in ("flux", "sd3") or placement.dtype != torch.float16:
        return placement
    if bf16_supported is None:
        bf16_supported = placement.device.type == "cuda" and torch.cuda.is_bf16_supported()
    return Placement(placement.device, torch.bfloat16) if bf16_supported else placement
