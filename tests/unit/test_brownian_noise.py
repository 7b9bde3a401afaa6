"""The DPM++ SDE samplers' per-image Brownian noise: a Brownian path per image seed,
the same alone or in a batch, and cheap enough to keep a GPU busy."""

from __future__ import annotations

import pytest
import torch
from diffusers import DPMSolverSDEScheduler

from alice_spool.engine.schedulers import (
    SeededBrownianNoise,
    SeededSDEScheduler,
    make_scheduler,
    stock_scheduler,
)
from alice_spool.engine.tiny import SD15_SCHEDULER
from alice_spool.errors import InvalidParameters

SHAPE = (4, 32, 32)  # 4096 numbers an image: enough for the statistics below


def noise(seeds: list[int], dtype: torch.dtype = torch.float32) -> SeededBrownianNoise:
    return SeededBrownianNoise(torch.zeros((len(seeds), *SHAPE), dtype=dtype), seeds)


def test_each_step_is_standard_normal_and_the_paths_add_up() -> None:
    sampler = noise([1, 2, 3, 4])
    # As DPM++ SDE asks: from sigma to the midpoint, then from sigma to the next sigma.
    first, whole = sampler(14.6, 7.0), sampler(14.6, 3.0)
    second = sampler(7.0, 3.0)
    for step in (first, whole, second):
        assert step.shape == (4, *SHAPE)
        assert abs(float(step.mean())) < 0.05 and abs(float(step.std()) - 1) < 0.05
    # One path: W(3) - W(14.6) = (W(7) - W(14.6)) + (W(3) - W(7)).
    joined = first * (14.6 - 7.0) ** 0.5 + second * (7.0 - 3.0) ** 0.5
    assert torch.allclose(whole * (14.6 - 3.0) ** 0.5, joined, atol=1e-4)
    # Steps over disjoint intervals are independent; the reverse direction is the negative.
    assert abs(float(torch.corrcoef(torch.stack([first.flatten(), second.flatten()]))[0, 1])) < 0.05
    assert torch.allclose(sampler(3.0, 14.6), -whole)


def test_a_point_between_known_ones_comes_from_the_bridge() -> None:
    """Asked for W(5) after W(14.6) and W(1) are known: its increments still have the
    right spread on both sides, and they still add up to the whole."""
    sampler = noise(list(range(8)))
    whole = sampler(14.6, 1.0)
    left, right = sampler(14.6, 5.0), sampler(5.0, 1.0)
    assert abs(float(left.std()) - 1) < 0.05 and abs(float(right.std()) - 1) < 0.05
    joined = left * 9.6**0.5 + right * 4.0**0.5
    assert torch.allclose(whole * 13.6**0.5, joined, atol=1e-4)


def test_an_images_noise_depends_on_its_seed_alone() -> None:
    def path(seeds: list[int]) -> list[torch.Tensor]:
        sampler = noise(seeds)
        return [sampler(14.6, 7.0), sampler(14.6, 3.0), sampler(3.0, 1.5), sampler(3.0, 0.5)]

    alone = path([42])
    in_company = path([7, 42, 9])
    for a, b in zip(alone, in_company, strict=True):
        assert torch.equal(a[0], b[1])
    assert not torch.allclose(in_company[0][0], in_company[0][1])  # other seeds differ
    # Not the stream the image's initial latents are drawn from (torch.Generator(seed)).
    latents = torch.randn(SHAPE, generator=torch.Generator().manual_seed(42))
    first = alone[0][0]
    assert abs(float(torch.corrcoef(torch.stack([first.flatten(), latents.flatten()]))[0, 1])) < 0.1


def test_the_sample_dtype_is_kept_and_the_batch_must_match_the_seeds() -> None:
    assert noise([1, 2], dtype=torch.float16)(14.6, 7.0).dtype == torch.float16
    with pytest.raises(ValueError, match="3 seeds for a batch of 2"):
        SeededBrownianNoise(torch.zeros((2, *SHAPE)), [1, 2, 3])


def test_the_sde_schedulers_use_it_and_stay_reproducible() -> None:
    def run(seeds: list[int]) -> torch.Tensor:
        scheduler = make_scheduler("dpm++_sde_karras", SD15_SCHEDULER, seeds)
        assert isinstance(scheduler, SeededSDEScheduler)
        scheduler.set_timesteps(6)
        sample = torch.ones((len(seeds), *SHAPE)) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            sample = scheduler.step(torch.zeros_like(sample), t, sample).prev_sample
        assert isinstance(scheduler.noise_sampler, SeededBrownianNoise)
        return sample

    assert torch.equal(run([5])[0], run([3, 5])[1])
    assert torch.isfinite(run([1, 2])).all()
    assert not torch.equal(run([5])[0], run([6])[0])
    plain = make_scheduler("dpm++_sde", SD15_SCHEDULER, [1])
    assert isinstance(plain, SeededSDEScheduler) and not plain.config.use_karras_sigmas
    # diffusers' own, for the benchmarks' comparison: one tree, no seeds of ours
    stock = stock_scheduler("dpm++_sde_karras", SD15_SCHEDULER)
    assert type(stock) is DPMSolverSDEScheduler and stock.config.use_karras_sigmas
    with pytest.raises(InvalidParameters, match="'dpm\\+\\+_3m' is not known"):
        stock_scheduler("dpm++_3m", SD15_SCHEDULER)


@pytest.mark.gpu
def test_on_a_gpu_the_path_is_the_one_drawn_on_the_cpu() -> None:
    on_cpu = noise([1, 2])
    on_gpu = SeededBrownianNoise(torch.zeros((2, *SHAPE), device="cuda"), [1, 2])
    for a, b in [(14.6, 7.0), (14.6, 3.0), (3.0, 1.0)]:
        step = on_gpu(a, b)
        assert step.device.type == "cuda"
        assert torch.equal(on_cpu(a, b), step.cpu())
