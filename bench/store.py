"""Queue throughput on a file database with the settings the daemon uses (WAL, BEGIN
IMMEDIATE writers), for both `[database] synchronous` modes; and, with several processes
at once, on SQLite and on PostgreSQL side by side. Prints one JSON object.

    python bench/store.py [--jobs 2000] [--batch 10000] [--dir /tmp] [--repeat 3]
                          [--synchronous normal,full] [--owners 50]
                          [--database-url postgresql+psycopg://...|auto] [--processes 1,4,8]

Measures: single enqueues/s (one transaction each), batch enqueue jobs/s (one
10,000-line JSONL batch, parsing included and not), claim+succeed jobs/s claiming one
job at a time and eight at a time, in queue order (`claim_batch`) and as the runner
claims (`claim_compatible`, fair share on: `runner_*`), and claim latency percentiles
with the batch's jobs still queued behind; then the runner's claim with `--owners`
owners' jobs queued, fair share against strict queue order (`owners`).
`--processes ""` leaves out the part below.

`processes`: 1, 4 and 8 processes enqueueing `--process-jobs` jobs in all (one transaction
each, as API requests do), then as many claiming them (claim_compatible one job at a time,
then succeed, as runners do) until none is left; jobs/s of each, on a SQLite file and, with
`--database-url`, on PostgreSQL (`auto`: a server started here, as the tests start it).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from alice_spool import migrate
from alice_spool.database import Database
from alice_spool.records import NewJob
from alice_spool.spec import JobSpec, parse_jsonl
from alice_spool.store import Store


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def fresh_store(directory: Path, name: str, synchronous: str) -> Store:
    """A new, migrated database file."""
    db = Database.open(f"sqlite:///{directory / name}", synchronous=synchronous)
    migrate.upgrade(db)
    return Store(db, max_queue=1_000_000)


def claims_per_s(store: Store, claim, per_claim: int, jobs: int) -> tuple[float, list[float]]:
    """Claim `per_claim` at a time with `claim(store, per_claim)` and succeed each job,
    until `jobs` are done, as a runner's loop does (its connection pinned): jobs/s, and
    each claim's latency."""
    latencies: list[float] = []
    with store.db.pinned():
        start = time.perf_counter()
        done = 0
        while done < jobs:
            began = time.perf_counter()
            taken = claim(store, per_claim)
            latencies.append(time.perf_counter() - began)
            if not taken:
                raise SystemExit("the queue ran out: give --batch at least 4 x --jobs")
            for job in taken:
                store.leases.succeed(job.id, "bench", {"images": []})
            done += len(taken)
        return done / (time.perf_counter() - start), latencies


def by_queue_order(store: Store, limit: int) -> list:
    return store.leases.claim_batch("bench", limit, lease_s=60)


def as_the_runner(fair: bool):
    """The runner's claim: a head job and its batch mates, up to `max_images` images."""
    return lambda store, images: store.leases.claim_compatible(
        "bench", max_images=images, lease_s=60, fair=fair
    )


def latency_ms(latencies: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(latencies) * 1000, 3),
        "p99": round(percentile(latencies, 0.99) * 1000, 3),
    }


def enqueues(synchronous: str, args: argparse.Namespace, directory: Path) -> tuple[dict, Store]:
    """Single enqueues, and one batch of `--batch` lines; the batch's store, for claims."""
    spec = JobSpec(prompt="a lighthouse at dusk, volumetric light", steps=25)
    # 1. Single enqueues, one transaction each: from a worker thread that keeps its
    # connection (the inbox watcher), and checking one out of the pool each time (an API
    # request).
    store = fresh_store(directory, f"single-{synchronous}.db", synchronous)
    start = time.perf_counter()
    with store.db.pinned():
        for i in range(args.jobs):
            store.jobs.enqueue(spec, source="cli", idempotency_key=f"single-{i}")
    single_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(args.jobs):
        store.jobs.enqueue(spec, source="api", idempotency_key=f"pooled-{i}")
    pooled_s = time.perf_counter() - start

    # 2. One batch of `--batch` lines, all or nothing.
    lines = "\n".join(
        json.dumps({"prompt": f"batch line {i}", "steps": 20, "id": f"b-{i}"})
        for i in range(args.batch)
    )
    batch_store = fresh_store(directory, f"batch-{synchronous}.db", synchronous)
    start = time.perf_counter()
    items = [NewJob(r.spec, r.idempotency_key) for r in parse_jsonl(lines, "bench.jsonl")]
    parsed_s = time.perf_counter() - start
    batch = batch_store.jobs.enqueue_batch(items, source="inbox")
    batch_total_s = time.perf_counter() - start
    assert len(batch.job_ids) == args.batch
    store_only = fresh_store(directory, f"batch2-{synchronous}.db", synchronous)
    start = time.perf_counter()
    store_only.jobs.enqueue_batch(items, source="inbox")
    batch_store_s = time.perf_counter() - start
    return {
        "single_enqueues_per_s": round(args.jobs / single_s),
        "single_enqueues_pooled_per_s": round(args.jobs / pooled_s),
        "batch_enqueue_jobs_per_s": round(args.batch / batch_total_s),
        "batch_enqueue_store_only_jobs_per_s": round(args.batch / batch_store_s),
        "batch_parse_jobs_per_s": round(args.batch / parsed_s),
    }, batch_store


