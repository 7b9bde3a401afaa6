"""The DPM++ SDE samplers' Brownian noise, per pipeline call. Prints one JSON object.

    python bench/noise.py [--device auto] [--batches 1,8,16] [--sizes 512,1024] [--steps 25]

For each image size (latents of 1/8 the size) and batch size, one pipeline call's worth
of scheduler steps (the model's output replaced by zeros, so only the scheduler and its
noise are timed), three ways:

- `seeded`: the spool's `SeededBrownianNoise`, a Brownian path per image seed;
- `tree_per_image`: diffusers' own way to give each image its seed, a torchsde Brownian
  tree per image (what the spool did before);
- `one_tree`: a single torchsde tree for the whole batch (diffusers' default: fast,
  but an image then depends on the batch it ran in).

Seconds per call, and per image. On a GPU these seconds are CPU time the pipeline spends
between UNet calls.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from diffusers import DPMSolverSDEScheduler

from alice_spool.engine.device import choose, describe
from alice_spool.engine.schedulers import make_scheduler
from alice_spool.engine.tiny import SD15_SCHEDULER


def call_seconds(scheduler: Any, batch: int, size: int, steps: int, placement: Any) -> float:
    """One call's scheduler steps at this batch and image size."""
    scheduler.set_timesteps(steps, device=placement.device)
    latents = (batch, 4, size // 8, size // 8)
    sample = torch.randn(latents, generator=torch.Generator().manual_seed(0))
    sample = (sample * scheduler.init_noise_sigma).to(placement.device, placement.dtype)
    zeros = torch.zeros_like(sample)
    if placement.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for t in scheduler.timesteps:
        sample = scheduler.step(zeros, t, sample).prev_sample
    if placement.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", default="1,8,16")
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    placement = choose(args.device)
    ways = {
        "seeded": lambda seeds: make_scheduler("dpm++_sde_karras", SD15_SCHEDULER, seeds),
        "tree_per_image": lambda seeds: DPMSolverSDEScheduler.from_config(
            SD15_SCHEDULER, use_karras_sigmas=True, noise_sampler_seed=seeds
        ),
        "one_tree": lambda seeds: DPMSolverSDEScheduler.from_config(
            SD15_SCHEDULER, use_karras_sigmas=True, noise_sampler_seed=seeds[0]
        ),
    }
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for batch in (int(b) for b in args.batches.split(",")):
            seeds = list(range(100, 100 + batch))
            row: dict[str, Any] = {"size": f"{size}x{size}", "batch": batch}
            for name, make in ways.items():
                call_seconds(make(seeds), batch, size, 2, placement)  # warm
                seconds = call_seconds(make(seeds), batch, size, args.steps, placement)
                row[name] = {
                    "s_per_call": round(seconds, 4),
                    "s_per_image": round(seconds / batch, 4),
                }
            row["tree_per_image_over_seeded"] = round(
                row["tree_per_image"]["s_per_call"] / row["seeded"]["s_per_call"], 1
            )
            rows.append(row)
    result = {
        "benchmark": "noise",
        "machine": {**describe(placement), "torch": torch.__version__},
        "scheduler": "dpm++_sde_karras",
        "steps": args.steps,
        "calls": rows,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
