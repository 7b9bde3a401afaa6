"""The runner as a real process on the real tiny pipeline: end to end, crash points,
a SIGKILL storm, signals, cancel, missing models, out-of-memory, a poisoned job."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from alice_spool import migrate
from alice_spool.engine.tiny import create_tiny
from alice_spool.faults import CRASH_EXIT_CODE, RUNNER_CRASH_POINTS
from alice_spool.library.registry import ModelRegistry
from alice_spool.outbox import RESULT
from alice_spool.records import JobRecord
from alice_spool.spec import JobSpec, parse_spec
from alice_spool.states import JobStatus
from alice_spool.stopping import COLD_EXIT_CODE
from alice_spool.store import Store
from tests.support import runner_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    create_tiny(root)
    return root


@pytest.fixture(scope="module")
def forkserver() -> ForkServerContext:
    return runner_process.context()


@dataclass
class Site:
    """One installation: a data directory, its database, the runner's environment."""

    root: Path
    store: Store
    env: dict[str, str]
    ctx: ForkServerContext

    @property
    def data_dir(self) -> Path:
        return self.root / "var"

    @property
    def outbox(self) -> Path:
        return self.data_dir / "outbox"

    def submit(self, prompt: str, **fields: Any) -> JobRecord:
        # Euler: the default DPM++ SDE sets up its Brownian noise per call (~0.4 s on this
        # model), which these tests of the runner's bookkeeping have no use for.
        fields = {"steps": 2, "width": 64, "height": 64, "scheduler": "euler", **fields}
        spec = JobSpec(prompt=prompt, **fields)
        return self.store.jobs.enqueue(spec, source="cli").job

    def start(self, *args: str, faults: Sequence[str] = ()) -> BaseProcess:
        """`alice-spool [FAULTS] runner ARGS` (FAULTS: the hidden fault-injection options)."""
        argv = [*faults, "runner", *args]
        return runner_process.start_cli(self.ctx, argv, self.env, self.root)

    def run(self, *args: str, timeout: float = 120, faults: Sequence[str] = ()) -> int | None:
        process = self.start(*args, faults=faults)
        process.join(timeout)
        if process.is_alive():
            process.kill()
            pytest.fail(f"runner {args} still running after {timeout} s")
        return process.exitcode

    def drain(self) -> None:
        assert self.run("--exit-when-idle") == 0

    def leftovers(self) -> list[str]:
        """Anything in the outbox that is not a job's complete directory."""
        return sorted(
            entry.name
            for entry in self.outbox.iterdir()
            if entry.name.startswith(".") or not (entry / RESULT).is_file()
        )


@pytest.fixture
def site(tmp_path: Path, models_dir: Path, forkserver: ForkServerContext) -> Iterator[Site]:
    url = f"sqlite:///{tmp_path / 'var' / 'alice.db'}"
    (tmp_path / "var").mkdir()
    store = Store.open(url, max_attempts=3)
    migrate.upgrade(store.db)
    env = {
        "ALICE_PATHS_DATA_DIR": str(tmp_path / "var"),
        "ALICE_PATHS_MODELS": str(models_dir),
        "ALICE_RUNNER_DEVICE": "cpu",
        # Dozens of runner starts here: each loads the model when its first job needs it.
        "ALICE_RUNNER_PRELOAD": "false",
        "ALICE_LOGGING_LEVEL": "WARNING",
    }
    yield Site(tmp_path, store, env, forkserver)
    store.close()


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image, dtype=np.int16)


def status(site: Site, job: JobRecord) -> JobStatus:
    return site.store.jobs.get(job.id).status


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def assert_each_succeeded_once(site: Site, jobs: list[JobRecord]) -> None:
    """Every job succeeded, with exactly one complete outbox directory whose files match
    its result, and nothing else is in the outbox."""
    for job in jobs:
        done = site.store.jobs.get(job.id)
        assert done.status is JobStatus.SUCCEEDED, (job.id, done.status, done.error_message)
        result = json.loads((site.outbox / job.id / RESULT).read_text())
        assert result == done.result and result["status"] == "succeeded"
        names = sorted(p.name for p in (site.outbox / job.id).iterdir())
        expected = sorted([RESULT, *(f"{job.id}-{i}.png" for i in range(job.spec.n))])
        assert names == expected
        assert [i["file"] for i in result["images"]] == expected[:-1]
    assert sorted(p.name for p in site.outbox.iterdir()) == sorted(j.id for j in jobs)


# -- end to end ---------------------------------------------------------------------------


