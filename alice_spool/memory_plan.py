"""What a model will need of a card, and how it is fitted in:
`runner.memory` (attention and VAE slicing, whole-model or layer-by-layer CPU offload),
and for the transformer families `runner.quantize` (the transformer and the T5 encoder
in fp8, int8 or nf4) and `runner.offload` (model or group offload). Pure: the engine
applies the plan (engine/memory.py), `doctor` and `/health` say what it will be, and
neither needs torch to know.

`auto` fits a family into the memory the card has free, best quality first:

| family | everything resident (bf16) | bf16, a model at a time | fp8 | nf4, a model at a time |
|---|---|---|---|---|
| FLUX.1 (12B) | 37 GB | 27 GB | 20 GB / 15 GB | 10 GB |
| SD 3.5 Large (8B) | 31 GB | 19 GB | 18 GB / 11 GB | 8 GB |

(fp8: resident / a model at a time.) Below the last, nf4 with group offload (a few
blocks at a time) runs in about 4 GB, slowly. So FLUX.1 runs on a 12 GB card (nf4 and
model offload) and SD 3.5 Large on 16 GB (fp8 and model offload).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

GB = 1024**3

MEMORY_MODES = ("auto", "full", "low", "minimal")
QUANTIZE = ("none", "auto", "nf4", "int8", "fp8")
BITSANDBYTES = ("nf4", "int8")  # what needs the bitsandbytes package (the [gpu] extra)
OFFLOAD = ("auto", "none", "model", "group")
# Step caching for the transformer families (diffusers' cache hooks): reuse what a step's
# transformer blocks computed when it changes little from the last (`first_block`), or
# predict it from the last steps (`taylorseer`). Faster, a little different; off by default.
CACHES = ("none", "first_block", "taylorseer")

# Free GPU memory (bytes) an SD family needs to run `full`, and to run `low`, at fp16
# with a batch of a few images.
THRESHOLDS = {
    "sd1": (4 * GB, 2 * GB),
    "sd2": (5 * GB, 2.5 * GB),
    "sdxl": (12 * GB, 6 * GB),
}

# The transformer families' large parts, in GiB at each precision (the released
# models' parameter counts: FLUX.1 12B and a 4.7B T5; SD 3.5 Large 8.1B and the T5),
# what else stays resident (CLIP, VAE), and room for the activations of a 1024x1024
# image or two.
_BYTES_PER_PARAMETER = {"none": 2.0, "fp8": 1.0, "int8": 1.06, "nf4": 0.56}
_PARAMETERS = {"flux": (11.9, 4.76), "sd3": (8.1, 4.76)}  # (transformer, T5), billions
_REST_GB = {"flux": 0.5, "sd3": 1.8}
_ACTIVATIONS_GB = 3.0
# Best quality first: (quantize, offload).
_CANDIDATES = (
    ("none", "none"),
    ("none", "model"),
    ("fp8", "none"),
    ("fp8", "model"),
    ("int8", "none"),  # (as fp8 at a little more memory: only when asked for)
    ("int8", "model"),
    ("nf4", "none"),
    ("nf4", "model"),
)


@dataclass(frozen=True)
class MemoryPlan:
    """How a model is fitted into its device: `mode` as `runner.memory` names it (full,
    low, minimal), the quantization of its transformer and T5 encoder, and its offload
    (none, model, sequential: layer by layer, group: a few blocks at a time)."""

    mode: str
    quantize: str = "none"
    offload: str = "none"

    def describe(self) -> str:
        """As jobs record it (`memory_mode`): the mode, then what differs from it."""
        parts = [self.mode]
        if self.quantize != "none":
            parts.append(f"quantized {self.quantize} (transformer and T5)")
        if self.offload != _NATURAL_OFFLOAD[self.mode]:
            parts.append(f"{self.offload} offload")
        return ", ".join(parts)


# The offload each runner.memory mode has always meant.
_NATURAL_OFFLOAD = {"full": "none", "low": "model", "minimal": "sequential"}


@dataclass(frozen=True)
class MemoryChoice:
    """The runner's settings for how a model is set up as it loads: `runner.memory`,
    `.quantize`, `.offload` and `.cache`."""

    memory: str = "auto"
    quantize: str = "none"
    offload: str = "auto"
    cache: str = "none"  # runner.cache: set up as the model loads, with the rest

    def plan(self, free_bytes: int | None, family: str, *, bitsandbytes: bool = True) -> MemoryPlan:
        """The plan for a model of `family` on a device with `free_bytes` free
        (`bitsandbytes`: whether it is installed, for nf4 and int8)."""
        return plan(
            self.memory,
            free_bytes=free_bytes,
            family=family,
            quantize=self.quantize,
            offload=self.offload,
            bitsandbytes=bitsandbytes,
        )

    def refusal(self, device_type: str, *, bitsandbytes: bool = True) -> str | None:
        """Why these settings cannot run on a device of this type, or without
        bitsandbytes (None: they can)."""
        if device_type != "cuda" and self.quantize not in ("none", "auto"):
            return (
                f"runner.quantize = {self.quantize} needs a CUDA GPU (bitsandbytes for nf4 "
                f"and int8; fp8 storage cast on the GPU), and this runner is on "
                f"{device_type}: set it to none or auto"
            )
        if self.quantize in BITSANDBYTES and not bitsandbytes:
            return (
                f"runner.quantize = {self.quantize} needs bitsandbytes, which is not "
                "installed: pip install -c constraints.txt 'alice-spool[gpu]' (or quantize "
                "fp8, which needs nothing more)"
            )
        return None


def needed_gb(family: str, quantize: str, offload: str) -> float:
    """GiB of free GPU memory a transformer family needs with these settings."""
    transformer, t5 = (p * _BYTES_PER_PARAMETER[quantize] for p in _PARAMETERS[family])
    if offload == "group":
        return 1.0 + _ACTIVATIONS_GB
    if offload == "model":  # one large part on the card at a time
        return max(transformer, t5) + _ACTIVATIONS_GB
    return transformer + t5 + _REST_GB[family] + _ACTIVATIONS_GB


def _offload_mode(offload: str) -> str:
    return {"none": "full", "model": "low", "sequential": "minimal", "group": "low"}[offload]


def plan(
    memory: str = "auto",
    *,
    free_bytes: int | None,
    family: str,
    quantize: str = "none",
    offload: str = "auto",
    bitsandbytes: bool = True,
) -> MemoryPlan:
    """The plan for a model of `family` on a device with `free_bytes` free (None: not a
    CUDA GPU). Off CUDA everything stays where it is, in full: asking to quantize there
    is refused (ConfigError, saying why); offload has nowhere to go and is a no-op.
    Without `bitsandbytes` installed, `auto` never picks nf4 or int8."""
    refused = MemoryChoice(memory, quantize, offload).refusal(
        "cuda" if free_bytes is not None else "cpu", bitsandbytes=bitsandbytes
    )
    if refused is not None:
        raise ConfigError(refused, key="runner.quantize")
    if free_bytes is None:
        return MemoryPlan("full")
    if family not in _PARAMETERS:  # the SD families: runner.memory as it always was
        if offload in ("model", "group"):
            return MemoryPlan("low", offload=offload)
        if offload == "none":
            return MemoryPlan("full")
        mode = _sd_mode(memory, free_bytes, family)
        return MemoryPlan(mode, offload={"full": "none", "low": "model"}.get(mode, "sequential"))
    free_gb = free_bytes / GB
    wanted_quantize = None if quantize == "auto" else quantize
    if offload == "auto" and memory in ("full", "low", "minimal"):
        offload = {"full": "none", "low": "model", "minimal": "group"}[memory]
    wanted_offload = None if offload == "auto" else offload
    for candidate_quantize, candidate_offload in _CANDIDATES:
        if wanted_quantize not in (None, candidate_quantize):
            continue
        if candidate_quantize in BITSANDBYTES and not bitsandbytes:
            continue
        if wanted_offload not in (None, candidate_offload):
            continue
        if needed_gb(family, candidate_quantize, candidate_offload) <= free_gb:
            return MemoryPlan(
                _offload_mode(candidate_offload), candidate_quantize, candidate_offload
            )
    # Nothing fits as asked: the smallest the settings allow.
    final_quantize = wanted_quantize or ("nf4" if bitsandbytes else "fp8")
    final_offload = wanted_offload or "group"
    return MemoryPlan(_offload_mode(final_offload), final_quantize, final_offload)


def _sd_mode(memory: str, free_bytes: int, family: str) -> str:
    if memory != "auto":
        return memory
    full, low = THRESHOLDS.get(family, THRESHOLDS["sd1"])
    if free_bytes >= full:
        return "full"
    return "low" if free_bytes >= low else "minimal"
