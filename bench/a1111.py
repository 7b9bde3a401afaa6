"""What AUTOMATIC1111's door and its job features cost: every A1111 sampler and schedule
type (UNet calls and seconds per image), hires fix against plain txt2img, and the door's
own overhead (the options object over HTTP, a txt2img body's translation). Prints one
JSON object.

    python bench/a1111.py [--shape tiny|sd15] [--size N] [--steps 20] [--repeat 3]
                          [--parts samplers,schedules,hires,door] [--requests 300]

The engine parts run in this process on the CPU, on the tiny model (random weights) or
on SD 1.5's architecture with random weights (`--shape sd15`, 256x256 by default; on a
2-core CPU that takes minutes a variant: choose `--parts` and few `--steps`). UNet
calls are counted with a forward hook on the pipeline's UNet (with classifier-free
guidance one call carries both halves). Each variant runs once untimed (first calls
import and build what they need), then `--repeat` times, the variants interleaved in a
rotating order; seconds are medians, torch on one CPU thread unless `--threads`. The
door part starts a live `alice-spool api` server (its own process, SQLite, no runner,
an API key configured) and calls it from one keep-alive connection, one request at a
time, as an A1111 client does.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import torch
from api import free_port, percentile  # bench/api.py, beside this script

from alice_spool import samplers
from alice_spool.api.dialects.a1111.options import DEFAULTS, OwnerOptions
from alice_spool.api.dialects.a1111.translate import native
from alice_spool.engine.device import choose
from alice_spool.engine.generate import Loaded, generate, load, quiet_libraries
from alice_spool.engine.shapes import build_pipeline
from alice_spool.engine.tiny import create_tiny
from alice_spool.spec import JobSpec, parse_spec

# diffusers' KDPM2 schedulers pass tensors to numpy functions, which NumPy 2 warns about
# at every timestep.
warnings.filterwarnings("ignore", "__array_wrap__ must accept context", DeprecationWarning)

PARTS = ("samplers", "schedules", "hires", "door")
SAMPLER_SCHEDULE = "Karras"  # every sampler is measured on this schedule type
SCHEDULE_SAMPLER = "DPM++ 2M"  # every schedule type is measured with this sampler
HIRES_SAMPLER = samplers.from_a1111("DPM++ 2M", "Karras")
HIRES_BATCH = 4
KEY = "bench-a1111-key"

# SillyTavern's txt2img body with its default settings (DDIM, normal), as it sends it.
SILLYTAVERN: dict[str, Any] = {
    "url": "http://127.0.0.1:7860", "auth": f"me:{KEY}",
    "prompt": "best quality, absurdres, aesthetic, a lighthouse at dusk",
    "negative_prompt": "lowres, bad anatomy, bad hands, text, error, cropped, worst quality",
    "sampler_name": "DDIM", "scheduler": "normal",
    "steps": 20, "cfg_scale": 7, "width": 512, "height": 512,
    "restore_faces": False, "enable_hr": False, "hr_upscaler": "Latent", "hr_scale": 1.0,
    "hr_additional_modules": [], "denoising_strength": 0.7, "hr_second_pass_steps": 0,
    "override_settings": {"CLIP_stop_at_last_layers": 1},
    "override_settings_restore_afterwards": True, "clip_skip": 1,
    "save_images": True, "send_images": True,
    "do_not_save_grid": False, "do_not_save_samples": False,
}  # fmt: skip


class UNetCalls:
    """Counts the UNet's forward calls (a hook on the module, which the img2img pipeline
    of a hires job's second pass shares)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.count = 0
        unet.register_forward_hook(self._called)

    def _called(self, *_: Any) -> None:
        self.count += 1


def median(values: Sequence[float], digits: int = 3) -> float:
    return round(statistics.median(values), digits)


def load_model(args: argparse.Namespace, root: Path) -> Loaded:
    placement = choose("cpu")
    if args.shape == "tiny":
        return load(create_tiny(root / "models"), "sd/tiny", placement)
    quiet_libraries()
    pipeline = build_pipeline("sd15", root, device="cpu", dtype=placement.dtype)
    pipeline.set_progress_bar_config(disable=True)
    return Loaded("sd/sd15", pipeline, placement, 512, "full", pipeline.scheduler.config)