def test_alice_spool_runner_end_to_end(site: Site) -> None:
    """The installed command, as a plain subprocess: jobs in, PNGs and results out."""
    cat = site.submit(
        "a cat in a hat", seed=42, n=2, negative_prompt="dogs", scheduler="dpm++_sde_karras"
    )
    wide = site.submit("a wide view", seed=7, width=96, height=64, steps=3)
    before = time.time()
    command = [sys.executable, "-m", "alice_spool", "runner", "--exit-when-idle"]
    finished = subprocess.run(
        command, cwd=site.root, env={**os.environ, **site.env}, capture_output=True, timeout=300
    )
    assert finished.returncode == 0, finished.stderr.decode()
    assert_each_succeeded_once(site, [cat, wide])

    done = site.store.jobs.get(cat.id)
    assert done.attempts == 1 and done.lease_owner is None
    assert done.started_at is not None and done.finished_at is not None
    assert done.created_at <= done.started_at <= done.finished_at
    assert done.finished_at.timestamp() >= before
    result = done.result
    assert result["spec"]["model"] == "sd/tiny" and result["device"] == "cpu float32"
    assert [i["seed"] for i in result["images"]] == [42, 43]
    assert result["timings"]["generate_s"] > 0 and result["timings"]["wait_s"] >= 0
    for index, seed in enumerate((42, 43)):
        with Image.open(site.outbox / cat.id / f"{cat.id}-{index}.png") as png:
            png.load()
            assert png.format == "PNG" and png.size == (64, 64)
            assert png.text["parameters"].splitlines() == [
                "a cat in a hat",
                "Negative prompt: dogs",
                f"Steps: 2, Sampler: DPM++ SDE, Schedule type: Karras, CFG scale: 7.5, "
                f"Seed: {seed}, Size: 64x64, Model: tiny",
            ]
    with Image.open(site.outbox / wide.id / f"{wide.id}-0.png") as png:
        assert png.size == (96, 64)


# -- crashes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("point", sorted(RUNNER_CRASH_POINTS))
def test_a_crash_at_any_point_loses_and_repeats_nothing(site: Site, point: str) -> None:
    """Ten runs per crash point: the runner dies there (as os._exit, no cleanup), a new
    one starts; after it every job has succeeded exactly once."""
    jobs: list[JobRecord] = []
    for run in range(10):
        jobs += [
            site.submit(f"run {run} job {i}", n=1 + i % 2, seed=run * 10 + i) for i in range(3)
        ]
        nth = 1 + run % 2  # crash on the first or the second time the point is reached
        crash = [f"--crash-at={point}:{nth}"]
        assert site.run("--max-batch", "2", faults=crash) == CRASH_EXIT_CODE
        site.drain()
        assert_each_succeeded_once(site, jobs)
        assert site.leftovers() == []
    attempts = [site.store.jobs.get(j.id).attempts for j in jobs]
    assert max(attempts) == 2 and attempts.count(2) >= 10  # each crash hit a job


def test_a_sigkill_storm(site: Site) -> None:
    """200 jobs; the runner is killed at random moments ten times and restarted each time.
    All 200 succeed once, and exactly the jobs it held when killed ran more than once."""
    site.store.core.max_attempts = 20
    jobs = [site.submit(f"storm {i}", seed=i, n=1 + (i % 7 == 0)) for i in range(200)]
    rng = random.Random(20261122)
    held_when_killed: set[str] = set()
    for _ in range(10):
        process = site.start("--max-batch", "4")
        time.sleep(rng.uniform(0.3, 1.5))
        os.kill(process.pid, signal.SIGKILL)
        process.join(10)
        assert process.exitcode == -signal.SIGKILL
        running = site.store.jobs.list_jobs(statuses=[JobStatus.RUNNING], limit=1000).jobs
        held_when_killed |= {j.id for j in running}
    site.drain()
    assert_each_succeeded_once(site, jobs)
    assert site.leftovers() == []
    reran = {j.id for j in jobs if site.store.jobs.get(j.id).attempts > 1}
    assert reran == held_when_killed and held_when_killed


def test_a_sigkill_mid_flux_job_loses_nothing_and_the_next_runner_finishes_it(
    site: Site, tmp_path_factory: pytest.TempPathFactory, models_dir: Path
) -> None:
    """A FLUX.1 job (the tiny schnell, queued as a door queues it: the family's steps
    and scheduler) killed mid-denoise: requeued by the next runner's start and run once
    more, beside a FLUX.1 job queued after the kill."""
    models = tmp_path_factory.mktemp("flux-models")
    shutil.copytree(models_dir, models, dirs_exist_ok=True)
    create_tiny(models, "flux-schnell", family="flux", variant="schnell")
    site.env["ALICE_PATHS_MODELS"] = str(models)
    fields = {"prompt": "a lighthouse", "model": "flux-schnell", "width": 64, "height": 64}
    registry = ModelRegistry(models)
    long = registry.with_model(parse_spec({**fields, "steps": 150, "seed": 3}))
    assert (long.scheduler, long.guidance_scale) == ("euler", 0.0)  # the family's
    killed = site.store.jobs.enqueue(long, source="cli").job
    process = site.start()
    wait_until(lambda: (site.store.jobs.get(killed.id).progress_step or 0) > 2, timeout=60)
    os.kill(process.pid, signal.SIGKILL)
    process.join(10)
    assert process.exitcode == -signal.SIGKILL
    assert status(site, killed) is JobStatus.RUNNING  # held by the dead runner
    short = registry.with_model(parse_spec({**fields, "seed": 4}))
    clean = site.store.jobs.enqueue(short, source="cli").job
    site.drain()
    assert_each_succeeded_once(site, [killed, clean])
    done = site.store.jobs.get(killed.id)
    assert done.attempts == 2 and done.result["spec"]["model"] == "sd/flux-schnell"
    assert site.leftovers() == []


