"""Hires fix and clip skip in the real diffusers pipeline on the tiny model, on the CPU:
the target size, a second pass that is more than an upscale, seeds that reproduce alone
and in company, every upscaler, progress over both passes, a stop in the second, clip
skip as diffusers computes it, the infotext A1111 writes, the first pass's size and the
schedule types a batch reports, generation.max_pixels at the native size, and SDXL's
upscaled latents decoded in float32 from a float16 model."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from alice_spool.engine.device import Placement, choose
from alice_spool.engine.generate import Loaded, generate, load
from alice_spool.engine.hires import decode
from alice_spool.engine.schedulers import make_scheduler
from alice_spool.engine.tiny import create_tiny
from alice_spool.errors import Interrupted, InvalidParameters
from alice_spool.hires import UPSCALERS, HiresFix
from alice_spool.outbox import infotext
from alice_spool.spec import JobSpec, parse_spec


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    return load(create_tiny(tmp_path_factory.mktemp("models")), "sd/tiny", choose("cpu"))


def spec(**fields: Any) -> JobSpec:
    request = {"prompt": "a lighthouse", "steps": 3, "seed": 7, "scheduler": "euler"}
    return parse_spec({**request, "hires": {"scale": 1.5, "steps": 2}, **fields})


def image(loaded: Loaded, job: JobSpec, **options: Any) -> np.ndarray:
    output = generate(loaded, [job], **options)
    assert output.jobs[0].error is None
    return np.asarray(output.jobs[0].images[0]).astype(np.int16)


def differs(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape != b.shape or bool((np.abs(a - b) > 2).mean() >= 0.05)


def test_a_hires_job_is_its_own_image_at_the_target_size(tiny: Loaded) -> None:
    output = generate(tiny, [spec()])
    made = output.jobs[0].images[0]
    assert (output.width, output.height, made.size) == (96, 96, (96, 96))  # 1.5x of 64
    hires = np.asarray(made).astype(np.int16)
    first = generate(tiny, [spec(hires=None)]).jobs[0].images[0]
    upscaled = np.asarray(first.resize((96, 96), Image.Resampling.LANCZOS)).astype(np.int16)
    assert differs(hires, upscaled)  # the second pass changed it
    assert differs(hires, image(tiny, spec(hires=None, width=96, height=96)))
    assert np.array_equal(hires, image(tiny, spec()))  # bit for bit


def test_a_hires_job_is_the_same_alone_and_batched(tiny: Loaded) -> None:
    sharp = spec(hires={"scale": 1.5, "steps": 2, "prompt": "a lighthouse, sharp"})
    alone = image(tiny, sharp)
    batch = generate(tiny, [spec(prompt="a dog in the rain", seed=99, n=2), sharp])
    assert [len(job.images) for job in batch.jobs] == [2, 1]
    together = np.asarray(batch.jobs[1].images[0]).astype(np.int16)
    assert np.abs(alone - together).max() <= 2  # batched kernels round a little differently


@pytest.mark.parametrize("name", [upscaler.name for upscaler in UPSCALERS])
def test_every_upscaler_runs(tiny: Loaded, name: str) -> None:
    output = generate(tiny, [spec(steps=1, hires={"upscaler": name, "steps": 1, "width": 96})])
    assert output.jobs[0].error is None
    assert output.jobs[0].images[0].size == (96, 96) == (output.width, output.height)


def test_strength_0_is_the_upscale_alone_and_scale_1_a_second_pass_in_place(
    tiny: Loaded,
) -> None:
    first = generate(tiny, [spec(hires=None)]).jobs[0].images[0]
    steps: list[tuple[int, int]] = []
    alone = (
        generate(
            tiny,
            [spec(hires={"scale": 1.5, "strength": 0, "upscaler": "Lanczos"})],
            on_step=lambda step, total: steps.append((step, total)),
        )
        .jobs[0]
        .images[0]
    )
    upscaled = first.resize((96, 96), Image.Resampling.LANCZOS)
    assert np.abs(pixels(alone) - pixels(upscaled)).max() <= 3  # the upscale, no pass (rounding)
    assert steps[-1] == (3, 3)  # the first pass's steps only
    latent = image(tiny, spec(hires={"scale": 1.5, "strength": 0}))
    assert latent.shape == (96, 96, 3) and differs(latent, pixels(upscaled))
    again = image(tiny, spec(hires={"scale": 1, "steps": 2, "strength": 0.5}))
    assert again.shape == (64, 64, 3) and differs(again, pixels(first))


def pixels(picture: Image.Image) -> np.ndarray:
    return np.asarray(picture).astype(np.int16)


def test_both_sides_in_another_aspect_crop_the_middle(tiny: Loaded) -> None:
    for upscaler in ("Latent", "Lanczos"):
        job = spec(width=64, height=96, hires={"width": 128, "height": 96, "upscaler": upscaler})
        assert image(tiny, job).shape == (96, 128, 3)


def test_progress_counts_both_passes_and_a_stop_in_the_second_stops(tiny: Loaded) -> None:
    seen: list[tuple[int, int]] = []
    generate(tiny, [spec(scheduler="heun")], on_step=lambda *step: seen.append(step))
    assert {total for _, total in seen} == {5}  # 3 steps, then 2
    steps = [step for step, _ in seen]
    assert steps == sorted(steps) and {1, 3, 5} <= set(steps) and steps[-1] == 5
    seen.clear()
    with pytest.raises(Interrupted):
        generate(
            tiny,
            [spec()],
            on_step=lambda *step: seen.append(step),
            should_stop=lambda: bool(seen) and seen[-1][0] > 3,
        )
    assert seen[-1] == (4, 5)


def test_a_target_past_the_limits_is_refused_when_the_native_size_is_known(
    tiny: Loaded,
) -> None:
    wide = replace(spec(), width=2048, height=64, hires=HiresFix(scale=None, width=64))
    with pytest.raises(InvalidParameters) as info:
        generate(tiny, [wide])  # 64x2: what parse_spec refuses when it knows the size
    assert info.value.field == "hires"
    with pytest.raises(InvalidParameters) as info:
        generate(tiny, [parse_spec({"prompt": "x", "clip_skip": 3})])  # 2 layers
    assert info.value.field == "clip_skip"


def test_clip_skip_2_is_the_next_to_last_layer_as_diffusers_has_it(tiny: Loaded) -> None:
    plain = spec(hires=None)
    skipped = image(tiny, spec(hires=None, clip_skip=2))
    assert not np.array_equal(skipped, image(tiny, plain))
    # Independently: the prompt through the encoder, its next-to-last hidden state
    # through the final layer norm, given to the pipeline as embeddings (diffusers
    # skips no layer for the negative prompt).
    pipe = tiny.pipeline
    encoder = pipe.text_encoder

    def embed(text: str, skip: bool) -> torch.Tensor:
        ids = pipe.tokenizer(
            text, padding="max_length", max_length=pipe.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids  # fmt: skip
        with torch.no_grad():
            if not skip:
                return encoder(ids)[0]
            states = encoder(ids, output_hidden_states=True).hidden_states
            return encoder.final_layer_norm(states[-2])

    pipe.scheduler = make_scheduler("euler", tiny.scheduler_config, [7])
    with torch.inference_mode():
        by_hand = pipe(
            prompt_embeds=embed("a lighthouse", skip=True),
            negative_prompt_embeds=embed("", skip=False),
            width=64,
            height=64,
            num_inference_steps=3,
            guidance_scale=plain.guidance_scale,
            generator=[torch.Generator("cpu").manual_seed(7)],
            output_type="np",
        ).images[0]
    expected = (by_hand * 255).round().clip(0, 255).astype(np.int16)
    assert np.abs(skipped - expected).max() <= 1


def test_clip_skip_runs_in_both_passes_and_the_infotext_says_so(tiny: Loaded) -> None:
    job = spec(
        width=64,
        height=64,
        clip_skip=2,
        negative_prompt="fog",
        hires={"steps": 2, "strength": 0.5, "scheduler": "euler_a", "prompt": "a lighthouse, 8k"},
    ).with_seed()
    made = generate(tiny, [job]).jobs[0].images[0]
    unskipped = image(tiny, replace(job, clip_skip=None))
    assert not np.array_equal(np.asarray(made).astype(np.int16), unskipped)
    text = infotext(job, 7, *made.size)
    settings = text.splitlines()[-1]
    assert "Size: 64x64" in settings  # the first pass's, as A1111 records it
    tail = settings[settings.index("Denoising strength") :]
    assert tail == (
        "Denoising strength: 0.5, Clip skip: 2, Hires sampler: Euler a, Hires prompt: "
        '"a lighthouse, 8k", Hires upscale: 2, Hires steps: 2, Hires upscaler: Latent'
    )
    resized = spec(hires={"width": 96, "upscaler": "nearest"})
    assert infotext(resized, 7, 96, 96).endswith(
        "Denoising strength: 0.7, Hires resize: 96x0, Hires upscaler: Nearest"
    )
    assert "Clip skip" not in infotext(spec(hires=None, clip_skip=1), 7, 64, 64)


def test_a_hires_batch_reports_its_first_pass_and_the_schedule_types_it_ran_on(
    tiny: Loaded,
) -> None:
    job = spec(hires={"scale": 1.5, "steps": 2, "scheduler": "euler_karras"})  # no size
    output = generate(tiny, [job])
    assert (output.width, output.height, output.first_size) == (96, 96, (64, 64))
    # The tiny model's scheduler config is SD 1.5's as saved: leading from timestep 1.
    assert (output.schedule, output.hires_schedule) == ("DDIM", "Karras")
    text = infotext(
        job,
        7,
        96,
        96,
        schedule=output.schedule,
        hires_schedule=output.hires_schedule,
        first_size=output.first_size,
    ).splitlines()[-1]
    assert "Sampler: Euler, Schedule type: DDIM, " in text and "Size: 64x64, " in text
    assert "Hires schedule type: Karras, " in text
    alone = generate(tiny, [spec(steps=1, hires={"strength": 0, "upscaler": "Lanczos"})])
    assert alone.hires_schedule == "DDIM"  # no second pass ran: the one it would have
    plain = generate(tiny, [spec(steps=1, hires=None)])
    assert (plain.schedule, plain.hires_schedule, plain.first_size) == ("DDIM", None, None)


def test_max_pixels_refuses_a_target_from_the_native_size(tiny: Loaded) -> None:
    with pytest.raises(InvalidParameters) as info:
        generate(tiny, [spec()], max_pixels=96 * 96 - 1)  # 64x64 (native), 1.5x: 96x96
    assert info.value.field == "hires" and "9216 pixels" in info.value.message
    assert generate(tiny, [spec(steps=1)], max_pixels=96 * 96).jobs[0].error is None


@pytest.fixture(scope="module")
def sdxl_half(tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    """The tiny SDXL model in float16 on the CPU, its VAE's first decoder layer scaled
    up so that its activations overflow float16 (as SDXL's VAE does) but not float32."""
    path = create_tiny(tmp_path_factory.mktemp("models"), "tiny-xl", family="sdxl")
    loaded = load(path, "sd/tiny-xl", Placement(torch.device("cpu"), torch.float16), family="sdxl")
    vae = loaded.pipeline.vae
    assert vae.config.force_upcast  # diffusers' default, and SDXL's
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(3e5)
    return loaded


def test_strength_0_decodes_sdxl_latents_in_float32_as_its_pipeline_does(
    sdxl_half: Loaded,
) -> None:
    pipeline, vae = sdxl_half.pipeline, sdxl_half.pipeline.vae
    latents = 0.1 * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)).half()
    with torch.no_grad():
        assert not torch.isfinite(vae.decode(latents / vae.config.scaling_factor)[0]).all()
        assert torch.isfinite(decode(pipeline, latents)).all()
    assert vae.dtype == torch.float16  # put back
    # The whole path: a latent upscale alone, decoded; the model stays in float16.
    job = spec(steps=1, width=64, height=64, hires={"scale": 1.5, "strength": 0})
    assert generate(sdxl_half, [job]).jobs[0].error is None
    assert {pipeline.unet.dtype, vae.dtype, pipeline.text_encoder_2.dtype} == {torch.float16}
    # An img2img pipeline made from the model (a second pass) leaves it in float16.
    second = replace(job, hires=replace(job.hires, strength=0.5))
    assert generate(sdxl_half, [second]).jobs[0].error is None
    assert {pipeline.unet.dtype, vae.dtype} == {torch.float16}


def test_sdxl_latents_are_denormalised_with_the_vaes_mean_and_std(sdxl_half: Loaded) -> None:
    vae = sdxl_half.pipeline.vae
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2)).half()
    mean, std = [0.1, -0.2, 0.3, 0.0], [0.5, 1.0, 2.0, 1.5]
    vae.register_to_config(latents_mean=mean, latents_std=std)
    try:
        with torch.no_grad():
            made = decode(sdxl_half.pipeline, latents)
            vae.float()
            scale, shift = torch.tensor(std).view(1, 4, 1, 1), torch.tensor(mean).view(1, 4, 1, 1)
            wanted = vae.decode(latents.float() * scale / vae.config.scaling_factor + shift)[0]
    finally:
        vae.register_to_config(latents_mean=None, latents_std=None)
        vae.half()
    assert torch.allclose(made, wanted, atol=1e-3)
