"""Running one batch of compatible jobs through a loaded pipeline (loading.py loads it).

`generate` follows a diffusers pipeline's own shape: check everything first, then
prepare prompts, seeds and the scheduler, then denoise with a step callback (progress,
interrupt), then check and convert the images (outputs.py).
"""

from __future__ import annotations

import gc
import math
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, FluxFillPipeline, FluxKontextPipeline
from PIL import Image

from ..errors import GpuOutOfMemory, Interrupted, InvalidParameters
from ..hires import check_hires, target_size
from ..memory_plan import MemoryChoice
from ..spec import JobSpec
from .hires import two_passes
from .loading import (
    BASE_REPOS,
    FLUX_PIPELINES,
    Loaded,
    is_flow,
    load,
    load_single_file,
    load_transformer_file,
    native_size,
    pipeline_for,
    quiet_libraries,
)
from .outputs import BatchOutput, JobImages, job_images
from .schedulers import a1111_schedule, flow_scheduler, make_scheduler

# This module's own names, and what other modules import from here of loading.py's and
# outputs.py's (MemoryChoice: the class a test patches, through this module).
__all__ = [
    "BASE_REPOS",
    "BatchOutput",
    "JobImages",
    "Loaded",
    "MemoryChoice",
    "ProgressCallback",
    "StopCheck",
    "generate",
    "guidance_kind",
    "load",
    "load_single_file",
    "load_transformer_file",
    "native_size",
    "quiet_libraries",
    "steps_done",
]

ProgressCallback = Callable[[int, int], None]  # (step, total)
StopCheck = Callable[[], bool]
# (steps of the pass, steps reported before it, steps of both) -> a diffusers step callback
StepEndFor = Callable[..., Callable[..., Any]]


@dataclass
class _Images:
    """The call's images, one entry each: prompt, negative prompt, seed; for img2img and
    inpainting, its input and mask at the output's size. The first `real` were asked
    for; the rest fill the call up to its batch size (made and thrown away)."""

    prompts: list[str] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    inits: list[Image.Image] = field(default_factory=list)
    masks: list[Image.Image] = field(default_factory=list)
    real: int = 0


@dataclass
class _Call:
    """The pipeline call, ready to run."""

    pipeline: Any  # the resident pipeline, or one made from it for the mode
    second_pass: Any | None  # a hires batch's img2img pipeline
    schedule: str | None  # the A1111 schedule type its scheduler follows
    width: int
    height: int
    arguments: dict[str, Any]  # the mode's: input images, strength, clip skip, T5 length
    negative: dict[str, Any]  # the negative prompts, as the pipeline takes them
    generators: list[torch.Generator]
    step_end_for: StepEndFor


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
    width, height, output_size = _check_inputs(loaded, specs, images, max_pixels)
    first = specs[0]
    # 2. One prompt and one seed per image; for img2img and inpainting, its input and
    # mask at the output's size.
    batch = _per_image(specs, images, width, height, pad_to)
    # 3. The scheduler, and a CPU generator per image: the same latents on any device.
    step_end_for = _step_callbacks(on_step, should_stop)
    call = _prepare(loaded, first, batch, width, height, step_end_for)
    # 4. Denoise, reporting each step and stopping at the next one when asked.
    started = time.perf_counter()
    denoised = _denoise(loaded, specs, call, batch, output_size=output_size, oom_above=oom_above)
    seconds = time.perf_counter() - started
    # (two_passes sets the second pass's scheduler even when strength 0 skips that pass)
    second = call.second_pass
    hires_schedule = a1111_schedule(second.scheduler) if second is not None else None
    # 5. Convert; a job with a broken image (NaN, black) fails alone.
    masks = batch.masks if first.mode == "inpaint" else None
    results = job_images(specs, denoised[: batch.real], batch.seeds, inits=batch.inits, masks=masks)
    return BatchOutput(
        results,
        output_size[0],
        output_size[1],
        seconds,
        first.steps,
        device=loaded.placement.label,
        memory_mode=loaded.memory_mode,
        schedule=call.schedule,
        hires_schedule=hires_schedule,
        first_size=(width, height) if first.mode == "hires" else None,
        guidance=guidance_kind(loaded.pipeline),
        cache=loaded.cache,
    )


