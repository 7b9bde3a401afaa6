"""A URL download through the download manager against a plain streaming copy of the
same URL, in the same run. Prints one JSON object.

    python bench/downloads.py [--size-mib 1024] [--rounds 2] [--dir DIR]

A local HTTP server on 127.0.0.1 serves one file of `--size-mib` MiB (a safetensors
checkpoint: the manager installs only those) from disk. `plain`: httpx streams it into
a file, nothing else. `manager`: the file is queued as a download and run by a
`DownloadWorker` (the address rules, the SHA-256 streamed while writing, free-space
checks, progress written to the row at most 4 times a second, the safetensors header
read, fsync, installed by link). The two alternate for `--rounds` rounds; the best of
each is compared. Target: manager >= 0.9 x plain.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import struct
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from alice_spool import migrate
from alice_spool.downloads.sources import SourceSettings
from alice_spool.downloads.worker import DownloadWorker, WorkerOptions
from alice_spool.store import Store

CHUNK = 1 << 20


def write_checkpoint(path: Path, size: int) -> None:
    """A safetensors file of about `size` bytes: one uint8 tensor of random bytes."""
    length = size - 200
    header = json.dumps(
        {
            "model.diffusion_model.weight": {
                "dtype": "U8",
                "shape": [length],
                "data_offsets": [0, length],
            }
        }
    ).encode()
    header += b" " * (-len(header) % 8)
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(header)) + header)
        block = os.urandom(CHUNK)
        left = length
        while left:
            out.write(block[: min(left, CHUNK)])
            left -= min(left, CHUNK)


def serve_file(path: Path) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            size = path.stat().st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            with path.open("rb") as source:
                shutil.copyfileobj(source, self.wfile, CHUNK)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/base.safetensors"


def plain(url: str, target: Path) -> float:
    started = time.perf_counter()
    with (
        httpx.Client(timeout=60) as client,
        client.stream("GET", url) as answer,
        target.open("wb") as out,
    ):
        for chunk in answer.iter_bytes():
            out.write(chunk)
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def manager(url: str, root: Path, round_: int) -> float:
    store = Store.open(f"sqlite:///{root / 'downloads.db'}")
    migrate.upgrade(store.db)
    models = root / f"models-{round_}"
    store.downloads.queue_download("url", {"url": url}, name=f"base-{round_}")
    worker = DownloadWorker(
        store, models, WorkerOptions(owner="bench"), SourceSettings(allow_private_urls=True)
    )
    started = time.perf_counter()
    done = worker.run_once()
    elapsed = time.perf_counter() - started
    assert done is not None and done.error_code is None, done
    shutil.rmtree(models)
    store.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--dir", default=None, help="where the files go (needs 2x the size + 1 GiB)"
    )
    args = parser.parse_args()
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        source = root / "served.safetensors"
        write_checkpoint(source, size)
        server, url = serve_file(source)
        try:
            plain_s, manager_s = [], []
            for round_ in range(args.rounds):
                plain_s.append(plain(url, root / "plain.bin"))
                manager_s.append(manager(url, root, round_))
        finally:
            server.shutdown()
    best_plain, best_manager = min(plain_s), min(manager_s)
    result = {
        "benchmark": "downloads",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "workload": {"bytes": size, "rounds": args.rounds, "server": "127.0.0.1, from disk"},
        "bytes_per_s": {"plain": round(size / best_plain), "manager": round(size / best_manager)},
        "seconds": {
            "plain": [round(s, 2) for s in plain_s],
            "manager": [round(s, 2) for s in manager_s],
        },
        "ratio_manager_to_plain": round(best_plain / best_manager, 3),
        "target": ">= 0.9",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