def owners(synchronous: str, args: argparse.Namespace, directory: Path) -> dict:
    """5. The runner's claim + succeed, one image a claim and eight, with `--batch` jobs
    of `--owners` owners queued: fair share against strict queue order."""
    fairness: dict = {}
    for fair in (False, True):
        store = fresh_store(directory, f"owners-{fair}-{synchronous}.db", synchronous)
        for o in range(args.owners):  # one call queues one owner's jobs
            store.jobs.enqueue_keyed(
                [NewJob(JobSpec(prompt=f"owner job {i}", steps=20, seed=i), f"o-{i}",
                        owner=f"owner-{o}") for i in range(o, args.batch, args.owners)],
                source="api",
            )  # fmt: skip
        one, waits = claims_per_s(store, as_the_runner(fair), 1, args.jobs)
        eight, _ = claims_per_s(store, as_the_runner(fair), 8, args.jobs)
        fairness["fair" if fair else "fifo"] = {
            "claim_succeed_jobs_per_s": round(one),
            "claim8_succeed_jobs_per_s": round(eight),
            "claim_latency_ms": latency_ms(waits),
        }
    fairness["ratio_fair_to_fifo"] = round(
        fairness["fair"]["claim_succeed_jobs_per_s"] / fairness["fifo"]["claim_succeed_jobs_per_s"],
        3,
    )
    return fairness


def measure(synchronous: str, args: argparse.Namespace, directory: Path) -> dict:
    found, batch_store = enqueues(synchronous, args, directory)
    # 3. Claim + succeed, one job per claim and eight, in queue order (`claim_batch`),
    # with the batch's 10,000 jobs queued behind.
    one, latencies = claims_per_s(batch_store, by_queue_order, 1, args.jobs)
    eight, _ = claims_per_s(batch_store, by_queue_order, 8, args.jobs)
    # 4. The same with the runner's claim (`claim_compatible`, fair share on, as the
    # runner calls it), one image a claim and eight, from what is left of the batch.
    runner_one, runner_latencies = claims_per_s(batch_store, as_the_runner(True), 1, args.jobs)
    runner_eight, _ = claims_per_s(batch_store, as_the_runner(True), 8, args.jobs)
    return {
        **found,
        "claim_succeed_jobs_per_s": round(one),
        "claim8_succeed_jobs_per_s": round(eight),
        "claim_latency_ms": {**latency_ms(latencies), "max": round(max(latencies) * 1000, 3)},
        "runner_claim_succeed_jobs_per_s": round(runner_one),
        "runner_claim8_succeed_jobs_per_s": round(runner_eight),
        "runner_claim_latency_ms": latency_ms(runner_latencies),
        "owners": owners(synchronous, args, directory),
    }


def _median(runs: list[dict]) -> dict:
    """The per-metric median of several runs' results (nested dicts alike)."""
    first = runs[0]
    return {
        key: _median([r[key] for r in runs])
        if isinstance(first[key], dict)
        else statistics.median(r[key] for r in runs)
        for key in first
    }


def _enqueue_worker(url: str, count: int, tag: str, start: multiprocessing.Event) -> None:
    store = Store.open(url, max_queue=1_000_000)
    spec = JobSpec(prompt="a lighthouse at dusk", steps=25)
    start.wait()
    for i in range(count):
        store.jobs.enqueue(spec, source="api", idempotency_key=f"{tag}-{i}")
    store.close()


def _claim_worker(
    url: str, name: str, start: multiprocessing.Event, done: multiprocessing.Queue
) -> None:
    store = Store.open(url, max_queue=1_000_000)
    claimed = 0
    start.wait()
    with store.db.pinned():
        while jobs := store.leases.claim_compatible(name, max_images=1, lease_s=60):
            for job in jobs:
                store.leases.succeed(job.id, name, {"images": []})
                claimed += 1
    store.close()
    done.put(claimed)


