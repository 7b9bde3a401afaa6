"""The mixed workload both runner benchmarks run (bench/runner.py on the CPU, bench/gpu.py
on a device): plain, LoRA and img2img jobs in turn, through the real runner and through
the engine called directly on the batches the runner makes of them, and the cost of a
LoRA switch. Imported by those scripts; not a benchmark of its own."""

from __future__ import annotations

import io
import random
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import save_file

from alice_spool import inputs, migrate
from alice_spool.database import Database
from alice_spool.engine.resident import Engine
from alice_spool.library.loras import LORAS_DIR
from alice_spool.outbox import Outbox
from alice_spool.runner import Runner, RunnerOptions
from alice_spool.spec import JobSpec
from alice_spool.states import JobStatus
from alice_spool.store import Store, new_id

KINDS = ("plain", "lora", "img2img")
Job = tuple[JobSpec, inputs.Staged]


@dataclass(frozen=True)
class Workload:
    model: str  # sd/<name>
    lora: str  # lora/<name>
    size: int
    steps: int
    scheduler: str
    max_batch: int


def write_random_lora(unet: Any, models_dir: Path, name: str, *, seed: int = 7) -> str:
    """A random rank-4 LoRA on the attention projections of `unet`, in diffusers/PEFT
    keys, to `<models>/loras/<name>.safetensors` (any architecture: the shapes are read
    from the UNet's modules, which are left alone); its id."""
    generator = torch.Generator("cpu").manual_seed(seed)
    tensors = {}
    for module_name, module in unet.named_modules():
        if module_name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or module_name.endswith(
            "to_out.0"
        ):
            if not isinstance(module, torch.nn.Linear):
                continue
            down = torch.randn(4, module.in_features, generator=generator) * 0.05
            up = torch.randn(module.out_features, 4, generator=generator) * 0.05
            tensors[f"unet.{module_name}.lora_A.weight"] = down.to(torch.float16)
            tensors[f"unet.{module_name}.lora_B.weight"] = up.to(torch.float16)
    target = Path(models_dir) / LORAS_DIR / f"{name}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target))
    return f"lora/{name}"


def mix_jobs(work: Workload, count: int, root: Path) -> list[Job]:
    """Plain, LoRA and img2img jobs, in turn, each img2img with its own input."""
    jobs: list[Job] = []
    rng = random.Random(7)
    for i in range(count):
        base = JobSpec(
            prompt=f"a harbour #{i}",
            model=work.model,
            width=work.size,
            height=work.size,
            steps=work.steps,
            scheduler=work.scheduler,
            seed=2000 + i,
        )
        kind = KINDS[i % 3]
        if kind == "plain":
            jobs.append((base, inputs.Staged()))
        elif kind == "lora":
            jobs.append((replace(base, loras=((work.lora, 0.8),)), inputs.Staged()))
        else:
            colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
            buffer = io.BytesIO()
            Image.new("RGB", (work.size, work.size), colour).save(buffer, "PNG")
            decoded = inputs.decode("init_image", buffer.getvalue(), 10**8)
            spec = replace(base, init_image=f"sha256:{decoded.sha256}", strength=0.6)
            jobs.append((spec, inputs.Staged({"init_image": decoded})))
    return jobs


def kind_of(spec: JobSpec) -> str:
    return "lora" if spec.loras else "img2img" if spec.init_image else "plain"