def _check_inputs(
    loaded: Loaded,
    specs: Sequence[JobSpec],
    images: Sequence[Mapping[str, Image.Image]] | None,
    max_pixels: int | None,
) -> tuple[int, int, tuple[int, int]]:
    """(width, height) of the call, and the size of its images (a hires batch's target);
    a 400 for what this model cannot run."""
    if not specs:
        raise InvalidParameters("a batch needs at least one job")
    first = specs[0]
    if any(spec.batch_key() != first.batch_key() for spec in specs):
        raise InvalidParameters(
            "the jobs of a batch must share model, size, steps, scheduler and guidance"
        )
    width = first.width or loaded.native_size
    height = first.height or loaded.native_size
    multiple = loaded.pipeline.vae_scale_factor
    if isinstance(loaded.pipeline, FLUX_PIPELINES):
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
    return width, height, output_size


def _per_image(
    specs: Sequence[JobSpec],
    images: Sequence[Mapping[str, Image.Image]] | None,
    width: int,
    height: int,
    pad_to: int | None,
) -> _Images:
    """Each image's prompts and seed (and input and mask), filled up to `pad_to`."""
    mode = specs[0].mode
    batch = _Images()
    for index, spec in enumerate(specs):
        image_seeds = spec.with_seed().image_seeds()
        batch.seeds.extend(image_seeds)
        batch.prompts.extend([spec.prompt] * len(image_seeds))
        batch.negatives.extend([spec.negative_prompt] * len(image_seeds))
        if mode in ("img2img", "inpaint"):
            assert images is not None
            given = images[index]
            if "init_image" not in given or (mode == "inpaint" and "mask_image" not in given):
                raise InvalidParameters("a job's input image is missing", field="init_image")
            init = _fit(given["init_image"], width, height, "RGB")
            batch.inits.extend([init] * len(image_seeds))
            if mode == "inpaint":
                mask = _fit(given["mask_image"], width, height, "L")
                batch.masks.extend([mask] * len(image_seeds))

    batch.real = len(batch.seeds)
    if pad_to is not None and pad_to > batch.real:  # filler images, made and thrown away
        extra = pad_to - batch.real
        batch.seeds.extend([0] * extra)
        batch.prompts.extend([""] * extra)
        batch.negatives.extend([""] * extra)
        batch.inits.extend(batch.inits[:1] * extra)
        batch.masks.extend(batch.masks[:1] * extra)
    return batch


def _prepare(
    loaded: Loaded,
    first: JobSpec,
    batch: _Images,
    width: int,
    height: int,
    step_end_for: StepEndFor,
) -> _Call:
    """The pipeline with its scheduler set, and what it is called with. img2img and
    inpainting run a pipeline made from the resident one (`from_pipe`: the same modules,
    no second copy of the weights)."""
    mode = first.mode
    pipeline = pipeline_for(loaded, "txt2img" if mode == "hires" else mode)
    if is_flow(loaded.pipeline):
        pipeline.scheduler = flow_scheduler(first.scheduler, loaded.scheduler_config)
    else:
        pipeline.scheduler = make_scheduler(first.scheduler, loaded.scheduler_config, batch.seeds)
    schedule = a1111_schedule(pipeline.scheduler)
    second_pass = pipeline_for(loaded, "img2img") if mode == "hires" else None
    arguments = _arguments(loaded, pipeline, first, batch, width, height)
    negative = _negative_arguments(loaded.pipeline, first, batch.negatives)  # (hires: its own)
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in batch.seeds]
    return _Call(
        pipeline, second_pass, schedule, width, height, arguments, negative, generators,
        step_end_for,
    )  # fmt: skip


def _arguments(
    loaded: Loaded, pipeline: Any, first: JobSpec, batch: _Images, width: int, height: int
) -> dict[str, Any]:
    """What the call takes for the batch's mode and options, besides prompts, size,
    steps and guidance."""
    mode = first.mode
    arguments: dict[str, Any] = {}
    if first.clip_skip is not None:  # A1111 counts the last layer as 1, diffusers as 0
        _text_model_alias(loaded.pipeline)
        arguments.update(clip_skip=first.clip_skip - 1)
    if mode in ("img2img", "inpaint"):
        arguments.update(image=batch.inits, strength=first.strength)
    if isinstance(pipeline, FluxKontextPipeline):
        # Kontext makes the size asked for (not as many pixels as 1024x1024 in its
        # aspect), and edits after the image as it is: at that size, not resized to its
        # preferred resolutions, and with no strength.
        arguments.update(max_area=width * height)
        if mode == "img2img":
            arguments.update(image=batch.inits, _auto_resize=False)
            arguments.pop("strength", None)
    if mode == "inpaint":
        arguments.update(mask_image=batch.masks)
    if first.max_sequence_length is not None:
        arguments.update(max_sequence_length=first.max_sequence_length)
    return arguments


