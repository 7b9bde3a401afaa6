"""What a batch makes: each job's images (converted, a job with a NaN or black image failed
alone) and the batch's record (size, time, device, schedule, guidance, ...)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..errors import GenerationFailed, SpoolError
from ..spec import JobSpec


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


def job_images(
    specs: Sequence[JobSpec],
    arrays: np.ndarray,
    seeds: list[int],
    *,
    inits: list[Image.Image],
    masks: list[Image.Image] | None,
) -> list[JobImages]:
    """Each job's images from the call's (floats in [0, 1], the jobs' images in order,
    no filler); a job with a broken image (NaN, black) fails alone. An inpainting job's
    (`masks`) keeps exactly its input's pixels outside the mask, as A1111 does."""
    pixels, broken = to_uint8(arrays)
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
            if masks is not None:
                made = [
                    Image.composite(image, inits[position + i], masks[position + i])
                    for i, image in enumerate(made)
                ]
            results.append(JobImages(made, job_seeds))
        position += count
    return results


def to_uint8(arrays: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
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