def mix_direct(engine: Engine, jobs: list[Job], batch: int, sync: Any = None) -> dict[str, float]:
    """The engine on the runner's batches (compatible jobs together, in queue order):
    seconds in all and per kind of job."""
    groups: dict[tuple[object, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(job[0].batch_key(), []).append(job)
    seconds = dict.fromkeys(("all", *KINDS), 0.0)
    for group in groups.values():
        for start in range(0, len(group), batch):
            part = group[start : start + batch]
            images = [
                {r: Image.open(io.BytesIO(d.data)) for r, d in staged.images.items()}
                for _, staged in part
            ]
            began = time.perf_counter()
            engine.generate(
                [spec for spec, _ in part],
                images=images if part[0][0].init_image else None,
            )
            if sync is not None:
                sync()
            took = time.perf_counter() - began
            seconds["all"] += took
            seconds[kind_of(part[0][0])] += took
    return seconds


def mix_runner(engine: Engine, jobs: list[Job], root: Path, max_batch: int, name: str) -> float:
    """Seconds for the real runner (claim, generate, PNGs and result.json written and
    fsynced, succeed) to finish the jobs, queued as the API queues them."""
    db = Database.open(f"sqlite:///{root / f'{name}.db'}")
    migrate.upgrade(db)
    store = Store(db, max_queue=1_000_000)
    data_dir = root / f"data-{name}"
    for spec, staged in jobs:  # inputs stored first, as the doors do
        job_id = new_id()
        inputs.queue_with(
            data_dir,
            staged,
            job_id,
            lambda given, spec=spec: store.jobs.enqueue(spec, source="cli", job_id=given),
            lambda done, job_id=job_id: done.job.id == job_id,
        )
    runner = Runner(
        store,
        Outbox(root / f"outbox-{name}", png_compress_level=1),
        engine,
        RunnerOptions(name=name, max_batch=max_batch, exit_when_idle=True, data_dir=data_dir),
        lock_dir=root,
    )
    started = time.perf_counter()
    runner.run()
    elapsed = time.perf_counter() - started
    counts = store.jobs.counts()
    assert counts[JobStatus.SUCCEEDED] == len(jobs), counts
    db.close()
    return elapsed


def mix(
    engine: Engine, work: Workload, count: int, rounds: int, root: Path, sync: Any = None
) -> dict[str, Any]:
    """The mix through the runner and direct, `rounds` interleaved rounds, best of each."""
    jobs = mix_jobs(work, count, root)
    mix_direct(engine, jobs[: 3 * work.max_batch], work.max_batch, sync)  # warm up
    direct: list[dict[str, float]] = []
    runner: list[float] = []
    for round_ in range(rounds):
        direct.append(mix_direct(engine, jobs, work.max_batch, sync))
        runner.append(mix_runner(engine, jobs, root, work.max_batch, f"mix{round_}"))
    best = min(direct, key=lambda seconds: seconds["all"])
    per_kind = count / 3
    return {
        "jobs": count,
        "kinds": f"plain, LoRA ({work.lora} at 0.8), img2img (strength 0.6), in turn",
        "jobs_per_s": {
            "direct": round(count / best["all"], 2),
            "runner": round(count / min(runner), 2),
        },
        "direct_jobs_per_s_by_kind": {k: round(per_kind / best[k], 2) for k in KINDS},
        "seconds": {
            "direct": [round(s["all"], 3) for s in direct],
            "runner": [round(s, 3) for s in runner],
        },
        "ratio_runner_to_direct": round(best["all"] / min(runner), 3),
    }


def lora_switch(
    engine: Engine, work: Workload, loras: tuple[str, str], sync: Any = None
) -> dict[str, float]:
    """ms for one 1-step call with a LoRA: loaded from disk (a cache of one, two LoRAs
    in turn) vs. already in the cache (a cache of two), on the engine's resident model."""
    specs = [
        JobSpec(prompt="x", model=work.model, width=work.size, height=work.size, steps=1,
                seed=1, scheduler="euler",  # the SDE schedulers cost more per call
                loras=((name, 1.0),))
        for name in loras
    ]  # fmt: skip
    adapters = engine.adapters(engine.ensure(work.model))
    kept = adapters.capacity
    timings = {}
    try:
        for label, capacity in (("from_disk", 1), ("from_cache", 2)):
            adapters.capacity = capacity
            engine.generate(specs[:1])
            engine.generate(specs[1:])  # both seen once
            calls = []
            for i in range(20):
                started = time.perf_counter()
                engine.generate(specs[i % 2 : i % 2 + 1])
                if sync is not None:
                    sync()
                calls.append(time.perf_counter() - started)
            timings[label] = round(statistics.median(calls) * 1000, 1)
    finally:
        adapters.capacity = kept
    timings["switch_cost_ms"] = round(timings["from_disk"] - timings["from_cache"], 1)
    return timings
