"""Loading a pipeline and running one batch of compatible jobs through it.

`generate` follows a diffusers pipeline's own shape: check everything first, then
prepare prompts, seeds and the scheduler, then denoise with a step callback (progress,
interrupt), then check and convert the images.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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
from PIL import Image
from transformers.utils import logging as transformers_logging

from ..errors import (
    GenerationFailed,
    GpuOutOfMemory,
    Interrupted,
    InvalidParameters,
    ModelLoadFailed,
    SpoolError,
)
from ..hires import check_hires, target_size
from ..memory_plan import MemoryChoice, MemoryPlan
from ..registry import FAMILY_NAMES
from ..spec import JobSpec
from . import caching
from .device import Placement, for_family
from .hires import two_passes
from .memory import (
    bitsandbytes_installed,
    cast_to_fp8,
    free_memory,
    place,
    quantization_config,
)
from .schedulers import a1111_schedule, flow_scheduler, make_scheduler

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]  # (step, total)
StopCheck = Callable[[], bool]

_PIPELINES = {
    "StableDiffusionPipeline": StableDiffusionPipeline,
    "StableDiffusionXLPipeline": StableDiffusionXLPipeline,
    "FluxPipeline": FluxPipeline,
    "FluxKontextPipeline": FluxKontextPipeline,
    "FluxFillPipeline": FluxFillPipeline,
    "StableDiffusion3Pipeline": StableDiffusion3Pipeline,
}
# FLUX.1's pipelines, as loaded from a folder (a dev or schnell, a Kontext, a Fill model).
_FLUX = (FluxPipeline, FluxKontextPipeline, FluxFillPipeline)


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
    from .. import transformer_files

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


@dataclass(frozen=True)
class JobImages:
    """The images of one job of a batch, in order, with the seed of each; or, when one
    of them came out broken (NaN, black), no images and the error."""

    images: list[Image.Image]
    seeds: list[int]
    error: SpoolError | None = None


@dataclass(frozen=True)
class BatchOutput:
    jobs: list[JobImages]
    width: int
    height: int
    seconds: float  # the whole pipeline call, for every image of the batch
    steps: int
    device: str  # e.g. "cuda:0 float16": recorded with each result
    memory_mode: str  # full | low | minimal: recorded with each result
    # The LoRAs the call ran with: [{"name", "scale", "sha256"}], recorded with each result.
    loras: list[dict[str, Any]] = field(default_factory=list)
    # The VAE it ran with in place of the model's own: {"name", "file_name", "sha256"}.
    vae: dict[str, Any] | None = None
    # The A1111 schedule type the (first) pass's scheduler followed, and a hires batch's
    # second pass's (`schedulers.a1111_schedule`; None: none to name).
    schedule: str | None = None
    hires_schedule: str | None = None
    # A hires batch's first pass's (width, height); its images are at the target size.
    first_size: tuple[int, int] | None = None
    # What guidance_scale was: `classifier-free` (SD, SD 3.x), FLUX.1's `distilled`
    # guidance, or `none` (FLUX.1 schnell); for the infotext.
    guidance: str = "classifier-free"
    cache: str = "none"  # the step cache the call ran with (runner.cache)

    @property
    def image_count(self) -> int:
        return sum(len(job.images) for job in self.jobs)


def steps_done(calls: int, total_calls: int, steps: int) -> tuple[int, int]:
    """(step, steps) after `calls` of a run's `total_calls` UNet calls for `steps` steps:
    the first call shows step 1, the last `steps`, never going back."""
    if total_calls <= 0 or steps <= 0:
        return calls, total_calls
    return min(steps, max(1, math.ceil(calls * steps / total_calls))), steps


def generate(
    loaded: Loaded,
    specs: Sequence[JobSpec],
    *,
    on_step: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    pad_to: int | None = None,
    oom_above: int | None = None,
    images: Sequence[Mapping[str, Image.Image]] | None = None,
    max_pixels: int | None = None,
) -> BatchOutput:
    """Run compatible jobs (equal `batch_key`s) as ONE pipeline call, one generator per
    image, so each image is the one its seed makes, alone or in company. `pad_to`: run
    the call at that many images (a compiled pipeline's batch size), dropping the extra.
    `oom_above` (fault injection, for tests): a call of more images runs out of memory.
    `images`: each job's inputs by role (`init_image`, `mask_image`), for img2img and
    inpainting jobs (their `mode` is part of the batch key: one mode per call). Hires
    jobs run in two passes (hires.py), their images at the target size, of at most
    `max_pixels` (generation.max_pixels; None: the spec's own limit)."""
    # 1. Check inputs, before any work.
    if not specs:
        raise InvalidParameters("a batch needs at least one job")
    first = specs[0]
    if any(spec.batch_key() != first.batch_key() for spec in specs):
        raise InvalidParameters(
            "the jobs of a batch must share model, size, steps, scheduler and guidance"
        )
    width = first.width or loaded.native_size
    height = first.height or loaded.native_size
    flow = is_flow(loaded.pipeline)
    multiple = loaded.pipeline.vae_scale_factor
    if isinstance(loaded.pipeline, _FLUX):
        multiple *= 2  # its latents are packed in 2x2 patches
    for name, size in (("width", width), ("height", height)):
        if size % multiple:
            raise InvalidParameters(
                f"{name} {size} is not a multiple of {multiple}, which this model needs", field=name
            )

    encoder = getattr(loaded.pipeline, "text_encoder", None)
    layers = encoder.config.num_hidden_layers if encoder is not None else 0
    if first.clip_skip is not None and first.clip_skip > layers:
        raise InvalidParameters(
            f"clip_skip {first.clip_skip}: {loaded.model_id}'s text encoder has {layers} layers",
            field="clip_skip",
        )

    mode = first.mode
    output_size = (width, height)  # the images'
    if first.hires is not None:
        if max_pixels is None:
            check_hires(first.hires, width, height, first.steps)
        else:
            check_hires(first.hires, width, height, first.steps, max_pixels=max_pixels)
        output_size = target_size(first.hires, width, height, multiple)
    if mode in ("img2img", "inpaint") and (images is None or len(images) != len(specs)):
        raise InvalidParameters(f"{mode} jobs need their input images", field="init_image")

    # 2. One prompt and one seed per image; for img2img and inpainting, its input and
    # mask at the output's size.
    prompts: list[str] = []
    negatives: list[str] = []
    seeds: list[int] = []
    inits: list[Image.Image] = []
    masks: list[Image.Image] = []
    for index, spec in enumerate(specs):
        image_seeds = spec.with_seed().image_seeds()
        seeds.extend(image_seeds)
        prompts.extend([spec.prompt] * len(image_seeds))
        negatives.extend([spec.negative_prompt] * len(image_seeds))
        if mode in ("img2img", "inpaint"):
            assert images is not None
            given = images[index]
            if "init_image" not in given or (mode == "inpaint" and "mask_image" not in given):
                raise InvalidParameters("a job's input image is missing", field="init_image")
            inits.extend([_fit(given["init_image"], width, height, "RGB")] * len(image_seeds))
            if mode == "inpaint":
                masks.extend([_fit(given["mask_image"], width, height, "L")] * len(image_seeds))

    real = len(seeds)
    if pad_to is not None and pad_to > real:  # filler images, made and thrown away
        extra = pad_to - real
        seeds.extend([0] * extra)
        prompts.extend([""] * extra)
        negatives.extend([""] * extra)
        inits.extend(inits[:1] * extra)
        masks.extend(masks[:1] * extra)

    # 3. The scheduler, and a CPU generator per image: the same latents on any device.
    # img2img and inpainting run a pipeline made from the resident one (`from_pipe`:
    # the same modules, no second copy of the weights).
    pipeline = _pipeline_for(loaded, "txt2img" if mode == "hires" else mode)
    if flow:
        pipeline.scheduler = flow_scheduler(first.scheduler, loaded.scheduler_config)
    else:
        pipeline.scheduler = make_scheduler(first.scheduler, loaded.scheduler_config, seeds)
    schedule = a1111_schedule(pipeline.scheduler)
    second_pass = _pipeline_for(loaded, "img2img") if mode == "hires" else None
    extra_arguments: dict[str, Any] = {}
    if first.clip_skip is not None:  # A1111 counts the last layer as 1, diffusers as 0
        _text_model_alias(loaded.pipeline)
        extra_arguments.update(clip_skip=first.clip_skip - 1)
    if mode in ("img2img", "inpaint"):
        extra_arguments.update(image=inits, strength=first.strength)
    if isinstance(pipeline, FluxKontextPipeline):
        # Kontext makes the size asked for (not as many pixels as 1024x1024 in its
        # aspect), and edits after the image as it is: at that size, not resized to its
        # preferred resolutions, and with no strength.
        extra_arguments.update(max_area=width * height)
        if mode == "img2img":
            extra_arguments.update(image=inits, _auto_resize=False)
            extra_arguments.pop("strength", None)
    if mode == "inpaint":
        extra_arguments.update(mask_image=masks)
    if first.max_sequence_length is not None:
        extra_arguments.update(max_sequence_length=first.max_sequence_length)
    negative = _negative_arguments(loaded.pipeline, first, negatives)  # (hires: its own)
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]

    # 4. Denoise, reporting each step and stopping at the next one when asked. Progress
    # counts the steps asked for: second-order schedulers (Heun, DPM++ SDE) call the UNet
    # about twice a step, and PNDM a few times more at its start. A hires job counts
    # both passes (`before`: the first pass's steps, while the second runs).
    def step_end_for(steps: int, before: int = 0, total: int = 0) -> Callable[..., Any]:
        def step_end(pipe: Any, index: int, _timestep: Any, tensors: dict[str, Any]) -> Any:
            if on_step is not None:
                # an img2img pass runs the end of its scheduler's timesteps
                calls = pipe.num_timesteps if total else len(pipe.scheduler.timesteps)
                done = steps_done(index + 1, calls, steps)[0]
                on_step(before + done, total or steps)
            if should_stop is not None and should_stop():
                raise Interrupted(f"stopped after step {before + index + 1}")
            return tensors

        return step_end

    started = time.perf_counter()
    out_of_memory = False
    try:
        if oom_above is not None and real > oom_above:
            _injected_out_of_memory(loaded, real, oom_above)
        with torch.inference_mode():
            if mode == "hires":
                assert second_pass is not None
                denoised = two_passes(
                    pipeline,
                    second_pass,
                    specs,
                    scheduler_config=loaded.scheduler_config,
                    width=width,
                    height=height,
                    prompts=prompts,
                    negatives=negatives,
                    seeds=seeds,
                    generators=generators,
                    step_end_for=step_end_for,
                    arguments=extra_arguments,
                )
            else:
                denoised = pipeline(
                    prompt=prompts,
                    **negative,
                    width=width,
                    height=height,
                    num_inference_steps=first.steps,
                    guidance_scale=first.guidance_scale,
                    generator=generators,
                    output_type="np",
                    callback_on_step_end=step_end_for(first.steps),
                    **extra_arguments,
                ).images
    except RuntimeError as exc:  # CUDA's OutOfMemoryError, MPS's plain RuntimeError
        if not _out_of_memory(exc):
            raise
        out_of_memory = True  # handled below, once this error (and its frames) are gone
    if out_of_memory:
        # The failed call's activations live in the frames of that error's traceback:
        # only now, outside the handler, can they be freed before anyone retries.
        _release_cached_memory(loaded)
        raise GpuOutOfMemory(
            f"out of GPU memory generating {len(seeds)} image(s) at "
            f"{output_size[0]}x{output_size[1]} on {loaded.placement.label}",
            images=real,
        )
    seconds = time.perf_counter() - started
    # (two_passes sets the second pass's scheduler even when strength 0 skips that pass)
    hires_schedule = a1111_schedule(second_pass.scheduler) if second_pass is not None else None

    # 5. Convert; a job with a broken image (NaN, black) fails alone.
    pixels, broken = _to_uint8(np.asarray(denoised)[:real])
    results: list[JobImages] = []
    position = 0
    for spec in specs:
        count = spec.n
        job_seeds = seeds[position : position + count]
        bad = [i for i in range(count) if broken[position + i]]
        if bad:
            reason = broken[position + bad[0]]
            error = GenerationFailed(f"image {bad[0] + 1} of the job {reason}")
            results.append(JobImages([], job_seeds, error))
        else:
            made = [Image.fromarray(pixels[position + i]) for i in range(count)]
            if mode == "inpaint":
                # Outside the mask, exactly the input's pixels (as A1111 does).
                made = [
                    Image.composite(image, inits[position + i], masks[position + i])
                    for i, image in enumerate(made)
                ]
            results.append(JobImages(made, job_seeds))
        position += count
    return BatchOutput(
        results,
        output_size[0],
        output_size[1],
        seconds,
        first.steps,
        device=loaded.placement.label,
        memory_mode=loaded.memory_mode,
        schedule=schedule,
        hires_schedule=hires_schedule,
        first_size=(width, height) if mode == "hires" else None,
        guidance=guidance_kind(loaded.pipeline),
        cache=loaded.cache,
    )


def guidance_kind(pipeline: DiffusionPipeline) -> str:
    """What a pipeline's guidance_scale is (BatchOutput.guidance)."""
    if not isinstance(pipeline, _FLUX):
        return "classifier-free"
    return "distilled" if pipeline.transformer.config.guidance_embeds else "none"


def _negative_arguments(
    resident: DiffusionPipeline, spec: JobSpec, negatives: list[str]
) -> dict[str, Any]:
    """The negative prompts, as the pipeline takes them. FLUX.1's guidance is distilled:
    it runs them only with true CFG (`true_cfg_scale`), which the door asks for when a
    request has one (registry.for_family); an empty negative prompt is its unconditional
    pass then, as classifier-free guidance's is."""
    if isinstance(resident, FluxFillPipeline):
        return {}
    if isinstance(resident, _FLUX):
        if spec.true_cfg_scale is None:
            return {}
        return {"negative_prompt": negatives, "true_cfg_scale": spec.true_cfg_scale}
    return {"negative_prompt": negatives}


def _fit(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """An input at the output's size (resized, as A1111 does, when it differs)."""
    image = image.convert(mode)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


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


def _pipeline_for(loaded: Loaded, mode: str) -> Any:
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


def _text_model_alias(pipeline: Any) -> None:
    """Diffusers' clip skip for SD reads `text_encoder.text_model.final_layer_norm`,
    where transformers 4's CLIPTextModel had it; transformers 5's has its layers at
    the top. The encoder stands for its own `text_model` (outside the module tree)."""
    encoder = getattr(pipeline, "text_encoder", None)
    if encoder is None or hasattr(encoder, "text_model"):
        return
    if hasattr(encoder, "final_layer_norm"):
        object.__setattr__(encoder, "text_model", encoder)


def _out_of_memory(exc: RuntimeError) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


# The memory an injected out-of-memory error held, for tests to see it freed.
injected_ballast: weakref.ref[torch.Tensor] | None = None


def _injected_out_of_memory(loaded: Loaded, images: int, limit: int) -> None:
    """Fail as a real call that runs out of memory does: holding memory when it raises
    (a tensor in this frame, as activations are in the pipeline's)."""
    global injected_ballast
    ballast = torch.empty(images, 4, 64, 64, device=loaded.placement.device)
    injected_ballast = weakref.ref(ballast)
    raise torch.cuda.OutOfMemoryError(f"injected: more than {limit} images per call")


def _release_cached_memory(loaded: Loaded) -> None:
    """After an out-of-memory error: give the allocator's cache back before a retry."""
    gc.collect()
    if loaded.placement.device.type == "cuda":
        torch.cuda.empty_cache()
    elif loaded.placement.device.type == "mps":
        torch.mps.empty_cache()


def _to_uint8(arrays: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
    """float images in [0, 1] -> uint8, and for each image what is wrong with it, if
    anything: NaN or all-black images are failures, not results."""
    flat = arrays.reshape(len(arrays), -1)
    finite = np.isfinite(flat).all(axis=1)
    pixels = (np.nan_to_num(arrays) * 255).round().clip(0, 255).astype(np.uint8)
    brightest = pixels.reshape(len(pixels), -1).max(axis=1)
    broken: list[str | None] = []
    for ok, top in zip(finite, brightest, strict=True):
        if not ok:
            broken.append("contains NaN or infinite values")
        elif top <= 1:
            broken.append("came out black")
        else:
            broken.append(None)
    return pixels, broken
