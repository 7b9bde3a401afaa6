"""Throughput: how many images one pipeline call may take, and the optional compiled
pipeline (`runner.compile`).

- Batch size: `runner.max_batch` caps it; on a GPU, the free memory after the model is
  loaded caps it too, by the model family's memory per image at the asked size.
- Compilation: fused QKV projections, channels_last, and `torch.compile` of the UNet and
  the VAE decoder (CUDA graphs on a GPU: mode "reduce-overhead"). Compiled code is made
  once per shape, so calls run at fixed batch sizes (`batch_buckets`; a call is padded
  up to the next one) and every size and bucket is compiled by `Engine.warm_up` before
  the first job; a size that was not warmed up runs on the eager modules. Nothing is
  compiled while a job waits.
- LoRA batches on a compiled pipeline run on the eager modules with the QKV projections
  unfused (`Compiled.eager_unfused`); their adapters are unloaded before the next plain
  batch, so the compiled modules always run exactly the module tree they were traced
  with (no recompilation, no LoRA layer left in a plain call).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DiffusionPipeline, StableDiffusionXLPipeline

log = logging.getLogger(__name__)

GIB = 1024**3
# GPU memory one image takes during a call at the family's native size, at fp16 with
# PyTorch's SDPA attention: the UNet's activations with classifier-free guidance (two
# samples) and the VAE decoder's, which is the larger. Grows with the pixel count.
PER_IMAGE_BYTES = {"sd1": 0.75 * GIB, "sd2": 1.0 * GIB, "sdxl": 2.5 * GIB}
NATIVE_PIXELS = {"sd1": 512 * 512, "sd2": 768 * 768, "sdxl": 1024 * 1024}
HEADROOM_BYTES = int(1.5 * GIB)  # kept free for the allocator's fragmentation and cuDNN


def batch_limit(family: str, width: int, height: int, *, free_bytes: int | None, cap: int) -> int:
    """Images per call for this family and size: `cap`, or fewer when the GPU's free
    memory (None: not a GPU, no limit but `cap`) holds fewer. Never less than 1."""
    if free_bytes is None:
        return cap
    per_image = PER_IMAGE_BYTES.get(family, PER_IMAGE_BYTES["sd1"])
    per_image *= (width * height) / NATIVE_PIXELS.get(family, NATIVE_PIXELS["sd1"])
    fits = int((free_bytes - HEADROOM_BYTES) // max(per_image, 1))
    return max(1, min(cap, fits))


def batch_buckets(max_batch: int) -> list[int]:
    """The batch sizes a compiled pipeline runs at: powers of two up to `max_batch`,
    and `max_batch` itself."""
    sizes = {1, max_batch}
    size = 2
    while size < max_batch:
        sizes.add(size)
        size *= 2
    return sorted(sizes)


def bucket_for(images: int, buckets: list[int]) -> int:
    """The smallest bucket that holds `images` (the largest if none does)."""
    return next((b for b in buckets if b >= images), buckets[-1])


class FloatTimesteps(torch.nn.Module):
    """A compiled UNet that is always handed its timestep as float32. Schedulers give it
    as float32 (Euler), float64 (the k-diffusion SDE ones) or int64 (DDIM, DPM++ 2M):
    each would be a compilation of its own. The UNet's time embedding turns it into
    float32 first anyway, so the images are the same. Everything else (`config`, `dtype`,
    submodules) is the UNet's."""

    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: Any, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        if torch.is_tensor(timestep) and timestep.dtype != torch.float32:
            timestep = timestep.to(torch.float32)
        elif not torch.is_tensor(timestep):
            timestep = torch.tensor(timestep, dtype=torch.float32, device=sample.device)
        return self.unet(sample, timestep, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("unet"), name)


@dataclass
class Compiled:
    """A pipeline's UNet and VAE decoder, compiled and as they were (fused and laid out
    alike): the compiled ones for the sizes they were warmed up for, the eager ones for
    any other size, so that no job ever waits for a compilation."""

    description: str
    sizes: set[tuple[int, int]]
    unet: Any
    decode: Any
    eager_unet: Any
    eager_decode: Any
    # The UNet's attention processors fused and as they were (None: its QKV projections
    # are not fused).
    fused_processors: dict[str, Any] | None = None
    unfused_processors: dict[str, Any] | None = None

    def use(self, pipeline: DiffusionPipeline, *, compiled: bool) -> None:
        pipeline.unet = self.unet if compiled else self.eager_unet
        pipeline.vae.decode = self.decode if compiled else self.eager_decode

    @contextmanager
    def eager_unfused(self, pipeline: DiffusionPipeline) -> Iterator[None]:
        """Run the eager modules with the UNet's separate Q, K and V projections (where
        LoRA layers sit; the fused projection would bypass them), then put the fused
        processors (the very objects the compiled code was traced with) and the
        compiled modules back."""
        # (Not the UNet's unfuse_qkv_projections: set_attn_processor empties the dict it
        # is given, and that method gives it the one it keeps, so it works only once.)
        self.use(pipeline, compiled=False)
        if self.unfused_processors is not None:
            self.eager_unet.set_attn_processor(dict(self.unfused_processors))
        try:
            yield
        finally:
            if self.fused_processors is not None:
                self.eager_unet.set_attn_processor(dict(self.fused_processors))
            self.use(pipeline, compiled=True)