def _step_callbacks(on_step: ProgressCallback | None, should_stop: StopCheck | None) -> StepEndFor:
    """Each pass's step callback: progress counts the steps asked for (second-order
    schedulers, Heun and DPM++ SDE, call the UNet about twice a step, and PNDM a few
    times more at its start); a hires job counts both passes (`before`: the first
    pass's steps, while the second runs). The next step stops when asked."""

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

    return step_end_for


def _denoise(
    loaded: Loaded,
    specs: Sequence[JobSpec],
    call: _Call,
    batch: _Images,
    *,
    output_size: tuple[int, int],
    oom_above: int | None,
) -> np.ndarray:
    """The call's images (floats in [0, 1]); `gpu_out_of_memory` when it runs out, the
    memory it held given back first."""
    try:
        if oom_above is not None and batch.real > oom_above:
            _injected_out_of_memory(loaded, batch.real, oom_above)
        with torch.inference_mode():
            return np.asarray(_run(loaded, specs, call, batch))
    except RuntimeError as exc:  # CUDA's OutOfMemoryError, MPS's plain RuntimeError
        if not _out_of_memory(exc):
            raise
    # Out of memory. The failed call's activations live in the frames of that error's
    # traceback: only now, outside the handler, can they be freed before anyone retries.
    _release_cached_memory(loaded)
    raise GpuOutOfMemory(
        f"out of GPU memory generating {len(batch.seeds)} image(s) at "
        f"{output_size[0]}x{output_size[1]} on {loaded.placement.label}",
        images=batch.real,
    )


def _run(loaded: Loaded, specs: Sequence[JobSpec], call: _Call, batch: _Images) -> Any:
    """One pipeline call for the whole batch, or a hires batch's two passes."""
    first = specs[0]
    if call.second_pass is not None:
        return two_passes(
            call.pipeline,
            call.second_pass,
            specs,
            scheduler_config=loaded.scheduler_config,
            width=call.width,
            height=call.height,
            prompts=batch.prompts,
            negatives=batch.negatives,
            seeds=batch.seeds,
            generators=call.generators,
            step_end_for=call.step_end_for,
            arguments=call.arguments,
        )
    return call.pipeline(
        prompt=batch.prompts,
        **call.negative,
        width=call.width,
        height=call.height,
        num_inference_steps=first.steps,
        guidance_scale=first.guidance_scale,
        generator=call.generators,
        output_type="np",
        callback_on_step_end=call.step_end_for(first.steps),
        **call.arguments,
    ).images


def steps_done(calls: int, total_calls: int, steps: int) -> tuple[int, int]:
    """(step, steps) after `calls` of a run's `total_calls` UNet calls for `steps` steps:
    the first call shows step 1, the last `steps`, never going back."""
    if total_calls <= 0 or steps <= 0:
        return calls, total_calls
    return min(steps, max(1, math.ceil(calls * steps / total_calls))), steps


def guidance_kind(pipeline: DiffusionPipeline) -> str:
    """What a pipeline's guidance_scale is (BatchOutput.guidance)."""
    if not isinstance(pipeline, FLUX_PIPELINES):
        return "classifier-free"
    return "distilled" if pipeline.transformer.config.guidance_embeds else "none"


def _negative_arguments(
    resident: DiffusionPipeline, spec: JobSpec, negatives: list[str]
) -> dict[str, Any]:
    """The negative prompts, as the pipeline takes them. FLUX.1's guidance is distilled:
    it runs them only with true CFG (`true_cfg_scale`), which the door asks for when a
    request has one (family_rules.for_family); an empty negative prompt is its unconditional
    pass then, as classifier-free guidance's is."""
    if isinstance(resident, FluxFillPipeline):
        return {}
    if isinstance(resident, FLUX_PIPELINES):
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
