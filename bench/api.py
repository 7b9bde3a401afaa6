"""The HTTP API under load: `POST /v1/jobs` and `GET /v1/jobs/{id}` with 32 concurrent
clients against a live `alice-spool api` server (no runner). Prints one JSON object.

    python bench/api.py [--requests 3000] [--concurrency 32]

The server runs in its own process (uvicorn, one worker, SQLite in WAL mode); the clients
are 32 keep-alive connections driven from one asyncio loop in this process, speaking
HTTP/1.1 directly (a full client library would spend more CPU than the server does and
measure itself; the server and the load share this machine's two cores either way). Targets on the
development machine: >= 500 submissions/s, p99 < 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Connection:
    """One keep-alive HTTP/1.1 connection, spoken directly on asyncio streams: a load
    generator that costs far less CPU than a full client library, so that on a small
    machine the server, not the client, is what gets measured."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        assert self.reader is not None
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        return int(status_line.split()[1]), payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def hammer(
    connections: list[Connection], count: int, make: Any
) -> tuple[float, list[float], list[str]]:
    """`count` requests over the connections, each connection one at a time."""
    latencies: list[float] = []
    ids: list[str] = []
    counter = iter(range(count))

    async def worker(connection: Connection) -> None:
        for i in counter:
            method, path, body = make(i)
            started = time.perf_counter()
            status, payload = await connection.request(method, path, body)
            latencies.append((time.perf_counter() - started) * 1000)
            if status not in (200, 202):
                raise RuntimeError(f"{status}: {payload[:200]!r}")
            if status == 202:
                ids.append(json.loads(payload)["id"])

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in connections))
    return time.perf_counter() - started, latencies, ids


def summary(count: int, elapsed: float, latencies: list[float]) -> dict[str, float]:
    return {
        "requests": count,
        "per_s": round(count / elapsed, 1),
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
    }


async def measure(port: int, args: argparse.Namespace) -> dict[str, object]:
    connections = [Connection("127.0.0.1", port) for _ in range(args.concurrency)]

    def submit(i: int) -> tuple[str, str, bytes]:
        body = {"prompt": f"a lighthouse at dusk #{i}", "steps": 25, "seed": i}
        return "POST", "/v1/jobs", json.dumps(body).encode()

    try:
        await hammer(connections, 200, submit)  # warm up
        elapsed, latencies, ids = await hammer(connections, args.requests, submit)
        posts = summary(args.requests, elapsed, latencies)
        elapsed, latencies, _ = await hammer(
            connections, args.requests, lambda i: ("GET", f"/v1/jobs/{ids[i % len(ids)]}", b"")
        )
        gets = summary(args.requests, elapsed, latencies)
    finally:
        for connection in connections:
            connection.close()
    return {"post_jobs": posts, "get_job": gets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        port = free_port()
        models = root / "var" / "models" / "tiny"
        models.mkdir(parents=True)
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.support.fake_model import write_fake_model

        write_fake_model(models)  # the API checks that the model exists; nothing loads it
        env = {k: v for k, v in os.environ.items() if not k.startswith("ALICE_")}
        env.update(
            ALICE_PATHS_DATA_DIR=str(root / "var"),
            ALICE_GENERATION_MAX_QUEUE="1000000",
            ALICE_INBOX_ENABLED="false",
            ALICE_LOGGING_LEVEL="WARNING",
        )
        server = subprocess.Popen(
            [sys.executable, "-m", "alice_spool", "api", "--port", str(port)], env=env, cwd=root
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            results = asyncio.run(measure(port, args))
        finally:
            server.terminate()
            server.wait(30)
    print(
        json.dumps(
            {
                "benchmark": "api",
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                "concurrency": args.concurrency,
                **results,
                "targets": {"post_jobs_per_s": ">= 500", "p99_ms": "< 100"},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