def interleaved(
    variants: dict[str, Callable[[], int]], repeat: int, calls: UNetCalls
) -> dict[str, tuple[int, list[float]]]:
    """Each variant (a function returning how many images it made) once untimed, then
    `repeat` rounds in a rotating order: {name: (UNet calls per image, [s per image])}."""
    results: dict[str, tuple[int, list[float]]] = {}
    for name, run in variants.items():
        before = calls.count
        images = run()
        results[name] = ((calls.count - before) // images, [])
    names = list(variants)
    for round_ in range(repeat):
        shift = round_ * len(names) // max(repeat, 1)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            images = variants[name]()
            results[name][1].append((time.perf_counter() - started) / images)
    return results


def job(args: argparse.Namespace, scheduler: str, **fields: Any) -> JobSpec:
    request = {
        "prompt": "a lighthouse at dusk",
        "steps": args.steps,
        "seed": 7,
        "width": args.size,
        "height": args.size,
        "scheduler": scheduler,
    }
    return parse_spec({**request, **fields})


def one_image(loaded: Loaded, spec: JobSpec) -> Callable[[], int]:
    def run() -> int:
        output = generate(loaded, [spec])
        return output.image_count

    return run


def measure_samplers(loaded: Loaded, calls: UNetCalls, args: argparse.Namespace) -> dict[str, Any]:
    names = {
        s["name"]: samplers.from_a1111(s["name"], SAMPLER_SCHEDULE)
        for s in samplers.a1111_samplers()
    }
    variants = {a1111: one_image(loaded, job(args, name)) for a1111, name in names.items()}
    measured = interleaved(variants, args.repeat, calls)
    euler_calls = measured["Euler"][0]
    euler_s = median(measured["Euler"][1], 4)
    by_sampler = {
        a1111: {
            "scheduler": names[a1111],
            "unet_calls": calls,
            "calls_per_step": round(calls / args.steps, 2),
            "calls_relative_to_euler": round(calls / euler_calls, 2),
            "s_per_image": median(seconds),
            "s_relative_to_euler": round(statistics.median(seconds) / euler_s, 2),
        }
        for a1111, (calls, seconds) in measured.items()
    }
    return {
        "schedule": SAMPLER_SCHEDULE,
        "by_sampler": by_sampler,
        "about_two_calls_a_step": [
            name for name, row in by_sampler.items() if row["calls_relative_to_euler"] >= 1.5
        ],
    }


def measure_schedules(loaded: Loaded, calls: UNetCalls, args: argparse.Namespace) -> dict[str, Any]:
    names = {
        s["label"]: samplers.from_a1111(SCHEDULE_SAMPLER, s["label"])
        for s in samplers.a1111_schedules()
    }
    variants = {label: one_image(loaded, job(args, name)) for label, name in names.items()}
    measured = interleaved(variants, args.repeat, calls)
    seconds = [statistics.median(s) for _, s in measured.values()]
    return {
        "sampler": SCHEDULE_SAMPLER,
        "by_schedule": {
            label: {"scheduler": names[label], "unet_calls": calls, "s_per_image": median(s)}
            for label, (calls, s) in measured.items()
        },
        "same_unet_calls": len({calls for calls, _ in measured.values()}) == 1,
        "s_slowest_to_fastest": round(max(seconds) / min(seconds), 2),
    }


def measure_hires(loaded: Loaded, calls: UNetCalls, args: argparse.Namespace) -> dict[str, Any]:
    target = args.size * 2

    def hires(upscaler: str, seed: int = 7) -> JobSpec:
        settings = {"scale": 2, "upscaler": upscaler, "steps": args.steps, "strength": 0.5}
        return job(args, HIRES_SAMPLER, seed=seed, hires=settings)

    batch = [hires("Latent", seed=7 + i) for i in range(HIRES_BATCH)]

    def batched() -> int:
        return generate(loaded, batch).image_count

    def one_at_a_time() -> int:
        return sum(generate(loaded, [spec]).image_count for spec in batch)

    variants = {
        f"plain_{args.size}": one_image(loaded, job(args, HIRES_SAMPLER)),
        f"plain_{target}": one_image(loaded, job(args, HIRES_SAMPLER, width=target, height=target)),
        "hires_latent": one_image(loaded, hires("Latent")),
        "hires_lanczos": one_image(loaded, hires("Lanczos")),
        f"hires_latent_{HIRES_BATCH}_in_one_call": batched,
        f"hires_latent_{HIRES_BATCH}_one_at_a_time": one_at_a_time,
    }
    measured = interleaved(variants, args.repeat, calls)
    at_target = statistics.median(measured[f"plain_{target}"][1])
    together = statistics.median(measured[f"hires_latent_{HIRES_BATCH}_in_one_call"][1])
    alone = statistics.median(measured[f"hires_latent_{HIRES_BATCH}_one_at_a_time"][1])
    return {
        "scheduler": HIRES_SAMPLER,
        "first_pass": f"{args.size}x{args.size}",
        "target": f"{target}x{target}",
        "second_pass": {"steps": args.steps, "strength": 0.5},
        "by_variant": {
            name: {"unet_calls_per_image": calls, "s_per_image": median(s)}
            for name, (calls, s) in measured.items()
        },
        "hires_to_plain_at_target": {
            name: round(statistics.median(measured[name][1]) / at_target, 2)
            for name in ("hires_latent", "hires_lanczos")
        },
        "batched_speedup_per_image": round(alone / together, 2),
    }


def translation(body: dict[str, Any], rounds: int = 7, per_round: int = 300) -> dict[str, Any]:
    """Microseconds to turn an A1111 txt2img body into a job spec, as the route does
    (override_settings applied to the owner's options, `native`, `parse_spec`): the
    median of `rounds` rounds, each timing `per_round` bodies."""
    stored = OwnerOptions(None, dict(DEFAULTS))

    def once() -> JobSpec:
        options = stored.overridden(body.get("override_settings") or {})
        return parse_spec(native(body, img2img=False, options=options))

    spec = once()
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(per_round):
            once()
        timings.append((time.perf_counter() - started) / per_round * 1e6)
    return {
        "us_per_body": median(timings, 1),
        "us_per_body_fastest_round": round(min(timings), 1),
        "spec": {"scheduler": spec.scheduler, "steps": spec.steps, "hires": spec.hires is not None},
    }


class Client:
    """One keep-alive connection speaking as an A1111 client does: HTTP basic with the
    key as the password, JSON bodies; each answer must be a 200."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        token = base64.b64encode(f"me:{KEY}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[float, bytes]:
        started = time.perf_counter()
        self.connection.request(method, path, body=body, headers=self.headers)
        answer = self.connection.getresponse()
        payload = answer.read()
        elapsed = (time.perf_counter() - started) * 1000
        if answer.status != 200:
            raise RuntimeError(f"{method} {path}: {answer.status} {payload[:200]!r}")
        return elapsed, payload


def measure_door(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.support.fake_model import write_fake_model

        write_fake_model(root / "var" / "models" / "tiny")  # listed, never loaded
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ALICE_")}
        env.update(
            ALICE_PATHS_DATA_DIR=str(root / "var"),
            ALICE_INBOX_ENABLED="false",
            ALICE_LOGGING_LEVEL="WARNING",
            ALICE_SERVER_API_KEYS=f"bench={KEY}",
        )
        server = subprocess.Popen(
            [sys.executable, "-m", "alice_spool", "api", "--port", str(port)], env=env, cwd=root
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            return http_latencies(port, args)
        finally:
            server.terminate()
            server.wait(30)


def http_latencies(port: int, args: argparse.Namespace) -> dict[str, Any]:
    client = Client(port)
    _, payload = client.call("GET", "/sdapi/v1/options")
    options = json.loads(payload)
    whole = json.dumps(options).encode()
    requests: dict[str, Callable[[], float]] = {
        "get_options": lambda: client.call("GET", "/sdapi/v1/options")[0],
        "post_whole_options": lambda: client.call("POST", "/sdapi/v1/options", whole)[0],
        "get_samplers": lambda: client.call("GET", "/sdapi/v1/samplers")[0],
    }
    for request in requests.values():  # warm up
        for _ in range(20):
            request()
    latencies: dict[str, list[float]] = {name: [] for name in requests}
    rounds = max(args.repeat, 1)
    for round_ in range(rounds):  # interleaved in blocks, rotating
        names = list(requests)
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            for _ in range(max(args.requests // rounds, 1)):
                latencies[name].append(requests[name]())
    client.connection.close()
    return {
        "options_keys": len(options),
        "options_bytes": len(whole),
        "http": {
            name: {
                "requests": len(values),
                "p50_ms": median(values, 2),
                "p99_ms": round(percentile(values, 0.99), 2),
            }
            for name, values in latencies.items()
        },
    }


def translations() -> dict[str, Any]:
    hires = {**SILLYTAVERN, "enable_hr": True, "hr_scale": 2.0, "denoising_strength": 0.5}
    return {
        "txt2img_translation": {
            "sillytavern_default": translation(SILLYTAVERN),
            "sillytavern_hires_on": translation(hires),
        }
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["tiny", "sd15"], default="tiny")
    parser.add_argument("--size", type=int, default=None, help="tiny: 64, sd15: 256")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--parts", default=",".join(PARTS), help=",".join(PARTS))
    parser.add_argument("--requests", type=int, default=300, help="per HTTP request kind")
    # One thread by default: on a shared 2-core machine a neighbour's busy process stalls
    # every two-thread operation at its barrier (runs of the same sampler differed 15x).
    parser.add_argument("--threads", type=int, default=1, help="torch's CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.size = args.size or (64 if args.shape == "tiny" else 256)
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part {unknown[0]!r}; choose from {', '.join(PARTS)}")

    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "a1111",
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "shape": args.shape,
        "size": args.size,
        "steps": args.steps,
        "repeat": args.repeat,
    }
    part_s: dict[str, float] = {}
    engine_parts = [part for part in parts if part != "door"]
    if engine_parts:
        with tempfile.TemporaryDirectory() as tmp:
            loaded = load_model(args, Path(tmp))
            calls = UNetCalls(loaded.pipeline.unet)
            measures = {
                "samplers": measure_samplers,
                "schedules": measure_schedules,
                "hires": measure_hires,
            }
            for part in engine_parts:
                began = time.perf_counter()
                result[part] = measures[part](loaded, calls, args)
                part_s[part] = round(time.perf_counter() - began, 1)
    if "door" in parts:
        began = time.perf_counter()
        result["door"] = {**measure_door(args), **translations()}
        part_s["door"] = round(time.perf_counter() - began, 1)
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds_by_part"] = part_s
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
