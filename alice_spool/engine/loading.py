"""Loading a model's pipeline: a diffusers folder, a single-file checkpoint, or a FLUX.1
or SD 3.x transformer file with the components of an installed model; placed on its
device as the memory plan says, offline. And the pipelines made from a loaded one for
img2img and inpainting (sharing its modules)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DiffusionPipeline,
    FluxFillPipeline,
    FluxKontextPipeline,
    FluxPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from ..errors import InvalidParameters, ModelLoadFailed
from ..library.families import FAMILY_NAMES
from ..memory_plan import MemoryChoice, MemoryPlan
from . import caching
from .device import Placement, for_family
from .memory import (
    bitsandbytes_installed,
    cast_to_fp8,
    free_memory,
    place,
    quantization_config,
)

log = logging.getLogger(__name__)

_PIPELINES = {
    "StableDiffusionPipeline": StableDiffusionPipeline,
    "StableDiffusionXLPipeline": StableDiffusionXLPipeline,
    "FluxPipeline": FluxPipeline,
    "FluxKontextPipeline": FluxKontextPipeline,
    "FluxFillPipeline": FluxFillPipeline,
    "StableDiffusion3Pipeline": StableDiffusion3Pipeline,
}
# FLUX.1's pipelines, as loaded from a folder (a dev or schnell, a Kontext, a Fill model).
FLUX_PIPELINES = (FluxPipeline, FluxKontextPipeline, FluxFillPipeline)


def quiet_libraries() -> None:
    """No progress bars or advice from the libraries: the spool reports progress itself."""
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()


@dataclass
class Loaded:
    """A pipeline on its device, with what the engine needs to know about it."""

    model_id: str
    pipeline: DiffusionPipeline
    placement: Placement
    native_size: int
    memory_mode: str
    scheduler_config: Any = field(repr=False)
    adapters: Any = field(default=None, repr=False)  # its LoRAs (adapters.Adapters)
    cache: str = "none"  # the step cache its transformer runs with (caching.py)
    derived: dict[str, Any] = field(default_factory=dict, repr=False)  # img2img, inpaint


def _options(
    cls: type[DiffusionPipeline], placement: Placement, plan: MemoryPlan, family: str
) -> dict[str, Any]:
    options: dict[str, Any] = {"dtype": placement.dtype, "local_files_only": True}
    if cls is StableDiffusionPipeline:
        options.update(safety_checker=None, requires_safety_checker=False)
    quantized = quantization_config(plan, family, placement.dtype)
    if quantized is not None:
        options["quantization_config"] = quantized
    return options


def _load_and_place(
    make: Callable[[MemoryPlan], DiffusionPipeline],
    model_id: str,
    placement: Placement,
    *,
    memory: MemoryChoice,
    family: str,
    source: str,
) -> Loaded:
    """Build a pipeline with `make` (given the memory plan, for what quantizes as it
    loads) and place it as the plan says (memory.py); any failure is
    `model_load_failed`, in one line, naming the `source`."""
    quiet_libraries()
    try:
        plan = memory.plan(free_memory(placement), family, bitsandbytes=bitsandbytes_installed())
        # (bitsandbytes puts what it quantizes on the current CUDA device: this one's)
        with (
            torch.cuda.device(placement.device)
            if placement.device.type == "cuda"
            else nullcontext()
        ):
            pipeline = make(plan)
        if plan.quantize == "fp8":
            cast_to_fp8(pipeline, family, placement.dtype)
        place(pipeline, placement, plan)
        cache = caching.enable(pipeline, memory.cache, placement.dtype)
    except Exception as exc:  # diffusers, transformers and torch report it variously
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelLoadFailed(f"cannot load {model_id} {source}: {reason}", model=model_id) from exc
    pipeline.set_progress_bar_config(disable=True)
    native = native_size(pipeline)
    mode = plan.describe()
    log.info("loaded %s %s on %s (memory %s)", model_id, source, placement.label, mode)
    config = pipeline.scheduler.config
    return Loaded(model_id, pipeline, placement, native, mode, config, cache=cache)


def load(
    path: Path,
    model_id: str,
    placement: Placement,
    *,
    memory: MemoryChoice | str = "auto",
    family: str = "sd1",
    variant: str | None = None,
) -> Loaded:
    """Load a diffusers folder with the pipeline class it names (a FLUX.1 Fill
    transformer's, whatever it names: `variant`), offline; FLUX.1 and SD 3.x in bfloat16
    where the GPU has it (device.for_family)."""
    placement = for_family(placement, family)

    def make(plan: MemoryPlan) -> DiffusionPipeline:
        index = json.loads((path / "model_index.json").read_text())
        cls = _PIPELINES.get(index.get("_class_name", ""), StableDiffusionPipeline)
        if family == "flux" and variant in _TRANSFORMER_PIPELINES:
            cls = _TRANSFORMER_PIPELINES[variant]
        return cls.from_pretrained(path, **_options(cls, placement, plan, family))

    return _load_and_place(
        make, model_id, placement, memory=_choice(memory), family=family, source=f"from {path}"
    )


def _choice(memory: MemoryChoice | str) -> MemoryChoice:
    return memory if isinstance(memory, MemoryChoice) else MemoryChoice(memory)


def native_size(pipeline: DiffusionPipeline) -> int:
    """The size a pipeline makes when asked none (FLUX's: the pipeline's own default)."""
    unet = getattr(pipeline, "unet", None)
    if unet is not None:
        return int(unet.config.sample_size * pipeline.vae_scale_factor)
    return int(pipeline.default_sample_size * pipeline.vae_scale_factor)


def is_flow(pipeline: Any) -> bool:
    """A flow-matching transformer pipeline (FLUX.1, SD 3.x) or one made from it."""
    return hasattr(pipeline, "transformer") and not hasattr(pipeline, "unet")


# The repository whose configs and tokenizer a family's single-file checkpoints need.
BASE_REPOS = {
    "sd1": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd2": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}


def load_single_file(
    path: Path,
    model_id: str,
    placement: Placement,
    *,
    family: str,
    config_dir: Path | None,
    memory: MemoryChoice | str = "auto",
) -> Loaded:
    """Load an original-layout .safetensors checkpoint, offline. Its configs and
    tokenizer come from `config_dir`: an installed diffusers model of the same family, or
    the family's base model in the Hugging Face cache. Without one, the error says what
    to install."""
    if config_dir is None:
        raise ModelLoadFailed(
            f"cannot load {model_id}: a single-file {FAMILY_NAMES.get(family, family)} "
            "checkpoint needs the configs and tokenizer of a diffusers model of its family, "
            f"and none is installed: run `alice-spool models pull {BASE_REPOS[family]}`",
            model=model_id,
        )
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    return _load_and_place(
        lambda plan: cls.from_single_file(
            str(path), **_options(cls, placement, plan, family), config=str(config_dir)
        ),
        model_id,
        placement,
        memory=_choice(memory),
        family=family,
        source=f"with the configs of {config_dir.name}",
    )


# A transformer file's pipeline, by its variant (a Kontext transformer is dev's shape:
# only an installed Kontext model's folder makes one a Kontext pipeline).
_TRANSFORMER_PIPELINES = {"fill": FluxFillPipeline}


def load_transformer_file(
    path: Path,
    model_id: str,
    placement: Placement,
    *,
    family: str,
    variant: str | None,
    base: Path | None,
    memory: MemoryChoice | str = "auto",
) -> Loaded:
    """Load a FLUX.1 or SD 3.x transformer from one file (.safetensors, or .gguf through
    diffusers' GGUF quantizer, dequantized layer by layer as it runs) with the other
    components of `base`: an installed diffusers model of the same family and variant,
    or the family's base repository in the Hugging Face cache. Without one, the error
    says which to install."""
    from ..library import transformer_files

    placement = for_family(placement, family)
    name = FAMILY_NAMES.get(family, family)
    if base is None:
        repository = transformer_files.base_repository(family, variant)
        raise ModelLoadFailed(
            f"cannot load {model_id}: a {name} transformer file runs with the text encoders, "
            f"VAE and configs of a {name} {variant or ''} model, and none is installed: run "
            f"`alice-spool models pull {repository}`".replace("  ", " "),
            model=model_id,
        )
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig, SD3Transformer2DModel

    model_class = FluxTransformer2DModel if family == "flux" else SD3Transformer2DModel

    def make(plan: MemoryPlan) -> DiffusionPipeline:
        options: dict[str, Any] = {
            "config": str(base),
            "subfolder": "transformer",
            "torch_dtype": placement.dtype,
            "local_files_only": True,
        }
        if path.suffix == ".gguf":
            options["quantization_config"] = GGUFQuantizationConfig(compute_dtype=placement.dtype)
        transformer = model_class.from_single_file(str(path), **options)
        index = json.loads((base / "model_index.json").read_text())
        cls = _TRANSFORMER_PIPELINES.get(variant or "") or _PIPELINES.get(
            index.get("_class_name", ""),
            FluxPipeline if family == "flux" else StableDiffusion3Pipeline,
        )
        loading = _options(cls, placement, plan, family)
        quantized = loading.get("quantization_config")
        if quantized is not None:  # the transformer is the file's: quantize the T5 only
            quantized.components_to_quantize = [
                part for part in quantized.components_to_quantize if part != "transformer"
            ]
        return cls.from_pretrained(base, transformer=transformer, **loading)

    return _load_and_place(
        make, model_id, placement, memory=_choice(memory), family=family,
        source=f"from {path.name} with the components of {base.name}",
    )  # fmt: skip


_DERIVED = {
    ("StableDiffusionPipeline", "img2img"): "StableDiffusionImg2ImgPipeline",
    ("StableDiffusionPipeline", "inpaint"): "StableDiffusionInpaintPipeline",
    ("StableDiffusionXLPipeline", "img2img"): "StableDiffusionXLImg2ImgPipeline",
    ("StableDiffusionXLPipeline", "inpaint"): "StableDiffusionXLInpaintPipeline",
    ("FluxPipeline", "img2img"): "FluxImg2ImgPipeline",
    ("FluxPipeline", "inpaint"): "FluxInpaintPipeline",
    ("StableDiffusion3Pipeline", "img2img"): "StableDiffusion3Img2ImgPipeline",
    ("StableDiffusion3Pipeline", "inpaint"): "StableDiffusion3InpaintPipeline",
}


# What a pipeline runs itself: a Kontext model's edit of an image, a Fill model's inpainting.
_RESIDENT_MODES = {("FluxKontextPipeline", "img2img"), ("FluxFillPipeline", "inpaint")}


def pipeline_for(loaded: Loaded, mode: str) -> Any:
    """The resident pipeline, or one for img2img or inpainting made from it (sharing
    its modules), kept with it for the next call."""
    if mode == "txt2img" or (type(loaded.pipeline).__name__, mode) in _RESIDENT_MODES:
        return loaded.pipeline
    derived = loaded.derived.get(mode)
    if derived is None:
        import diffusers

        name = _DERIVED.get((type(loaded.pipeline).__name__, mode))
        if name is None:
            raise InvalidParameters(f"{loaded.model_id} cannot do {mode}", field="init_image")
        # from_pipe casts the pipeline it makes, and so the modules it shares, to the
        # dtype it is given (float32 when none): a float16 model would stay in float32
        # for every later call. Given the model's, with each module's own put back (a
        # VAE kept in float32, its weights loaded in float16: the round trip is exact).
        dtypes = {
            part: module.dtype
            for part, module in loaded.pipeline.components.items()
            if isinstance(module, torch.nn.Module) and hasattr(module, "dtype")
        }
        derived = getattr(diffusers, name).from_pipe(loaded.pipeline, dtype=loaded.placement.dtype)
        for part, dtype in dtypes.items():
            module = getattr(loaded.pipeline, part)
            if module.dtype != dtype:
                module.to(dtype=dtype)
        derived.set_progress_bar_config(disable=True)
        loaded.derived[mode] = derived
    # The resident pipeline's current modules (a compiled UNet swaps in and out).
    if hasattr(loaded.pipeline, "unet"):
        derived.unet = loaded.pipeline.unet
    derived.vae = loaded.pipeline.vae
    return derived