def optimise(pipeline: DiffusionPipeline, device: torch.device, *, backend: Any) -> Compiled:
    """Fuse, lay out and compile a pipeline's UNet and VAE decoder (in place: the
    compiled ones are put in). `backend` is torch.compile's ("inductor"; tests use a
    counting one to check the wiring without code generation)."""
    done = []
    fused_processors = unfused_processors = None
    try:
        unfused = dict(pipeline.unet.attn_processors)
        pipeline.fuse_qkv_projections()
        fused_processors, unfused_processors = dict(pipeline.unet.attn_processors), unfused
        done.append("fused QKV")
    except Exception as exc:  # an attention processor that cannot fuse: go on without
        log.info("QKV projections not fused: %s", exc)
    # Inference only: and loading a LoRA (PEFT) turns requires_grad off on the weights
    # it leaves alone, which compiled code guards on; off from the start, a LoRA batch
    # changes nothing the compiled code sees.
    pipeline.unet.requires_grad_(False)
    pipeline.vae.requires_grad_(False)
    pipeline.unet.to(memory_format=torch.channels_last)
    pipeline.vae.to(memory_format=torch.channels_last)
    done.append("channels_last")
    options: dict[str, Any] = {"backend": backend, "dynamic": False}
    if backend == "inductor" and device.type == "cuda":
        options["mode"] = "reduce-overhead"  # CUDA graphs: no per-kernel launch cost
    eager_unet, eager_decode = pipeline.unet, pipeline.vae.decode
    decode = torch.compile(eager_decode, **options)
    if _upcasts_per_call(pipeline):
        # SDXL's VAE overflows in fp16, so its pipeline converts the VAE to fp32 and
        # back around every decode: new weight tensors each call, which compiled code
        # (CUDA graphs above all) would take for new inputs. Keep it in fp32 instead
        # and hand it fp32 latents; the pipeline then leaves it alone.
        pipeline.vae.to(torch.float32)
        eager_decode, decode = _float32_input(eager_decode), _float32_input(decode)
        done.append("VAE kept in float32")
    compiled = Compiled(
        description=", ".join([*done, f"torch.compile({options})"]),
        sizes=set(),
        unet=FloatTimesteps(torch.compile(eager_unet, **options)),
        decode=decode,
        eager_unet=eager_unet,
        eager_decode=eager_decode,
        fused_processors=fused_processors,
        unfused_processors=unfused_processors,
    )
    compiled.use(pipeline, compiled=True)
    return compiled


def _upcasts_per_call(pipeline: DiffusionPipeline) -> bool:
    """Whether the pipeline converts its VAE to fp32 and back around each decode: SDXL's
    does when the VAE is fp16 and says `force_upcast` (SD 1.x/2.x pipelines never do,
    whatever their VAE's config says)."""
    vae = pipeline.vae
    return (
        isinstance(pipeline, StableDiffusionXLPipeline)
        and vae.dtype == torch.float16
        and bool(getattr(vae.config, "force_upcast", False))
    )


def _float32_input(decode: Any) -> Any:
    """`decode`, handed its latents in float32 (for a VAE kept in float32)."""

    def float32_decode(latents: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return decode(latents.to(torch.float32), *args, **kwargs)

    return float32_decode


def allow_compiled_shapes(count: int) -> None:
    """Let dynamo keep `count` compiled shapes per function (sizes x buckets) rather
    than fall back to eager after its default few."""
    import torch._dynamo

    limit = max(int(torch._dynamo.config.cache_size_limit), count + 2)
    torch._dynamo.config.cache_size_limit = limit
    if hasattr(torch._dynamo.config, "accumulated_cache_size_limit"):
        torch._dynamo.config.accumulated_cache_size_limit = max(
            int(torch._dynamo.config.accumulated_cache_size_limit), 4 * limit
        )
