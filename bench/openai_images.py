"""What OpenAI's images door costs beyond the generation: each `output_format` and
`output_compression` (encoding time and bytes for a picture of 512 and 1024 pixels a
side), and the door's own work over HTTP (the model list with its aliases, an alias
retrieved, a request refused after its fields and model were checked, an image served
as PNG and as JPEG / WebP made when fetched). Prints one JSON object.

    python bench/openai_images.py [--sizes 512,1024] [--repeat 7] [--requests 300]
                                  [--parts formats,door]

The formats part runs in this process: a PNG written as the runner writes it (its
infotext in a text chunk) of a synthetic picture (colour noise blurred by 1.5 pixels
over a gradient: its PNG is about as large as a generated image's, 1.2 MB at 1024
pixels a side, where pure noise would be larger and a smooth one far smaller), converted
`--repeat` times each, medians. The door part starts a live `alice-spool api` server
(its own process, SQLite, no runner, an API key and two aliases configured, a
succeeded job with one 512x512 image put in its outbox) and calls it from one
keep-alive connection, one request at a time, the requests interleaved in rotating
blocks; milliseconds, p50 and p95.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from api import free_port, percentile  # bench/api.py, beside this script
from PIL import Image, ImageFilter, PngImagePlugin

from alice_spool.api.edge.formats import convert
from alice_spool.api.edge.services import image_url

PARTS = ("formats", "door")
KEY = "bench-openai-key"
# (format, compression) pairs measured; PNG ignores compression.
VARIANTS = (("png", 100), ("jpeg", 100), ("jpeg", 80), ("webp", 100), ("webp", 80))
INFOTEXT = "a red fox in fresh snow\nNegative prompt: blurry\nSteps: 25, Seed: 7, Size: 512x512"


def picture(side: int) -> bytes:
    """A PNG as the runner writes one, of a photo-like synthetic picture."""
    noise = Image.merge("RGB", [Image.effect_noise((side, side), 64) for _ in range(3)])
    smooth = noise.filter(ImageFilter.GaussianBlur(1.5))
    gradient = Image.linear_gradient("L").resize((side, side)).convert("RGB")
    image = Image.blend(smooth, gradient, 0.5)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", INFOTEXT)
    out = io.BytesIO()
    image.save(out, "PNG", pnginfo=info)
    return out.getvalue()


def measure_formats(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for side in args.sizes:
        png = picture(side)
        rows = {}
        for kind, quality in VARIANTS:
            convert(png, kind, quality)  # warm up
            seconds = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                made = convert(png, kind, quality)
                seconds.append(time.perf_counter() - started)
            rows[f"{kind}@{quality}"] = {
                "ms": round(statistics.median(seconds) * 1000, 2),
                "bytes": len(made),
                "of_png": round(len(made) / len(png), 3),
                "base64_bytes": len(base64.b64encode(made)),
            }
        results[f"{side}x{side}"] = rows
    return results


def served_job(root: Path) -> str:
    """A succeeded job with one image in the outbox, as a runner leaves it: its URL."""
    from alice_spool import migrate
    from alice_spool.config import load_settings
    from alice_spool.spec import parse_spec
    from alice_spool.store import Store

    settings = load_settings(None, env={}, overrides={"paths.data_dir": str(root / "var")})
    store = Store.open(settings.database_url)
    migrate.upgrade(store.db)
    queued = store.jobs.enqueue(parse_spec({"prompt": "a fox", "model": "sd/tiny"}), source="cli")
    (taken,) = store.leases.claim_batch("bench", 1, lease_s=30)
    folder = root / "var" / "outbox" / taken.id
    folder.mkdir(parents=True)
    name = f"{taken.id}-0.png"
    (folder / name).write_bytes(picture(512))
    done = store.leases.succeed(taken.id, "bench", {"images": [{"file": name}]})
    store.close()
    assert done.id == queued.job.id
    return image_url("", name, done.image_secret)


class Client:
    """One keep-alive connection with the key; each answer must have its status."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: bytes | None = None, status: int = 200) -> float:
        started = time.perf_counter()
        self.connection.request(method, path, body=body, headers=self.headers)
        answer = self.connection.getresponse()
        payload = answer.read()
        elapsed = (time.perf_counter() - started) * 1000
        if answer.status != status:
            raise RuntimeError(f"{method} {path}: {answer.status} {payload[:200]!r}")
        return elapsed


def measure_door(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.support.fake_model import write_fake_model

        write_fake_model(root / "var" / "models" / "tiny")  # listed, never loaded
        url = served_job(root)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ALICE_")}
        env.update(
            ALICE_PATHS_DATA_DIR=str(root / "var"),
            ALICE_INBOX_ENABLED="false",
            ALICE_LOGGING_LEVEL="WARNING",
            ALICE_SERVER_API_KEYS=f"bench={KEY}",
            ALICE_MODELS_ALIASES="dall-e-3=sd/tiny,house-style=tiny",
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
            return http_latencies(port, url, args)
        finally:
            server.terminate()
            server.wait(30)


def http_latencies(port: int, url: str, args: argparse.Namespace) -> dict[str, Any]:
    client = Client(port)
    refused = json.dumps({"prompt": "x", "model": "dall-e-3", "background": "transparent"})
    stem = url.removesuffix(".png")
    requests: dict[str, Callable[[], float]] = {
        "list_models": lambda: client.call("GET", "/v1/models"),
        "retrieve_alias": lambda: client.call("GET", "/v1/models/dall-e-3"),
        "generation_refused": lambda: client.call(
            "POST", "/v1/images/generations", refused.encode(), status=400
        ),
        "image_png": lambda: client.call("GET", url),
        "image_jpeg": lambda: client.call("GET", f"{stem}.jpeg"),
        "image_webp_80": lambda: client.call("GET", f"{stem}.webp?compression=80"),
    }
    for request in requests.values():  # warm up
        for _ in range(10):
            request()
    latencies: dict[str, list[float]] = {name: [] for name in requests}
    rounds = max(args.repeat, 1)
    for round_ in range(rounds):
        names = list(requests)
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            for _ in range(max(args.requests // rounds, 1)):
                latencies[name].append(requests[name]())
    client.connection.close()
    return {
        name: {
            "p50_ms": round(percentile(values, 0.5), 2),
            "p95_ms": round(percentile(values, 0.95), 2),
            "n": len(values),
        }
        for name, values in latencies.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--parts", default=",".join(PARTS))
    args = parser.parse_args()
    args.sizes = [int(side) for side in args.sizes.split(",")]
    parts = [part for part in args.parts.split(",") if part]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    result: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "args": {"sizes": args.sizes, "repeat": args.repeat, "requests": args.requests},
    }
    if "formats" in parts:
        result["formats"] = measure_formats(args)
    if "door" in parts:
        result["door"] = measure_door(args)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
