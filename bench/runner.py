"""The runner's overhead and wake-up latency on the tiny model on CPU. Prints one JSON object.

    python bench/runner.py [--jobs 32] [--rounds 3] [--steps 25] [--size 64] [--max-batch 8]

In one process, on the same loaded pipeline and the same jobs:

- `direct`: the engine called in a loop on the batches the runner would make (no queue,
  no files): the best the spool could do;
- `direct_one_by_one`: the engine called once per job, as a spool without batching would;
- `runner`: the jobs enqueued, then the real runner (claim, generate, PNG + result.json
  written and fsynced, succeed) until the last job is marked succeeded.

The two alternate for `--rounds` rounds (this machine's speed drifts by 10-20% over a
minute); `ratio` = best runner jobs/s / best direct jobs/s (the spool's overhead;
target >= 0.95), with the ratio of the medians beside it.
Wake-up latency: an idle runner, one job enqueued at a time; the time from the start
of the enqueue (its commit included) to the runner's claim (the job's `started_at`), on
SQLite (the watcher reads the file's data_version; target p99 < 100 ms) and, with
`--database-url`, on
PostgreSQL (LISTEN/NOTIFY; target p99 < 50 ms). Idle CPU: the runner process's CPU time
while idle, as a share of one core. Idle runners (`--idle-runners 8`): that many real
`alice-spool runner` processes, idle on each database, their CPU and, on PostgreSQL,
what they cost it: transactions/s and (`--database-url auto`, whose server logs every
statement) statements/s, target < 10 for all 8 together.

The mix (`--mix-jobs`, 0 to skip): a third plain, a third with a LoRA, a third img2img
(each with its own input image, stored with its job as the API stores it), through the
runner vs. the engine called directly on the batches the runner makes of them (the
same grouping by batch key); target ratio >= 0.95. And the cost of a LoRA switch: a
call whose LoRA is in the cache vs. one that loads it from disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


import mix  # bench/mix.py, beside this script

from alice_spool import migrate
from alice_spool.database import Database
from alice_spool.engine.device import choose
from alice_spool.engine.generate import quiet_libraries
from alice_spool.engine.resident import Engine
from alice_spool.engine.tiny import create_tiny, create_tiny_lora
from alice_spool.library.registry import ModelRegistry
from alice_spool.outbox import Outbox
from alice_spool.runner import Runner, RunnerOptions
from alice_spool.spec import JobSpec
from alice_spool.states import JobStatus
from alice_spool.store import Store


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def jobs_for(args: argparse.Namespace) -> list[JobSpec]:
    return [
        JobSpec(
            prompt=f"a lighthouse at dusk #{i}",
            model="sd/tiny",
            width=args.size,
            height=args.size,
            steps=args.steps,
            seed=1000 + i,
        )
        for i in range(args.jobs)
    ]


def direct(engine: Engine, specs: list[JobSpec], batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(specs), batch):
        engine.generate(specs[start : start + batch])
    return time.perf_counter() - started


def through_runner(
    engine: Engine, specs: list[JobSpec], root: Path, args: argparse.Namespace, name: str
) -> float:
    db = Database.open(f"sqlite:///{root / f'{name}.db'}")
    migrate.upgrade(db)
    store = Store(db, max_queue=1_000_000)
    for spec in specs:
        store.jobs.enqueue(spec, source="cli")
    runner = Runner(
        store,
        Outbox(root / f"outbox-{name}"),
        engine,
        RunnerOptions(name=name, max_batch=args.max_batch, exit_when_idle=True),
        lock_dir=root,
    )
    started = time.perf_counter()
    runner.run()  # returns once every job is claimed and every write is done
    elapsed = time.perf_counter() - started
    counts = store.jobs.counts()
    assert counts[JobStatus.SUCCEEDED] == len(specs), counts
    db.close()
    return elapsed


def wake_ups(engine: Engine, url: str, root: Path, args: argparse.Namespace) -> dict[str, float]:
    db = Database.open(url)
    if db.engine.dialect.name == "postgresql":
        migrate.downgrade(db, "base")
    migrate.upgrade(db)
    store = Store(db)
    runner = Runner(
        store,
        Outbox(root / f"outbox-wake-{db.engine.dialect.name}"),
        engine,
        RunnerOptions(name=f"wake-{db.engine.dialect.name}", max_batch=args.max_batch),
        lock_dir=root,
    )
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    rng = random.Random(7)
    spec = JobSpec(prompt="wake up", model="sd/tiny", width=64, height=64, steps=1, seed=1)
    time.sleep(1.0)  # idle

    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    idle_s = 3.0
    time.sleep(idle_s)
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    idle_cpu = (
        cpu_after.ru_utime - cpu_before.ru_utime + cpu_after.ru_stime - cpu_before.ru_stime
    ) / idle_s

    latencies: list[float] = []
    for _ in range(args.wakeups):
        time.sleep(rng.uniform(0.1, 0.4))  # the runner is idle again
        # from before the enqueue (its transaction included: a bound from above; taken
        # after the commit, a runner this quick often claims before the clock is read)
        committed = datetime.now(UTC)
        job = store.jobs.enqueue(spec, source="cli").job
        deadline = time.monotonic() + 10
        while (record := store.jobs.get(job.id)).status is not JobStatus.SUCCEEDED:
            assert time.monotonic() < deadline, "the runner did not wake"
            time.sleep(0.01)
        assert record.started_at is not None
        latencies.append(max(0.0, (record.started_at - committed).total_seconds()) * 1000)
    runner.request_stop()
    thread.join(10)
    store.close()
    return {
        "samples": len(latencies),
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "max_ms": round(max(latencies), 1),
        "idle_cpu_percent_of_one_core": round(idle_cpu * 100, 2),
    }


def _cpu_s(pid: int) -> float:
    """A process's CPU time so far (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _statements(log: Path | None, since: int) -> int | None:
    """Statements PostgreSQL logged (log_statement = all) after byte `since` of its log."""
    if log is None:
        return None
    with log.open("rb") as handle:
        handle.seek(since)
        return sum(b"LOG:  statement:" in line for line in handle)


