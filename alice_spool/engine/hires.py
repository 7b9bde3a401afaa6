"""The two passes of a hires batch: the first pass for every image, the upscale (of
the latents, or of the decoded images), then one img2img call at the target size."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.utils.torch_utils import get_module_execution_device
from PIL import Image

from ..hires import HiresFix, cover_size, img2img_steps, second_pass_steps, target_size, upscaler
from ..spec import JobSpec
from .schedulers import make_scheduler

# (steps of the pass, steps reported before it, steps of both) -> a diffusers step callback
StepEndFor = Callable[[int, int, int], Callable[..., dict[str, Any]]]


def two_passes(
    first_pass: Any,
    second_pass: Any,
    specs: Sequence[JobSpec],
    *,
    scheduler_config: Any,
    width: int,
    height: int,
    prompts: list[str],
    negatives: list[str],
    seeds: list[int],
    generators: list[torch.Generator],
    step_end_for: StepEndFor,
    arguments: dict[str, Any],
) -> np.ndarray:
    """Run a batch of hires jobs (equal `batch_key`s) whose first pass is `width` x
    `height`: `first_pass` (txt2img, its scheduler set) for every image, the upscale,
    then `second_pass` (img2img made from it) once. Each image's second pass has a
    generator of its own seed, so an image is the same alone or in company. Returns
    the images as floats in [0, 1], at the target size. `arguments`: for both calls."""
    first = specs[0]
    hires = first.hires
    assert hires is not None
    run = second_pass_steps(hires, first.steps)
    total = first.steps + run
    latent = upscaler(hires.upscaler).latent

    # 1. The first pass: latents for a latent upscaler, else images.
    output = first_pass(
        prompt=prompts,
        negative_prompt=negatives,
        width=width,
        height=height,
        num_inference_steps=first.steps,
        guidance_scale=first.guidance_scale,
        generator=generators,
        output_type="latent" if latent else "np",
        callback_on_step_end=step_end_for(first.steps, 0, total),
        **arguments,
    )

    # 2. The upscale, cropped to the target's middle when its aspect differs.
    image = _upscale(output.images, hires, (width, height), first_pass.vae_scale_factor)
    del output
    # Set even when there is no second pass: the batch reports its schedule type.
    second_pass.scheduler = make_scheduler(
        hires.scheduler or first.scheduler, scheduler_config, seeds
    )
    if run == 0:  # strength 0: the upscale is the image
        return _as_arrays(first_pass, image, latent)

    # 3. The second pass: img2img at the target size, with exactly `run` steps.
    callback = step_end_for(run, first.steps, total)
    return _second_pass(second_pass, specs, image, seeds, run, callback, arguments)


def _upscale(images: Any, hires: HiresFix, size: tuple[int, int], multiple: int) -> Any:
    """The first pass's latents (a latent upscaler's) or images, upscaled to cover the
    target size and cropped to the target's middle when its aspect differs."""
    cover = cover_size(hires, size[0], size[1], multiple)
    target = target_size(hires, size[0], size[1], multiple)
    chosen = upscaler(hires.upscaler)
    if chosen.latent:
        assert chosen.mode is not None
        latents = torch.nn.functional.interpolate(
            images,
            size=(cover[1] // multiple, cover[0] // multiple),
            mode=chosen.mode,
            antialias=chosen.antialias,
        )
        top, left = _offsets(cover, target, multiple)
        return latents[:, :, top : top + target[1] // multiple, left : left + target[0] // multiple]
    return [
        _crop(upscale_image(picture, chosen.name, cover), target, multiple)
        for picture in _pictures(np.asarray(images))
    ]


def _second_pass(
    second_pass: Any,
    specs: Sequence[JobSpec],
    image: Any,
    seeds: list[int],
    run: int,
    callback: Callable[..., dict[str, Any]],
    arguments: dict[str, Any],
) -> np.ndarray:
    """img2img of the upscaled images, `run` steps at the hires strength, each image
    with a generator of its own seed."""
    first = specs[0]
    hires = first.hires
    assert hires is not None
    second_prompts, second_negatives = _second_prompts(specs, hires, len(seeds))
    output = second_pass(
        prompt=second_prompts,
        negative_prompt=second_negatives,
        image=image,
        strength=hires.strength,
        num_inference_steps=img2img_steps(run, hires.strength),
        guidance_scale=first.guidance_scale,
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
        output_type="np",
        callback_on_step_end=callback,
        **arguments,
    )
    return np.asarray(output.images)


def _as_arrays(pipeline: Any, image: Any, latent: bool) -> np.ndarray:
    """Upscaled latents decoded (as the pipeline decodes its own), or upscaled images,
    as floats in [0, 1]."""
    if not latent:
        return np.stack([np.asarray(picture, dtype=np.float32) / 255 for picture in image])
    return np.asarray(
        pipeline.image_processor.postprocess(decode(pipeline, image), output_type="np")
    )


def decode(pipeline: Any, latents: torch.Tensor) -> torch.Tensor:
    """Latents decoded as the pipeline decodes its own: SDXL's in float32 when its VAE
    asks for it (`force_upcast`: SDXL's VAE overflows to NaN in float16) and denormalised
    with the VAE's `latents_mean` and `latents_std` when it has them; the VAE is left in
    its own dtype."""
    vae = pipeline.vae
    own_dtype = vae.dtype
    sdxl = isinstance(pipeline, StableDiffusionXLPipeline)
    upcast = sdxl and own_dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", 0))
    mean = getattr(vae.config, "latents_mean", None) if sdxl else None
    std = getattr(vae.config, "latents_std", None) if sdxl else None
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        latents = latents.to(get_module_execution_device(vae), vae.dtype)
        if mean is not None and std is not None:
            channels = (1, latents.shape[1], 1, 1)
            scale = torch.tensor(std).view(channels).to(latents.device, latents.dtype)
            shift = torch.tensor(mean).view(channels).to(latents.device, latents.dtype)
            latents = latents * scale / vae.config.scaling_factor + shift
        else:
            latents = latents / vae.config.scaling_factor
        return vae.decode(latents, return_dict=False)[0]
    finally:
        if upcast:
            vae.to(dtype=own_dtype)


def upscale_image(picture: Image.Image, name: str, size: tuple[int, int]) -> Image.Image:
    """An image upscaler of A1111's: "None" resizes with Lanczos; "Lanczos" and
    "Nearest" scale by the larger ratio with their filter, then Lanczos to the size."""
    if name == "None":
        return picture.resize(size, Image.Resampling.LANCZOS)
    scale = max(size[0] / picture.width, size[1] / picture.height)
    filtered = Image.Resampling.NEAREST if name == "Nearest" else Image.Resampling.LANCZOS
    if scale > 1:
        picture = picture.resize(
            (int(picture.width * scale), int(picture.height * scale)), filtered
        )
    if picture.size != size:
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    return picture


def _pictures(arrays: np.ndarray) -> list[Image.Image]:
    """float images in [0, 1] -> RGB images, as A1111 hands them to an upscaler."""
    pixels = (np.nan_to_num(arrays).clip(0, 1) * 255).astype(np.uint8)
    return [Image.fromarray(array) for array in pixels]


def _offsets(cover: tuple[int, int], target: tuple[int, int], multiple: int) -> tuple[int, int]:
    """(top, left), in latent cells, of the target's middle within the cover size."""
    return (
        (cover[1] - target[1]) // multiple // 2,
        (cover[0] - target[0]) // multiple // 2,
    )


def _crop(picture: Image.Image, target: tuple[int, int], multiple: int) -> Image.Image:
    if picture.size == target:
        return picture
    top, left = (cells * multiple for cells in _offsets(picture.size, target, multiple))
    return picture.crop((left, top, left + target[0], top + target[1]))


def _second_prompts(
    specs: Sequence[JobSpec], hires: HiresFix, images: int
) -> tuple[list[str], list[str]]:
    """Each image's prompts for the second pass: the hires ones, else its job's
    (the batch's fillers: empty)."""
    prompts: list[str] = []
    negatives: list[str] = []
    for spec in specs:
        own = spec.hires or hires
        prompts.extend([own.prompt or spec.prompt] * spec.n)
        negatives.extend([own.negative_prompt or spec.negative_prompt] * spec.n)
    extra = images - len(prompts)
    return prompts + [""] * extra, negatives + [""] * extra