# -- signals ------------------------------------------------------------------------------


def test_sigterm_mid_batch_releases_the_jobs_and_exits_cleanly(site: Site) -> None:
    jobs = [site.submit(f"long {i}", steps=150, n=2) for i in range(2)]
    process = site.start()
    wait_until(lambda: (site.store.jobs.get(jobs[0].id).progress_step or 0) > 0)
    os.kill(process.pid, signal.SIGTERM)
    process.join(30)
    assert process.exitcode == 0
    for job in jobs:
        again = site.store.jobs.get(job.id)
        assert (again.status, again.attempts, again.lease_owner) == (JobStatus.QUEUED, 0, None)
    assert list(site.outbox.iterdir()) == []


def test_a_repeat_within_a_second_is_the_same_stop_and_a_later_one_exits_at_once(
    site: Site,
) -> None:
    """A batch that does not end: two SIGTERMs 100 ms apart (a process group's signal and
    its parent's) are one warm stop, still waiting for the batch; one after that exits at
    once, leaving the job to be rescued by the next runner's start."""
    job = site.submit("never ends")
    process = site.ctx.Process(
        target=runner_process.stuck_runner, args=(site.store.db.url, str(site.data_dir))
    )
    process.start()
    wait_until(lambda: status(site, job) is JobStatus.RUNNING)
    os.kill(process.pid, signal.SIGTERM)
    time.sleep(0.1)
    os.kill(process.pid, signal.SIGTERM)
    process.join(1.5)
    assert process.is_alive()  # the repeat was not taken as "hurry"
    os.kill(process.pid, signal.SIGTERM)
    process.join(5)
    assert process.exitcode == COLD_EXIT_CODE
    assert status(site, job) is JobStatus.RUNNING  # rescued by the next runner's start


# -- cancel, bad input, out of memory, poison ----------------------------------------------


def test_cancel_a_running_job(site: Site) -> None:
    long = site.submit("cancel me", steps=150, n=2)
    after = site.submit("then me", steps=3)
    process = site.start("--exit-when-idle")
    wait_until(lambda: (site.store.jobs.get(long.id).progress_step or 0) > 0)
    site.store.jobs.cancel(long.id)
    process.join(60)
    assert process.exitcode == 0
    cancelled = site.store.jobs.get(long.id)
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.progress_step is not None and cancelled.progress_step < 150
    assert not (site.outbox / long.id).exists()
    assert status(site, after) is JobStatus.SUCCEEDED
    assert site.leftovers() == []


def test_a_job_for_a_missing_model_fails_and_the_runner_goes_on(site: Site) -> None:
    missing = site.submit("where is it", model="sd/not-installed")
    fine = site.submit("here it is")
    site.drain()
    failed = site.store.jobs.get(missing.id)
    assert (failed.status, failed.error_code) == (JobStatus.FAILED, "model_not_found")
    result = json.loads((site.outbox / missing.id / RESULT).read_text())
    assert result["status"] == "failed" and result["error"]["code"] == "model_not_found"
    assert status(site, fine) is JobStatus.SUCCEEDED


def test_simulated_out_of_memory_splits_and_recovers(site: Site) -> None:
    jobs = [site.submit(f"oom {i}", seed=i * 10, n=1 + (i == 1)) for i in range(3)]
    assert site.run("--exit-when-idle", faults=["--inject-oom-above=1"]) == 0
    assert_each_succeeded_once(site, jobs)
    for job in jobs:
        assert site.store.jobs.get(job.id).result["timings"]["batch_images"] == 1

    reference = site.submit("oom 1", seed=10, n=2)  # the same job, no memory limit
    site.drain()
    for index in range(2):
        split = pixels(site.outbox / jobs[1].id / f"{jobs[1].id}-{index}.png")
        whole = pixels(site.outbox / reference.id / f"{reference.id}-{index}.png")
        # split by image, the same images (to within the rounding of batched kernels)
        assert np.abs(split - whole).max() <= 2


def test_a_poisoned_job_ends_attempts_exhausted(site: Site) -> None:
    """A job that crashes every runner that claims it: three starts, then it fails
    instead of taking the runner down forever."""
    job = site.submit("poison")
    for _ in range(3):
        assert site.run(faults=["--crash-at=after_claim"]) == CRASH_EXIT_CODE
    assert site.store.jobs.get(job.id).attempts == 3
    site.drain()
    failed = site.store.jobs.get(job.id)
    assert (failed.status, failed.error_code) == (JobStatus.FAILED, "attempts_exhausted")
    result = json.loads((site.outbox / job.id / RESULT).read_text())
    assert result["error"]["code"] == "attempts_exhausted"
