"""The inbox: file-to-job latency into an idle watcher, and how fast a burst is taken.
Prints one JSON object.

    python bench/inbox.py [--singles 200] [--burst 10000] [--polling]

- latency: one request file at a time, renamed into the inbox of an idle watcher (as
  writers should drop files); from the rename to the job's commit (its `created_at`).
- burst: `--burst` files renamed in by another process as fast as it can, into a
  running watcher: the time from the first file to the last job (files/s over the
  whole burst, writing included); then as many files already waiting when a watcher
  starts: the time until the last is a job.
Targets on the development machine: p99 < 50 ms, burst >= 1,000 files/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from alice_spool import migrate
from alice_spool.database import Database
from alice_spool.inbox import Inbox
from alice_spool.spec import BUILTIN_DEFAULTS
from alice_spool.store import Store


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def fresh(root: Path, name: str, polling: bool) -> tuple[Inbox, Store]:
    db = Database.open(f"sqlite:///{root / f'{name}.db'}")
    migrate.upgrade(db)
    store = Store(db, max_queue=1_000_000)
    inbox = Inbox(root / name, store, None, defaults=BUILTIN_DEFAULTS, polling=polling)
    inbox.start()
    return inbox, store


def drop(directory: Path, name: str, text: str) -> None:
    temporary = directory / f".{name}.tmp"
    temporary.write_text(text)
    os.rename(temporary, directory / name)


def request(i: int) -> str:
    return json.dumps({"prompt": f"a lighthouse at dusk #{i}", "steps": 25, "seed": i})


def latency(root: Path, args: argparse.Namespace) -> dict[str, float]:
    inbox, store = fresh(root, "single", args.polling)
    samples: list[float] = []
    try:
        time.sleep(0.5)
        for i in range(args.singles):
            dropped = datetime.now(UTC)
            drop(inbox.directory, f"single-{i}.json", request(i))
            deadline = time.monotonic() + 10
            while not (page := store.jobs.list_jobs(limit=1)).jobs or page.jobs[0].client != (
                f"single-{i}.json"
            ):
                assert time.monotonic() < deadline, "the watcher did not take the file"
                time.sleep(0.001)
            samples.append((page.jobs[0].created_at - dropped).total_seconds() * 1000)
            time.sleep(0.02)  # idle again
    finally:
        inbox.stop()
        store.db.close()
    return {
        "files": len(samples),
        "p50_ms": round(statistics.median(samples), 2),
        "p99_ms": round(percentile(samples, 0.99), 2),
        "max_ms": round(max(samples), 2),
    }


_WRITER = """
import json, os, sys
directory, count = sys.argv[1], int(sys.argv[2])
for i in range(count):
    text = json.dumps({"prompt": f"a lighthouse at dusk #{i}", "steps": 25, "seed": i})
    temporary = os.path.join(directory, f".burst-{i}.json.tmp")
    with open(temporary, "w") as f:
        f.write(text)
    os.rename(temporary, os.path.join(directory, f"burst-{i}.json"))
"""


def burst(root: Path, args: argparse.Namespace) -> dict[str, float]:
    """A burst written by another process (as cron or a script would) into a running
    watcher, then the same number of files already waiting when a watcher starts."""
    inbox, store = fresh(root, "burst", args.polling)
    try:
        time.sleep(0.5)
        started = time.perf_counter()
        writer = subprocess.run(
            [sys.executable, "-c", _WRITER, str(inbox.directory), str(args.burst)], check=True
        )
        written = time.perf_counter()
        wait_for(inbox, args.burst)
        done = time.perf_counter()
        assert writer.returncode == 0 and sum(store.jobs.counts().values()) == args.burst
    finally:
        inbox.stop()
        store.db.close()

    waiting = root / "waiting"
    waiting.mkdir()
    subprocess.run([sys.executable, "-c", _WRITER, str(waiting), str(args.burst)], check=True)
    started_up = time.perf_counter()
    inbox, store = fresh(root, "waiting", args.polling)
    try:
        wait_for(inbox, args.burst)
        taken = time.perf_counter()
    finally:
        inbox.stop()
        store.db.close()
    return {
        "files": args.burst,
        "live_write_s": round(written - started, 3),
        "live_total_s": round(done - started, 3),
        "live_files_per_s": round(args.burst / (done - started), 1),
        "waiting_at_start_s": round(taken - started_up, 3),
        "waiting_at_start_files_per_s": round(args.burst / (taken - started_up), 1),
    }


def wait_for(inbox: Inbox, count: int) -> None:
    deadline = time.monotonic() + 600
    while inbox.stats.accepted < count:
        assert time.monotonic() < deadline, "the burst was not taken in 10 minutes"
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--singles", type=int, default=200)
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--polling", action="store_true", help="the polling observer")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        result = {
            "benchmark": "inbox",
            "observer": "polling" if args.polling else "native",
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "latency": latency(root, args),
            "burst": burst(root, args),
            "targets": {"latency_p99_ms": "< 50", "burst_files_per_s": ">= 1000"},
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
