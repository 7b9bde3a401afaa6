"""Throughput on one device, bare diffusers against the whole spool. Prints one JSON object.

    python bench/gpu.py [--shape sd15|sdxl|tiny] [--compile] [--stock] [--jobs 64] [--steps 25]
                        [--size 512] [--scheduler dpm++_sde_karras] [--batches 8,16]
                        [--mix 48] [--mix-rounds 1]

In ONE process, on the same device and the same pipeline (random weights of the real
architecture for `sd15`/`sdxl`, built in code by `alice_spool.engine.shapes`; the tiny
model for a CPU run):

- (a) `bare_one_at_a_time`: a plain diffusers loop, one image per pipeline call, as
  ALICE, ComfyUI, A1111 and LocalAI run queued requests;
- (b) `bare_batched`: the bare pipeline called with `--batches` images per call; the best
  is (b);
- (c) `spool`: `--jobs` request files (one image each, each its own prompt and seed)
  dropped into a watched inbox; the real inbox, store (SQLite), runner (claim, batch,
  generate) and outbox writer (PNG + result.json, fsynced) until the last result.json
  is there;
- `first_image_s`: an idle runner, one request file dropped, until its result.json is
  there.

(a) and (b) use the spool's schedulers (for DPM++ SDE: Brownian noise per image seed, as
the spool runs it), so (c) compares with the same arithmetic; `--stock` measures them
again with diffusers' own schedulers (one Brownian tree per call) as
`stock_diffusers_images_per_s`.

With `--compile`, (a) and (b) run eager first; then the engine compiles the pipeline
(fused QKV, channels_last, torch.compile of the UNet and VAE decoder, CUDA graphs on a
GPU) and warms it up for the size and batch sizes 1, 2, 4, ... `--max-batch` (timed as
`compile_s`), and (b) is measured again compiled (`bare_batched_compiled`) before (c),
so (c)/(b) compares like with like.

With `--mix N`, after (c): N jobs, plain, LoRA (a random LoRA of the shape's
architecture, at 0.8) and img2img (strength 0.6) in turn, through the runner against
the engine called directly on the runner's batches (`mix.ratio_runner_to_direct`,
target >= 0.95; per kind in `direct_jobs_per_s_by_kind`: compiled, LoRA batches run
eager), and one LoRA call loaded from disk against one from the cache (`lora_call_ms`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import diffusers
import mix  # bench/mix.py, beside this script
import torch

from alice_spool import migrate
from alice_spool.database import Database
from alice_spool.engine.device import choose, describe
from alice_spool.engine.generate import quiet_libraries
from alice_spool.engine.resident import Engine
from alice_spool.engine.schedulers import make_scheduler, stock_scheduler
from alice_spool.engine.shapes import NATIVE, build_pipeline, write_model_folder
from alice_spool.engine.speed import batch_buckets
from alice_spool.engine.tiny import create_tiny
from alice_spool.inbox import Inbox
from alice_spool.outbox import RESULT, Outbox
from alice_spool.registry import ModelRegistry
from alice_spool.runner import Runner, RunnerOptions
from alice_spool.spec import BUILTIN_DEFAULTS
from alice_spool.store import Store

log = logging.getLogger("bench.gpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare(
    pipeline: Any,
    args: argparse.Namespace,
    device: torch.device,
    *,
    per_call: int,
    images: int,
    scheduler_config: Any,
    stock: bool = False,
) -> float:
    """Images per second of the bare pipeline, `per_call` images a call; with the
    spool's schedulers (per-image noise), or `stock` as diffusers makes them."""
    calls = max(1, images // per_call)
    started = time.perf_counter()
    for call in range(calls):
        seeds = [1000 + call * per_call + i for i in range(per_call)]
        if stock:
            pipeline.scheduler = stock_scheduler(args.scheduler, scheduler_config)
        else:
            pipeline.scheduler = make_scheduler(args.scheduler, scheduler_config, seeds)
        with torch.inference_mode():
            pipeline(
                prompt=[f"a lighthouse at dusk #{s}" for s in seeds],
                negative_prompt=[""] * per_call,
                width=args.size,
                height=args.size,
                num_inference_steps=args.steps,
                guidance_scale=7.5,
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                output_type="pil",
            )
    sync(device)
    return calls * per_call / (time.perf_counter() - started)


class Spool:
    """The inbox, the store and the runner (with its writer) around one engine."""

    def __init__(self, engine: Engine, root: Path, max_batch: int, model: str) -> None:
        self.db = Database.open(f"sqlite:///{root / 'spool.db'}")
        migrate.upgrade(self.db)
        self.store = Store(self.db, max_queue=1_000_000)
        self.outbox = Outbox(root / "outbox", png_compress_level=1)
        self.inbox_dir = root / "inbox"
        self.inbox = Inbox(self.inbox_dir, self.store, engine.registry, defaults=BUILTIN_DEFAULTS)
        self.runner = Runner(
            self.store,
            self.outbox,
            engine,
            RunnerOptions(name="bench", max_batch=max_batch),
            lock_dir=root,
        )
        self.model = model
        self.count = 0

    def run(self, drive: Any) -> None:
        """Run the runner in this (the main) thread, as its process does, while `drive`
        drops requests and waits for them in another; then stop. (Torch slows down when
        a second thread of a process starts using its CPU thread pool; the bare loops
        ran in this thread, so the runner does too.)"""
        self.inbox.start()
        failure: list[BaseException] = []

        def driver() -> None:
            try:
                drive()
            except BaseException as exc:
                failure.append(exc)
            finally:
                self.runner.request_stop()

        thread = threading.Thread(target=driver, name="driver", daemon=True)
        thread.start()
        try:
            self.runner.run()
        finally:
            thread.join(60)
            self.inbox.stop()
            self.db.close()
        if failure:
            raise failure[0]

    def drop(self, args: argparse.Namespace, jobs: int) -> list[str]:
        """Write `jobs` request files into the inbox (written aside, renamed in)."""
        ids = []
        for _ in range(jobs):
            self.count += 1
            key = f"bench-{self.count}"
            request = {
                "id": key,
                "prompt": f"a harbour at dawn #{self.count}",
                "model": self.model,
                "width": args.size,
                "height": args.size,
                "steps": args.steps,
                "scheduler": args.scheduler,
                "seed": 5000 + self.count,
            }
            scratch = self.inbox_dir / f".{key}.tmp"
            scratch.write_text(json.dumps(request))
            scratch.rename(self.inbox_dir / f"{key}.json")
            ids.append(key)
        return ids

    def wait(self, keys: list[str], timeout: float) -> None:
        """Until every request's result.json is in the outbox (a cheap poll: the ids are
        looked up at most every 0.1 s, then only files are checked)."""
        deadline = time.monotonic() + timeout
        unresolved = set(keys)
        files: list[Path] = []
        looked_up = 0.0
        while unresolved or files:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(unresolved) + len(files)} jobs not finished")
            if unresolved and time.monotonic() - looked_up > 0.1:
                looked_up = time.monotonic()
                for job in self.store.list_jobs(limit=10_000).jobs:
                    if job.idempotency_key in unresolved:
                        unresolved.discard(job.idempotency_key)
                        files.append(self.outbox.job_dir(job.id) / RESULT)
            files = [f for f in files if not f.exists()]
            time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["sd15", "sdxl", "tiny"], default="sd15")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=None, help="default: the shape's native")
    parser.add_argument("--steps", type=int, default=None, help="default: 25 (SDXL 30)")
    parser.add_argument("--scheduler", default="dpm++_sde_karras")
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--one-at-a-time", type=int, default=8, help="images for (a)")
    parser.add_argument("--batches", default="8,16", help="images per call for (b)")
    parser.add_argument("--max-batch", type=int, default=None, help="default: best of (b)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument(
        "--stock", action="store_true", help="also (a) and (b) with diffusers' own schedulers"
    )
    parser.add_argument(
        "--mix", type=int, default=0, help="plain/LoRA/img2img jobs after (c) (0: none)"
    )
    parser.add_argument("--mix-rounds", type=int, default=1)
    parser.add_argument("--dir", default=None, help="where the database and outbox go")
    args = parser.parse_args()
    args.size = args.size or (64 if args.shape == "tiny" else NATIVE[args.shape])
    args.steps = args.steps or (30 if args.shape == "sdxl" else 25)
    batches = [int(b) for b in args.batches.split(",")]

    quiet_libraries()
    # Each phase's figure goes to stderr as it is measured, so that a run cut short by a
    # time limit still tells what it got; the JSON at the end goes to stdout.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)
    placement = choose(args.device)
    device = placement.device
    result: dict[str, Any] = {
        "benchmark": "gpu",
        "machine": {
            **describe(placement),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
        },
        "workload": {
            "shape": args.shape,
            "weights": "random, real architecture" if args.shape != "tiny" else "tiny model",
            "size": f"{args.size}x{args.size}",
            "steps": args.steps,
            "scheduler": args.scheduler,
            "dtype": str(placement.dtype).removeprefix("torch."),
            "jobs": args.jobs,
            "compile": args.compile,
        },
    }
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        models = root / "models"
        if args.shape == "tiny":
            create_tiny(models, "tiny")
            model = "sd/tiny"
        else:
            write_model_folder(args.shape, models / args.shape)
            model = f"sd/{args.shape}"
        engine = Engine(
            ModelRegistry(models),
            placement,
            max_batch=max(batches),
            compile=False,
            compile_sizes=[(args.size, args.size)],
        )
        started = time.perf_counter()
        if args.shape == "tiny":
            loaded = engine.ensure(model)
        else:
            pipeline = build_pipeline(args.shape, root, device=device, dtype=placement.dtype)
            loaded = engine.adopt(model, pipeline)
        result["build_s"] = round(time.perf_counter() - started, 1)
        log.info("built %s on %s in %.1f s", args.shape, placement.label, result["build_s"])
        pipeline = loaded.pipeline
        config = loaded.scheduler_config
        if args.mix:  # LoRAs for the mix, shaped from the eager UNet (before any compiling)
            for name, seed in (("bench-lora", 7), ("bench-lora-2", 8)):
                mix.write_random_lora(pipeline.unet, models, name, seed=seed)

        bare(pipeline, args, device, per_call=1, images=2, scheduler_config=config)  # warm
        speeds: dict[str, float] = {}
        speeds["a"] = bare(
            pipeline, args, device, per_call=1, images=args.one_at_a_time, scheduler_config=config
        )
        log.info("(a) bare, one at a time: %.3f images/s", speeds["a"])
        by_batch = {}
        for batch in batches:
            bare(pipeline, args, device, per_call=batch, images=batch, scheduler_config=config)
            by_batch[batch] = bare(
                pipeline, args, device, per_call=batch, images=2 * batch, scheduler_config=config
            )
            log.info("(b) bare, %d per call: %.3f images/s", batch, by_batch[batch])
        best = max(by_batch, key=lambda b: by_batch[b])
        result["bare_batched_images_per_s"] = {str(b): round(v, 3) for b, v in by_batch.items()}
        speeds["b"] = by_batch[best]
        max_batch = args.max_batch or best
        if args.stock:  # (a) and (b) again, with diffusers' own schedulers
            stock = {"pipeline": pipeline, "args": args, "device": device, "stock": True}
            bare(**stock, per_call=best, images=best, scheduler_config=config)
            result["stock_diffusers_images_per_s"] = {
                "a_one_at_a_time": round(
                    bare(**stock, per_call=1, images=args.one_at_a_time, scheduler_config=config),
                    3,
                ),
                f"b_{best}_per_call": round(
                    bare(**stock, per_call=best, images=2 * best, scheduler_config=config), 3
                ),
            }
            log.info("stock diffusers schedulers: %s", result["stock_diffusers_images_per_s"])

        if args.compile:
            engine.compile = True
            engine.max_batch = max_batch
            engine.buckets = batch_buckets(max_batch)
            started = time.perf_counter()
            loaded = engine.adopt(model, pipeline)
            result["compile_s"] = round(time.perf_counter() - started, 1)
            log.info("compiled and warmed up for %s in %.1f s", engine.buckets, result["compile_s"])
            pipeline = loaded.pipeline
            bare(
                pipeline,
                args,
                device,
                per_call=max_batch,
                images=max_batch,
                scheduler_config=config,
            )
            speeds["b_compiled"] = bare(
                pipeline,
                args,
                device,
                per_call=max_batch,
                images=2 * max_batch,
                scheduler_config=config,
            )
            log.info("(b) compiled, %d per call: %.3f images/s", max_batch, speeds["b_compiled"])

        spool = Spool(engine, root, max_batch, model)

        def drive() -> None:
            time.sleep(0.5)  # the runner is idle
            first = time.perf_counter()
            spool.wait(spool.drop(args, 1), timeout=600)
            result["first_image_s"] = round(time.perf_counter() - first, 3)
            log.info("first image on an idle runner: %.3f s", result["first_image_s"])
            time.sleep(0.5)  # idle again
            started = time.perf_counter()
            spool.wait(spool.drop(args, args.jobs), timeout=3600)
            speeds["c"] = args.jobs / (time.perf_counter() - started)
            log.info("(c) spool, %d jobs: %.3f images/s", args.jobs, speeds["c"])
            finished = spool.store.list_jobs(limit=10_000).jobs
            batches_run = {
                (j.result or {}).get("timings", {}).get("batch_images") for j in finished
            }
            result["spool_batch_images"] = sorted(b for b in batches_run if b)
            # Random weights can overflow in fp16 (NaN images fail their jobs): the time
            # is still the GPU's work, but say so.
            outcomes: dict[str, int] = {}
            for job in finished:
                key = job.error_code or job.status.value
                outcomes[key] = outcomes.get(key, 0) + 1
            result["spool_jobs"] = outcomes
            if set(outcomes) != {"succeeded"}:
                log.warning("not every job succeeded: %s", outcomes)

        spool.run(drive)

        if args.mix:
            # The mix: through the runner vs the engine on the same batches, then the
            # LoRA switch. Compiled, plain and img2img batches run compiled and LoRA
            # batches eager (engine/speed.py), which the per-kind figures show.
            work = mix.Workload(
                model=model,
                lora="lora/bench-lora",
                size=args.size,
                steps=args.steps,
                scheduler=args.scheduler,
                max_batch=max_batch,
            )
            started = time.perf_counter()
            result["mix"] = mix.mix(
                engine, work, args.mix, args.mix_rounds, root, sync=lambda: sync(device)
            )
            log.info("mix: %s (%.0f s)", result["mix"]["jobs_per_s"], time.perf_counter() - started)
            result["mix"]["lora_call_ms"] = mix.lora_switch(
                engine, work, ("lora/bench-lora", "lora/bench-lora-2"), sync=lambda: sync(device)
            )
            log.info("LoRA call: %s", result["mix"]["lora_call_ms"])

    reference = speeds.get("b_compiled", speeds["b"])
    result["images_per_s"] = {
        "a_bare_one_at_a_time": round(speeds["a"], 3),
        "b_bare_batched": round(speeds["b"], 3),
        **({"b_bare_batched_compiled": round(speeds["b_compiled"], 3)} if args.compile else {}),
        "c_spool": round(speeds["c"], 3),
    }
    result["best_batch"] = best
    result["max_batch"] = max_batch
    result["ratios"] = {
        "c_over_a": round(speeds["c"] / speeds["a"], 3),
        "c_over_b": round(speeds["c"] / reference, 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