def idle_runners(
    url: str, root: Path, models: Path, count: int, seconds: float, log: Path | None
) -> dict[str, object]:
    """`count` real `alice-spool runner` processes, idle: their CPU, and what they cost
    the database (on PostgreSQL: transactions, and the statements its log shows)."""
    db = Database.open(url)
    if db.engine.dialect.name == "postgresql":
        migrate.downgrade(db, "base")
    migrate.upgrade(db)
    store = Store(db)
    home = root / f"idle-{db.engine.dialect.name}"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[paths]\ndata_dir = "{home}"\ndatabase_url = "{url}"\nmodels = "{models}"\n'
        '[runner]\ndevice = "cpu"\n[logging]\nlevel = "WARNING"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALICE_")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    argv = [sys.executable, "-m", "alice_spool", "--config", str(home / "config.toml"), "runner"]
    processes = [
        subprocess.Popen([*argv, "--device", "cpu", "--name", f"idle-{i}"], env=env, cwd=home)
        for i in range(count)
    ]
    try:
        deadline = time.monotonic() + 300
        while sum(r.state == "idle" for r in store.leases.runners()) < count:
            assert time.monotonic() < deadline, "the runners did not all come up"
            assert all(p.poll() is None for p in processes), "a runner exited"
            time.sleep(0.5)
        time.sleep(6.0)  # past the first reports and rechecks

        def transactions() -> int | None:
            if db.engine.dialect.name != "postgresql":
                return None
            query = (
                "SELECT xact_commit + xact_rollback FROM pg_stat_database"
                " WHERE datname = current_database()"
            )
            with db.engine.connect() as conn:
                return int(conn.exec_driver_sql(query).scalar() or 0)

        logged_from = log.stat().st_size if log is not None else 0
        xact_before = transactions()
        cpu_before = [_cpu_s(p.pid) for p in processes]
        time.sleep(seconds)
        cpu_after = [_cpu_s(p.pid) for p in processes]
        xact_after = transactions()
        statements = _statements(log, logged_from)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(60)
        store.close()
    per_runner = [(b - a) / seconds * 100 for a, b in zip(cpu_before, cpu_after, strict=True)]
    result: dict[str, object] = {
        "runners": count,
        "seconds": seconds,
        "cpu_percent_of_one_core_all": round(sum(per_runner), 2),
        "cpu_percent_of_one_core_each_max": round(max(per_runner), 2),
    }
    if xact_before is not None and xact_after is not None:
        # less the stats query's own transaction
        result["database_transactions_per_s_all"] = round(
            (xact_after - xact_before - 1) / seconds, 2
        )
    if statements is not None:
        result["database_statements_per_s_all"] = round(statements / seconds, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--wakeups", type=int, default=60)
    parser.add_argument("--mix-jobs", type=int, default=24)
    parser.add_argument("--dir", default=None, help="where the databases and outboxes go")
    parser.add_argument(
        "--database-url",
        default=None,
        help="PostgreSQL for the wake-ups and idle runners too (auto: a server started here)",
    )
    parser.add_argument("--idle-runners", type=int, default=8, help="0: skip them")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--only-wake-ups", action="store_true", help="skip throughput and mix")
    args = parser.parse_args()

    quiet_libraries()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp, ExitStack() as stack:
        root = Path(tmp)
        databases = {"sqlite": f"sqlite:///{root / 'wake.db'}"}
        pg_log: Path | None = None
        if args.database_url == "auto":
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from tests.support.postgres import create_database, postgres_server

            # where the server (run as nobody, when this runs as root) may write
            log_dir = Path(tempfile.mkdtemp(prefix="alice-pglog-"))
            os.chmod(log_dir, 0o755)
            stack.callback(shutil.rmtree, log_dir, True)
            pg_log = log_dir / "postgresql.log"
            server = stack.enter_context(
                postgres_server(settings="-c log_statement=all", log_to=pg_log)
            )
            databases["postgresql"] = create_database(server, "bench")
        elif args.database_url:
            databases["postgresql"] = args.database_url
        create_tiny(root / "models")
        engine = Engine(ModelRegistry(root / "models"), choose("cpu"))
        specs = jobs_for(args)
        engine.generate(specs[: args.max_batch])  # load and warm up
        engine.generate(specs[:1])

        wakes = {name: wake_ups(engine, url, root, args) for name, url in databases.items()}
        idle = {
            name: idle_runners(
                url,
                root,
                root / "models",
                args.idle_runners,
                args.idle_seconds,
                pg_log if name == "postgresql" and args.database_url == "auto" else None,
            )
            for name, url in databases.items()
            if args.idle_runners
        }
        if args.only_wake_ups:
            print(
                json.dumps(
                    {"benchmark": "runner", "wake_up": wakes, "idle_runners": idle}, indent=2
                )
            )
            return

        # Interleaved rounds, so that the machine's drift hits both sides alike.
        direct_s: list[float] = []
        runner_s: list[float] = []
        for round_ in range(args.rounds):
            direct_s.append(direct(engine, specs, args.max_batch))
            runner_s.append(through_runner(engine, specs, root, args, f"round{round_}"))
        one_by_one_s = direct(engine, specs, 1)

        mixed: dict[str, object] = {}
        if args.mix_jobs:
            create_tiny_lora(root / "models")
            create_tiny_lora(root / "models", "other-lora")
            work = mix.Workload(
                model="sd/tiny",
                lora="lora/tiny-lora",
                size=args.size,
                steps=args.steps,
                scheduler=specs[0].scheduler,
                max_batch=args.max_batch,
            )
            mixed = mix.mix(engine, work, args.mix_jobs, args.rounds, root)
            mixed["lora_call_ms"] = mix.lora_switch(
                engine, work, ("lora/tiny-lora", "lora/other-lora")
            )

    best_direct, best_runner = min(direct_s), min(runner_s)
    result = {
        "benchmark": "runner",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "workload": {
            "jobs": args.jobs,
            "rounds": args.rounds,
            "model": "sd/tiny (random weights)",
            "size": f"{args.size}x{args.size}",
            "steps": args.steps,
            "scheduler": specs[0].scheduler,
            "max_batch": args.max_batch,
            "device": "cpu",
        },
        "jobs_per_s": {
            "direct": round(args.jobs / best_direct, 2),
            "direct_one_by_one": round(args.jobs / one_by_one_s, 2),
            "runner": round(args.jobs / best_runner, 2),
        },
        "seconds": {
            "direct": [round(s, 3) for s in direct_s],
            "runner": [round(s, 3) for s in runner_s],
            "direct_one_by_one": round(one_by_one_s, 3),
        },
        "ratio_runner_to_direct": round(best_direct / best_runner, 3),
        "ratio_runner_to_direct_median": round(
            statistics.median(direct_s) / statistics.median(runner_s), 3
        ),
        "ratio_runner_to_one_by_one": round(one_by_one_s / best_runner, 3),
        "wake_up": wakes,
        "idle_runners": idle,
        "mix": mixed,
        "targets": {
            "ratio": ">= 0.95",
            "mix_ratio": ">= 0.95",
            "wake_up.sqlite.p99_ms": "< 100",
            "wake_up.postgresql.p99_ms": "< 50",
            "idle_runners.postgresql.database_statements_per_s_all": "< 10 (8 runners)",
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