def _timed(target, arguments: list[tuple]) -> tuple[float, list]:
    """Start one process per argument tuple, release them at once, wait for all."""
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    results = context.Queue()
    processes = [
        context.Process(
            target=target, args=(*args, start, *((results,) if target is _claim_worker else ()))
        )
        for args in arguments
    ]
    for process in processes:
        process.start()
    time.sleep(2.0)  # every process imported and connected
    began = time.perf_counter()
    start.set()
    for process in processes:
        process.join()
        assert process.exitcode == 0, f"a worker failed ({process.exitcode})"
    elapsed = time.perf_counter() - began
    counts = [results.get() for _ in processes] if target is _claim_worker else []
    return elapsed, counts


def processes(url: str, counts: list[int], total: int) -> dict:
    """Enqueue and claim+succeed jobs/s with each count of processes on one database."""
    found = {}
    for count in counts:
        if url.startswith("sqlite:///"):  # from empty, every time
            for suffix in ("", "-wal", "-shm"):
                Path(url.removeprefix("sqlite:///") + suffix).unlink(missing_ok=True)
        db = Database.open(url)
        if db.engine.dialect.name == "postgresql":
            migrate.downgrade(db, "base")  # from empty, every time
        migrate.upgrade(db)
        db.close()
        per = total // count
        enqueue_s, _ = _timed(_enqueue_worker, [(url, per, f"p{count}-{i}") for i in range(count)])
        claim_s, claimed = _timed(_claim_worker, [(url, f"claimer-{i}") for i in range(count)])
        assert sum(claimed) == per * count, (claimed, per * count)
        found[str(count)] = {
            "enqueue_jobs_per_s": round(per * count / enqueue_s),
            "claim_succeed_jobs_per_s": round(per * count / claim_s),
        }
    return found


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="single enqueues and claims")
    parser.add_argument("--batch", type=int, default=10_000, help="lines in the batch")
    parser.add_argument("--dir", default=None, help="where the database files go")
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode; medians shown")
    parser.add_argument("--owners", type=int, default=50, help="owners of the fair-share queue")
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL database for `processes` (auto: start one)",
    )
    parser.add_argument("--processes", default="1,4,8", help="process counts for `processes`")
    parser.add_argument("--process-jobs", type=int, default=2000, help="jobs per process count")
    parser.add_argument("--skip-single", action="store_true", help="only the `processes` part")
    parser.add_argument(
        "--synchronous", default="normal,full", help="the [database] synchronous modes to run"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    directory = Path(tempfile.mkdtemp(prefix="alice-bench-", dir=args.dir))
    counts = [int(n) for n in args.processes.split(",") if n]  # none: no `processes` part

    def median_of_runs(synchronous: str) -> dict:
        runs = []
        for run in range(args.repeat):
            run_dir = directory / f"{synchronous}-{run}"
            run_dir.mkdir()
            runs.append(measure(synchronous, args, run_dir))
        return _median(runs)

    result: dict = {"benchmark": "store"}
    if not args.skip_single:
        # [database] synchronous: "normal" is the default, "full" adds an fsync per commit.
        modes = [mode for mode in args.synchronous.split(",") if mode]
        result.update(default="normal", **{mode: median_of_runs(mode) for mode in modes})
    with ExitStack() as stack:
        on = {"sqlite": f"sqlite:///{directory / 'processes.db'}"}
        if args.database_url == "auto":
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from tests.support.postgres import create_database, postgres_server

            server = stack.enter_context(postgres_server())
            on["postgresql"] = create_database(server, "bench")
        elif args.database_url:
            on["postgresql"] = args.database_url
        if counts:
            result["processes"] = {
                name: processes(url, counts, args.process_jobs) for name, url in on.items()
            }
    result.update(
        settings={
            "jobs": args.jobs,
            "repeat": args.repeat,
            "statistic": "median of the runs",
            "batch_lines": args.batch,
            "queued_behind_claims": args.batch,
            "owners": args.owners,
            "targets": {"owners.ratio_fair_to_fifo": ">= 0.8", "owners.fair p99": "< 5 ms"},
            "journal_mode": "wal",
            "sqlite": sqlite3.sqlite_version,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "directory": str(directory),
            "process_jobs": args.process_jobs,
            "process_counts": counts,
        },
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
