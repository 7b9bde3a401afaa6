"""Throughput on one device, bare diffusers against the whole spool. Prints one JSON object.

    python bench/gpu.py [--shape sd15|sdxl|flux-dev|flux-schnell|sd35-large|tiny|tiny-flux|tiny-sd3]
                        [--quantize none|fp8|nf4] [--cache none|first_block|taylorseer]
                        [--compile] [--stock] [--jobs 64] [--steps 25]
                        [--size 512] [--scheduler dpm++_sde_karras] [--batches 8,16]
                        [--mix 48] [--mix-rounds 1]

In ONE process, on the same device and the same pipeline (random weights of the real
architecture for `sd15`/`sdxl` and the flow-matching `flux-dev`/`flux-schnell`/
`sd35-large`, built in code by `alice_spool.engine.shapes`; the tiny models for a CPU
run):

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

The flow shapes (FLUX.1 dev and schnell, SD 3.5 Large) need a CUDA GPU and run in
bfloat16, at their family's steps, guidance and Euler scheduler:
the request files leave guidance to the model, as a client would, and the bare calls
use the same values (no negative prompt for FLUX.1, whose guidance is distilled; an
empty one for SD 3.5, as the spool runs it). `--quantize` fits their transformer and
T5 encoder as `runner.quantize` does: `fp8` casts the built pipeline's storage
(`engine.memory.cast_to_fp8`); `nf4` saves the built pipeline as a diffusers folder in
the models directory and has the engine load it from there with bitsandbytes
(`save_s`, `load_s`), as a runner loads a model. `peak_gpu_memory_gib` is
`torch.cuda.max_memory_allocated` in each phase. `tiny-flux` and `tiny-sd3` are
tiny FLUX.1 dev and SD 3.x models that run the flow path (saved and loaded back, as
`nf4` does, without quantizing) on a CPU: a dry run, saying nothing of speed.

With `--compile` (SD shapes), (a) and (b) run eager first; then the engine compiles
the pipeline (fused QKV, channels_last, torch.compile of the UNet and VAE decoder, CUDA
graphs on a GPU) and warms it up for the size and batch sizes 1, 2, 4, ... `--max-batch`
(timed as `compile_s`), and (b) is measured again compiled (`bare_batched_compiled`)
before (c), so (c)/(b) compares like with like.

With `--mix N` (SD shapes), after (c): N jobs, plain, LoRA (a random LoRA of the shape's
architecture, at 0.8) and img2img (strength 0.6) in turn, through the runner against
the engine called directly on the runner's batches (`mix.ratio_runner_to_direct`,
target >= 0.95; per kind in `direct_jobs_per_s_by_kind`: compiled, LoRA batches run
eager), and one LoRA call loaded from disk against one from the cache (`lora_call_ms`).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import diffusers
import mix  # bench/mix.py, beside this script
import torch

from alice_spool import migrate
from alice_spool.database import Database
from alice_spool.engine import caching
from alice_spool.engine.device import Placement, choose, describe
from alice_spool.engine.generate import quiet_libraries
from alice_spool.engine.memory import cast_to_fp8
from alice_spool.engine.resident import Engine
from alice_spool.engine.schedulers import flow_scheduler, make_scheduler, stock_scheduler
from alice_spool.engine.shapes import (
    FAMILY,
    FLOW_SHAPES,
    NATIVE,
    SHAPES,
    build_pipeline,
    write_model_folder,
)
from alice_spool.engine.speed import batch_buckets
from alice_spool.engine.tiny import build_tiny_pipeline, create_tiny
from alice_spool.inbox import Inbox
from alice_spool.library.families import defaults
from alice_spool.library.registry import FLOW_SCHEDULERS, ModelRegistry
from alice_spool.memory_plan import CACHES, MemoryChoice
from alice_spool.outbox import RESULT, Outbox
from alice_spool.runner import Runner, RunnerOptions
from alice_spool.spec import BUILTIN_DEFAULTS, DEFAULT_GUIDANCE_SCALE, DEFAULT_SCHEDULER
from alice_spool.store import Store

log = logging.getLogger("bench.gpu")

GIB = 1024**3
# Tiny models of the flow families, for a dry run of the flow path on a CPU.
TINY_FLOW = {"tiny-flux": ("flux", "dev"), "tiny-sd3": ("sd3", None)}
# Every shape's family and variant, for its defaults (families.py).
FAMILIES = {**FAMILY, "tiny": ("sd1", None), **TINY_FLOW}
FLOW = (*FLOW_SHAPES, *TINY_FLOW)
QUANTIZE = ("none", "fp8", "nf4")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Peaks:
    """The most GPU memory allocated in each phase (`torch.cuda.max_memory_allocated`,
    GiB); nothing off CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.gib: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.device.type != "cuda":
            yield
            return
        sync(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        yield
        sync(self.device)
        self.gib[name] = round(torch.cuda.max_memory_allocated(self.device) / GIB, 2)


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
    spool's schedulers (per-image noise), or `stock` as diffusers makes them. A flow
    model runs its own Euler (deterministic: the spool's and diffusers' are one)."""
    calls = max(1, images // per_call)
    started = time.perf_counter()
    for call in range(calls):
        seeds = [1000 + call * per_call + i for i in range(per_call)]
        if args.flow:
            pipeline.scheduler = flow_scheduler(args.scheduler, scheduler_config)
        elif stock:
            pipeline.scheduler = stock_scheduler(args.scheduler, scheduler_config)
        else:
            pipeline.scheduler = make_scheduler(args.scheduler, scheduler_config, seeds)
        # FLUX.1's guidance is distilled: a negative prompt would need true CFG, which
        # the spool runs only when a request asks for it (these requests do not).
        negative = {} if args.family == "flux" else {"negative_prompt": [""] * per_call}
        with torch.inference_mode():
            pipeline(
                prompt=[f"a lighthouse at dusk #{s}" for s in seeds],
                **negative,
                width=args.size,
                height=args.size,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance_scale,
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
        looked up at most every 0.1 s, then only files are checked) and its job is
        recorded as finished."""
        deadline = time.monotonic() + timeout
        unresolved = set(keys)
        files: list[Path] = []
        looked_up = 0.0
        while unresolved or files:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(unresolved) + len(files)} jobs not finished")
            if unresolved and time.monotonic() - looked_up > 0.1:
                looked_up = time.monotonic()
                for job in self.store.jobs.list_jobs(limit=10_000).jobs:
                    if job.idempotency_key in unresolved:
                        unresolved.discard(job.idempotency_key)
                        files.append(self.outbox.job_dir(job.id) / RESULT)
            files = [f for f in files if not f.exists()]
            time.sleep(0.01)
        # and recorded as finished (the runner records a job's end after its outbox
        # directory is written)
        wanted = set(keys)
        while any(
            job.status.value in ("queued", "running")
            for job in self.store.jobs.list_jobs(limit=10_000).jobs
            if job.idempotency_key in wanted
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("jobs written but not recorded as finished")
            time.sleep(0.01)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, with each shape's defaults filled in; what cannot run refused
    (argparse's error: a usage line and exit status 2) before anything is built."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=[*SHAPES, "tiny", *TINY_FLOW], default="sd15")
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE,
        default="none",
        help="the flow shapes' transformer and T5 encoder, as runner.quantize (default: none)",
    )
    parser.add_argument(
        "--cache",
        choices=CACHES,
        default="none",
        help="the flow shapes' step cache, as runner.cache (default: none)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=None, help="default: the shape's native")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="default: 25 (SDXL 30; FLUX.1 dev and SD 3.5 28, schnell 4)",
    )
    parser.add_argument(
        "--scheduler", default=None, help=f"default: {DEFAULT_SCHEDULER} (flow shapes: euler)"
    )
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--one-at-a-time", type=int, default=8, help="images for (a)")
    parser.add_argument("--batches", default="8,16", help="images per call for (b)")
    parser.add_argument("--max-batch", type=int, default=None, help="default: best of (b)")
    parser.add_argument("--compile", action="store_true", help="SD shapes only")
    parser.add_argument(
        "--stock", action="store_true", help="also (a) and (b) with diffusers' own schedulers"
    )
    parser.add_argument(
        "--mix", type=int, default=0, help="plain/LoRA/img2img jobs after (c) (0: none; SD only)"
    )
    parser.add_argument("--mix-rounds", type=int, default=1)
    parser.add_argument("--dir", default=None, help="where the database, outbox and models go")
    args = parser.parse_args(argv)

    args.flow = args.shape in FLOW
    args.family, args.variant = FAMILIES[args.shape]
    if args.flow:
        # What runs only a UNet, or only the SD schedulers, is refused by name.
        if args.compile:
            parser.error(
                f"--compile compiles a UNet (alice_spool/engine/speed.py); {args.shape} is "
                "a transformer model, which is not compiled yet: leave --compile out"
            )
        if args.mix:
            parser.error(
                f"--mix writes LoRAs for a UNet and runs SD img2img; {args.shape} is a "
                "transformer model: leave --mix out"
            )
        if args.stock:
            parser.error(
                f"--stock compares the SD schedulers' per-image noise with diffusers' own; "
                f"{args.shape} runs diffusers' own flow-matching Euler already"
            )
    if args.cache != "none" and not args.flow:
        parser.error(f"--cache {args.cache} is for the flow shapes (a UNet has no step cache)")
    if args.quantize != "none" and args.shape not in FLOW_SHAPES:
        parser.error(
            f"--quantize {args.quantize} is for the flow shapes on a GPU "
            f"({', '.join(FLOW_SHAPES)}), not {args.shape}"
        )
    if args.shape in FLOW_SHAPES:
        if not torch.cuda.is_available():
            parser.error(
                f"--shape {args.shape} needs a CUDA GPU: it builds the real model "
                "(a transformer of 8 to 12 billion parameters and T5-XXL, 27 to 34 GB in "
                "bfloat16) on the GPU, and torch sees no CUDA device here; "
                "for a dry run on this machine use --shape tiny-flux or tiny-sd3"
            )
        if not args.device.startswith(("auto", "cuda")):
            parser.error(f"--shape {args.shape} runs on CUDA only, not --device {args.device}")
    if args.quantize == "nf4" and importlib.util.find_spec("bitsandbytes") is None:
        parser.error(
            "--quantize nf4 loads the model with bitsandbytes, which is not installed: "
            "pip install -c constraints.txt 'alice-spool[gpu]'"
        )

    steps, guidance = defaults(args.family, args.variant)
    if args.flow:
        args.scheduler = args.scheduler or FLOW_SCHEDULERS[0]
        if args.scheduler not in FLOW_SCHEDULERS:
            parser.error(
                f"--scheduler {args.scheduler} cannot run {args.shape}; these can: "
                f"{', '.join(FLOW_SCHEDULERS)}"
            )
        args.steps = args.steps or steps
        args.guidance_scale = guidance  # as the spool runs a request that gives none
    else:
        args.scheduler = args.scheduler or DEFAULT_SCHEDULER
        args.steps = args.steps or (30 if args.shape == "sdxl" else 25)
        args.guidance_scale = DEFAULT_GUIDANCE_SCALE
    tiny = args.shape == "tiny" or args.shape in TINY_FLOW
    args.size = args.size or (64 if tiny else NATIVE[args.shape])
    return args


def load_model(
    args: argparse.Namespace,
    root: Path,
    placement: Placement,
    peaks: Peaks,
    result: dict[str, Any],
    **engine_options: Any,
) -> tuple[Engine, Any]:
    """The engine, with the shape's model resident (its `Loaded`); the times it took in
    `result`."""
    models = root / "models"
    model = f"sd/{args.shape}"
    started = time.perf_counter()
    if args.shape == "tiny":
        create_tiny(models, "tiny")
        engine = Engine(ModelRegistry(models), placement, **engine_options)
        loaded = engine.ensure(model)
        result["build_s"] = round(time.perf_counter() - started, 1)
        return engine, loaded
    if args.quantize == "nf4" or args.shape in TINY_FLOW:
        # The production path: the built pipeline saved as a diffusers folder in the
        # models directory, which the registry lists as it lists any model, and the
        # engine loads it from there as a runner does (Engine.ensure -> generate.load,
        # with runner.quantize = nf4: bitsandbytes quantizes the transformer and T5 as
        # they load). The tiny flow models take this path too, without quantizing.
        with peaks.phase("build"):
            if args.shape in TINY_FLOW:
                pipeline = build_tiny_pipeline(root, args.family, args.variant)
            else:
                pipeline = build_pipeline(
                    args.shape, root, device=placement.device, dtype=placement.dtype
                )
        result["build_s"] = round(time.perf_counter() - started, 1)
        log.info("built %s on %s in %.1f s", args.shape, placement.label, result["build_s"])
        started = time.perf_counter()
        pipeline.save_pretrained(models / args.shape, safe_serialization=True)
        result["save_s"] = round(time.perf_counter() - started, 1)
        log.info("saved %s in %.1f s", args.shape, result["save_s"])
        del pipeline  # (its GPU memory is freed before the quantized copy loads)
        gc.collect()
        if placement.device.type == "cuda":
            torch.cuda.empty_cache()
        memory = MemoryChoice(quantize=args.quantize, offload="none", cache=args.cache)
        engine = Engine(ModelRegistry(models), placement, memory=memory, **engine_options)
        started = time.perf_counter()
        with peaks.phase("load"):
            loaded = engine.ensure(model)
        result["load_s"] = round(time.perf_counter() - started, 1)
        log.info("loaded %s (%s) in %.1f s", model, loaded.memory_mode, result["load_s"])
        return engine, loaded
    # The model built in this process made resident as it is (bf16, or its storage
    # cast to fp8 as runner.quantize = fp8 does), listed through the configs alone.
    write_model_folder(args.shape, models / args.shape)
    engine = Engine(ModelRegistry(models), placement, **engine_options)
    with peaks.phase("build"):
        pipeline = build_pipeline(args.shape, root, device=placement.device, dtype=placement.dtype)
        if args.quantize == "fp8":
            cast_to_fp8(pipeline, args.family, placement.dtype)
        loaded = engine.adopt(model, pipeline)
        loaded.cache = caching.enable(pipeline, args.cache, placement.dtype)
    result["build_s"] = round(time.perf_counter() - started, 1)
    log.info("built %s on %s in %.1f s", args.shape, placement.label, result["build_s"])
    return engine, loaded


def main() -> None:
    args = parse_arguments()
    batches = [int(b) for b in args.batches.split(",")]

    quiet_libraries()
    # Each phase's figure goes to stderr as it is measured, so that a run cut short by a
    # time limit still tells what it got; the JSON at the end goes to stdout.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)
    placement = choose(args.device)
    if args.flow and placement.device.type == "cuda":
        # FLUX.1 and SD 3.5 are released in bfloat16, which they need: their activations
        # (T5's above all) overflow float16.
        placement = Placement(placement.device, torch.bfloat16)
    device = placement.device
    peaks = Peaks(device)
    weights = "tiny model" if args.shape == "tiny" or args.shape in TINY_FLOW else "random"
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
            "family": args.family,
            "variant": args.variant,
            "weights": "random, real architecture" if weights == "random" else weights,
            "quantize": args.quantize,
            "cache": args.cache,
            "size": f"{args.size}x{args.size}",
            "steps": args.steps,
            "scheduler": args.scheduler,
            "guidance_scale": args.guidance_scale,
            "dtype": str(placement.dtype).removeprefix("torch."),
            "jobs": args.jobs,
            "compile": args.compile,
        },
    }
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        models = root / "models"
        model = f"sd/{args.shape}"
        engine, loaded = load_model(
            args,
            root,
            placement,
            peaks,
            result,
            max_batch=max(batches),
            compile=False,
            compile_sizes=[(args.size, args.size)],
        )
        if device.type == "cuda":
            resident = torch.cuda.memory_allocated(device) / GIB
            result["resident_gpu_memory_gib"] = round(resident, 2)
        pipeline = loaded.pipeline
        config = loaded.scheduler_config
        if args.mix:  # LoRAs for the mix, shaped from the eager UNet (before any compiling)
            for name, seed in (("bench-lora", 7), ("bench-lora-2", 8)):
                mix.write_random_lora(pipeline.unet, models, name, seed=seed)

        bare(pipeline, args, device, per_call=1, images=2, scheduler_config=config)  # warm
        speeds: dict[str, float] = {}
        with peaks.phase("a_one_at_a_time"):
            speeds["a"] = bare(
                pipeline,
                args,
                device,
                per_call=1,
                images=args.one_at_a_time,
                scheduler_config=config,
            )
        log.info("(a) bare, one at a time: %.3f images/s", speeds["a"])
        by_batch = {}
        for batch in batches:
            with peaks.phase(f"b_{batch}_per_call"):
                bare(pipeline, args, device, per_call=batch, images=batch, scheduler_config=config)
                by_batch[batch] = bare(
                    pipeline,
                    args,
                    device,
                    per_call=batch,
                    images=2 * batch,
                    scheduler_config=config,
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
            finished = spool.store.jobs.list_jobs(limit=10_000).jobs
            batches_run = {
                (j.result or {}).get("timings", {}).get("batch_images") for j in finished
            }
            result["spool_batch_images"] = sorted(b for b in batches_run if b)
            # The guidance the spool gave its jobs (the family's, as the bare calls ran).
            result["spool_guidance_scale"] = sorted({j.spec.guidance_scale for j in finished})
            # Random weights can overflow in fp16 or bf16 (NaN images fail their jobs):
            # the time is still the GPU's work, but say so.
            outcomes: dict[str, int] = {}
            for job in finished:
                key = job.error_code or job.status.value
                outcomes[key] = outcomes.get(key, 0) + 1
            result["spool_jobs"] = outcomes
            if set(outcomes) != {"succeeded"}:
                log.warning("not every job succeeded: %s", outcomes)

        with peaks.phase("c_spool"):
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
    if peaks.gib:
        result["peak_gpu_memory_gib"] = peaks.gib
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
