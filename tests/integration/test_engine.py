"""The real diffusers pipeline on the tiny model, on the CPU: every scheduler runs, seeds
reproduce bit for bit, a batch matches its jobs run one by one, steps are reported and
a stop request is honoured, broken images are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from alice_spool.engine import generate as generate_module
from alice_spool.engine.device import choose
from alice_spool.engine.generate import Loaded, generate, load, steps_done
from alice_spool.engine.tiny import create_tiny
from alice_spool.errors import GenerationFailed, GpuOutOfMemory, Interrupted, InvalidParameters
from alice_spool.library.registry import TINY_MARKER as MARKER
from alice_spool.spec import JobSpec, parse_spec

# The names the server has always had (every sampler with every schedule type runs in
# test_sampler_schedules.py).
SCHEDULERS = (
    *("euler", "euler_a", "ddim", "pndm", "lms", "heun"),
    *("dpm++_2m", "dpm++_2m_karras", "dpm++_sde", "dpm++_sde_karras", "unipc"),
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_tiny(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> Loaded:
    return load(tiny_dir, "sd/tiny", choose("cpu"))


def spec(**fields: object) -> JobSpec:
    return parse_spec({"prompt": "a lighthouse", "steps": 3, "seed": 7, **fields})


def pixels(image: object) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def test_create_tiny_writes_a_complete_marked_pipeline(tiny_dir: Path, tmp_path: Path) -> None:
    names = sorted(p.name for p in tiny_dir.iterdir())
    assert names == ["model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae"]
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and MARKER in index
    assert (tiny_dir / "tokenizer" / "tokenizer_config.json").exists()
    assert sum(f.stat().st_size for f in tiny_dir.rglob("*") if f.is_file()) < 10_000_000
    with pytest.raises(InvalidParameters, match="already exists"):
        create_tiny(tiny_dir.parent)
    again = create_tiny(tmp_path, "tiny2")
    for part in ("unet", "vae", "text_encoder"):
        first = tiny_dir / part / "diffusion_pytorch_model.safetensors"
        first = first if first.exists() else tiny_dir / part / "model.safetensors"
        second = again / first.relative_to(tiny_dir)
        assert first.read_bytes() == second.read_bytes()  # fixed-seed weights: identical


def test_the_tiny_model_has_the_sd_shape(tiny: Loaded) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    assert tiny.native_size == 64
    assert tiny.pipeline.vae_scale_factor == 8  # latents are 1/8 of the image, as in SD
    assert tiny.placement.dtype is torch.float32
    processors = set(map(type, tiny.pipeline.unet.attn_processors.values()))
    assert processors == {AttnProcessor2_0}  # PyTorch's scaled-dot-product attention
    output = generate(tiny, [spec()])
    assert (output.device, output.memory_mode) == ("cpu float32", "full")


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_runs_reproduces_and_batches(tiny: Loaded, name: str) -> None:
    alone = generate(tiny, [spec(scheduler=name)])
    assert (alone.width, alone.height, alone.image_count) == (64, 64, 1)
    image = alone.jobs[0].images[0]
    assert image.size == (64, 64) and image.mode == "RGB"
    again = generate(tiny, [spec(scheduler=name)]).jobs[0].images[0]
    assert np.array_equal(pixels(image), pixels(again))  # the same way twice: bit for bit
    other = spec(scheduler=name, prompt="a dog in the rain", seed=99, n=2)
    batch = generate(tiny, [other, spec(scheduler=name)])
    assert [len(job.images) for job in batch.jobs] == [2, 1]
    assert batch.jobs[0].seeds == [99, 100] and batch.jobs[1].seeds == [7]
    # In company, the image differs from the one made alone by at most 2/255 per pixel.
    assert np.abs(pixels(batch.jobs[1].images[0]) - pixels(image)).max() <= 2
    first, second = (pixels(i) for i in batch.jobs[0].images)
    assert not np.array_equal(first, second)


def test_four_seeds_give_four_different_images(tiny: Loaded) -> None:
    jobs = [spec(seed=s) for s in (1, 2, 3, 4)]
    images = [pixels(job.images[0]) for job in generate(tiny, jobs).jobs]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(images[i], images[j])


def test_progress_sees_every_step(tiny: Loaded) -> None:
    seen: list[tuple[int, int]] = []
    generate(tiny, [spec(steps=5, scheduler="euler")], on_step=lambda s, t: seen.append((s, t)))
    assert seen == [(step, 5) for step in range(1, 6)]


@pytest.mark.parametrize("name", ["heun", "dpm++_sde", "dpm++_sde_karras", "pndm"])
def test_progress_counts_the_steps_asked_for_not_unet_calls(tiny: Loaded, name: str) -> None:
    """10 steps of DPM++ SDE are 19 UNet calls: progress still ends at 10/10."""
    seen: list[tuple[int, int]] = []
    generate(tiny, [spec(steps=10, scheduler=name)], on_step=lambda s, t: seen.append((s, t)))
    assert len(seen) > 10  # more calls than steps with these schedulers
    assert {total for _, total in seen} == {10}
    steps = [step for step, _ in seen]
    assert steps[0] == 1 and steps[-1] == 10
    assert steps == sorted(steps) and set(steps) == set(range(1, 11))


def test_steps_done() -> None:
    assert [steps_done(c, 19, 10)[0] for c in range(1, 20)] == [
        1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10
    ]  # fmt: skip
    assert steps_done(3, 5, 5) == (3, 5)
    assert steps_done(4, 0, 0) == (4, 0)  # nothing known: as reported


def test_a_stop_request_interrupts_at_the_next_step(tiny: Loaded) -> None:
    seen: list[int] = []
    with pytest.raises(Interrupted, match="after step 2"):
        generate(
            tiny,
            [spec(steps=20, scheduler="euler")],
            on_step=lambda step, _total: seen.append(step),
            should_stop=lambda: len(seen) >= 2,
        )
    assert seen == [1, 2]
    assert generate(tiny, [spec()]).image_count == 1  # the pipeline is fine afterwards


def test_incompatible_jobs_and_bad_sizes_fail_before_any_work(tiny: Loaded) -> None:
    calls: list[int] = []
    with pytest.raises(InvalidParameters, match="must share"):
        generate(tiny, [spec(), spec(steps=4)], on_step=lambda s, t: calls.append(s))
    with pytest.raises(InvalidParameters, match="at least one"):
        generate(tiny, [])
    assert calls == []
    # A size the spec allows (a multiple of 8) but this model cannot do is refused.
    tiny.pipeline.vae_scale_factor = 16
    try:
        with pytest.raises(InvalidParameters, match="multiple of 16"):
            generate(tiny, [spec(width=72, height=64)], on_step=lambda s, t: calls.append(s))
    finally:
        tiny.pipeline.vae_scale_factor = 8
    assert calls == []


def test_nan_and_black_images_are_failures(tiny_dir: Path) -> None:
    broken = load(tiny_dir, "sd/tiny", choose("cpu"))
    conv_out = broken.pipeline.vae.decoder.conv_out
    with torch.no_grad():
        conv_out.weight.zero_()
        conv_out.bias.fill_(-50.0)  # every pixel far below black
    (job,) = generate(broken, [spec()]).jobs
    assert job.images == [] and isinstance(job.error, GenerationFailed)
    assert "black" in job.error.message
    with torch.no_grad():
        conv_out.bias.fill_(float("nan"))
    (job,) = generate(broken, [spec()]).jobs
    assert job.images == [] and "NaN" in str(job.error)


def test_a_broken_image_fails_only_its_own_job(tiny: Loaded) -> None:
    """NaN in the second image of a three-image batch: its job fails, the others keep
    their images."""

    def poison_second(_module: Any, _inputs: Any, output: Any) -> Any:
        output[1].fill_(float("nan"))
        return output

    hook = tiny.pipeline.vae.decoder.register_forward_hook(poison_second)
    try:
        out = generate(tiny, [spec(seed=1), spec(seed=2, n=2)])
    finally:
        hook.remove()
    first, second = out.jobs
    assert first.error is None and len(first.images) == 1
    assert second.images == [] and isinstance(second.error, GenerationFailed)
    assert second.error.message == "image 1 of the job contains NaN or infinite values"
    assert second.seeds == [2, 3]


def test_out_of_memory_becomes_gpu_out_of_memory(tiny: Loaded) -> None:
    assert len(generate(tiny, [spec(n=2)], oom_above=2).jobs[0].images) == 2
    with pytest.raises(GpuOutOfMemory, match="3 image") as caught:
        generate(tiny, [spec(n=3)], oom_above=2)
    assert caught.value.code == "gpu_out_of_memory" and caught.value.details["images"] == 3
    # It does not carry the failed call's frames (and the memory they hold) along.
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert generate_module.injected_ballast is not None
    assert generate_module.injected_ballast() is None  # freed before anyone retries


def test_an_sdxl_shaped_pipeline(tmp_path: Path) -> None:
    from alice_spool.library.registry import ModelRegistry

    path = create_tiny(tmp_path, "xl", family="sdxl")
    (info,) = ModelRegistry(tmp_path).scan()
    assert (info.id, info.family, info.native_size, info.ok) == ("sd/xl", "sdxl", 64, True)
    xl = load(path, "sd/xl", choose("cpu"), family="sdxl")
    assert type(xl.pipeline).__name__ == "StableDiffusionXLPipeline"
    alone = generate(xl, [spec(scheduler="euler_a")]).jobs[0].images[0]
    again = generate(xl, [spec(scheduler="euler_a")]).jobs[0].images[0]
    assert np.array_equal(pixels(alone), pixels(again))
    batch = generate(xl, [spec(scheduler="euler_a", seed=1, n=2), spec(scheduler="euler_a")])
    assert np.abs(pixels(batch.jobs[1].images[0]) - pixels(alone)).max() <= 2
    with pytest.raises(InvalidParameters, match="no tiny model of family"):
        create_tiny(tmp_path, "sd2", family="sd2")


def test_a_model_deleted_while_loaded_is_unloaded_when_asked(tmp_path: Path) -> None:
    from alice_spool.engine.device import choose
    from alice_spool.engine.resident import Engine
    from alice_spool.library import removal
    from alice_spool.library.registry import ModelRegistry

    create_tiny(tmp_path, "kept")
    create_tiny(tmp_path, "doomed")
    registry = ModelRegistry(tmp_path)
    engine = Engine(registry, choose("cpu"))
    engine.ensure("sd/doomed")
    assert engine.resident_model == "sd/doomed"
    assert engine.drop_deleted() is False  # still installed: kept
    removal.find_model(registry, "sd/doomed")  # found while it exists
    (tmp_path / "doomed").rename(tmp_path / ".gone")  # as DELETE moves it aside
    assert engine.drop_deleted() is True
    assert engine.resident_model is None
    engine.ensure("sd/kept")
    assert engine.drop_deleted() is False and engine.resident_model == "sd/kept"
