"""The runner loop in-process, on a real migrated database and a real outbox, with a
stand-in engine that makes solid-colour images fast and can be told to be slow, run out
of memory, hang or break an image. The real pipeline runs in tests/e2e/test_runner_process.py."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from alice_spool import inputs
from alice_spool.errors import (
    GenerationFailed,
    GpuOutOfMemory,
    Interrupted,
    ModelNotFound,
    RunnerBusy,
)
from alice_spool.outbox import RESULT, Outbox
from alice_spool.records import JobRecord
from alice_spool.runner import Runner, RunnerOptions
from alice_spool.spec import JobSpec, parse_spec
from alice_spool.states import JobStatus
from alice_spool.store import Store
from alice_spool.store._base import new_id, utcnow

pytestmark = pytest.mark.both_databases  # SQLite and PostgreSQL (tests/conftest.py)

MODELS = ("sd/a", "sd/b")


def colour(seed: int) -> tuple[int, int, int]:
    return (seed % 200 + 20, seed // 7 % 200 + 20, 99)


class FakeEngine:
    """The engine's interface: resolve, generate (with steps, a stop check and progress),
    a resident model, the default model."""

    def __init__(self) -> None:
        self.calls: list[list[JobSpec]] = []
        self.inputs: list[Sequence[dict[str, Any]] | None] = []  # each call's input images
        self.resident_model: str | None = None
        self.step_s = 0.0
        self.oom_above: int | None = None
        self.broken_prompts: set[str] = set()
        self.hang: threading.Event | None = None  # generate blocks until it is set
        self.started = threading.Event()  # set when a call begins
        self.limit: int | None = None  # images one call may take (family, size, memory)
        self.warming: threading.Event | None = None  # warm_up_default blocks until set
        self.warmed = False

    def default_model_id(self) -> str:
        return "sd/a"

    def resolve(self, spec: JobSpec) -> JobSpec:
        model = spec.model or "sd/a"
        if model not in MODELS:
            raise ModelNotFound(f"model {model} is not installed")
        return replace(spec, model=model, width=spec.width or 64, height=spec.height or 64)

    def unload(self) -> None:
        self.resident_model = None

    def batch_limit(self, spec: JobSpec) -> int:
        return self.limit if self.limit is not None else 1_000

    def warm_up_default(self) -> None:
        if self.warming is not None:
            self.warming.wait(30)
        self.warmed = True

    def generate(
        self,
        specs: Sequence[JobSpec],
        *,
        on_step: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        images: Sequence[dict[str, Any]] | None = None,
    ) -> Any:
        resolved = [self.resolve(s) for s in specs]
        self.calls.append(resolved)
        self.inputs.append(images)
        self.resident_model = resolved[0].model
        self.started.set()
        images = sum(s.n for s in resolved)
        if self.oom_above is not None and images > self.oom_above:
            raise GpuOutOfMemory(f"out of GPU memory generating {images} image(s)")
        if self.hang is not None:
            self.hang.wait(30)
        steps = resolved[0].steps
        for step in range(1, steps + 1):
            time.sleep(self.step_s)
            if on_step:
                on_step(step, steps)
            if should_stop and should_stop():
                raise Interrupted(f"stopped after step {step}")
        jobs = []
        for spec in resolved:
            seeds = spec.image_seeds()
            if spec.prompt in self.broken_prompts:
                jobs.append(SimpleNamespace(images=[], seeds=seeds, error=GenerationFailed("NaN")))
                continue
            size = (spec.width, spec.height)
            images_ = [Image.new("RGB", size, colour(seed)) for seed in seeds]
            jobs.append(SimpleNamespace(images=images_, seeds=seeds, error=None))
        return SimpleNamespace(jobs=jobs, seconds=0.01, device="fake", memory_mode="full")


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "outbox")


@pytest.fixture
def make_runner(
    store: Store, outbox: Outbox, engine: FakeEngine, tmp_path: Path
) -> Callable[..., Runner]:
    def make(**options: Any) -> Runner:
        values: dict[str, Any] = {"name": "test", "exit_when_idle": True, **options}
        return Runner(store, outbox, engine, RunnerOptions(**values), lock_dir=tmp_path)

    return make


def submit(store: Store, prompt: str = "a cat", **fields: Any) -> JobRecord:
    spec = JobSpec(prompt=prompt, **{"steps": 4, "seed": 10, **fields})
    return store.jobs.enqueue(spec, source="cli").job


@pytest.fixture
def background() -> Iterator[Callable[[Runner], threading.Thread]]:
    threads: list[tuple[Runner, threading.Thread]] = []

    def start(runner: Runner) -> threading.Thread:
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        threads.append((runner, thread))
        return thread

    yield start
    for runner, thread in threads:
        runner.request_stop()
        thread.join(10)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def status(store: Store, job: JobRecord) -> JobStatus:
    return store.jobs.get(job.id).status


# -- the happy path --------------------------------------------------------------------


def test_compatible_jobs_run_as_one_call_and_each_gets_its_directory(
    store: Store, outbox: Outbox, engine: FakeEngine, make_runner: Callable[..., Runner]
) -> None:
    jobs = [submit(store, f"cat {i}", seed=100 * i) for i in range(3)]
    two = submit(store, "two cats", n=2, seed=7)
    make_runner().run()

    assert len(engine.calls) == 1  # four compatible jobs, five images: one call
    assert [s.prompt for s in engine.calls[0]] == ["cat 0", "cat 1", "cat 2", "two cats"]
    for job in [*jobs, two]:
        done = store.jobs.get(job.id)
        assert done.status is JobStatus.SUCCEEDED and done.attempts == 1
        result = outbox.read_result(job.id)
        assert result is not None and done.result == result
        assert result["status"] == "succeeded" and result["job_id"] == job.id
        assert result["spec"]["model"] == "sd/a"  # resolved
        assert result["timings"]["batch_images"] == 5
        assert result["timings"]["wait_s"] >= 0 and result["error"] is None
    result = outbox.read_result(two.id)
    assert [(i["file"], i["seed"]) for i in result["images"]] == [
        (f"{two.id}-0.png", 7),
        (f"{two.id}-1.png", 8),
    ]
    for index, seed in enumerate((7, 8)):
        with Image.open(outbox.job_dir(two.id) / f"{two.id}-{index}.png") as png:
            assert png.getpixel((0, 0)) == colour(seed)
            assert f"Seed: {seed}, Size: 64x64, Model: a" in png.text["parameters"]
    assert sorted(p.name for p in outbox.root.iterdir()) == sorted(j.id for j in [*jobs, two])


def test_batches_hold_at_most_max_batch_images_in_queue_order(
    store: Store, engine: FakeEngine, make_runner: Callable[..., Runner]
) -> None:
    a = [submit(store, f"a{i}", n=2) for i in range(3)]  # 6 images
    b = submit(store, "b", steps=5)  # another batch key
    c = submit(store, "c", n=4)
    big = submit(store, "big", n=6, seed=100)  # alone over the budget of 4
    make_runner(max_batch=4).run()
    prompts = [[s.prompt for s in call] for call in engine.calls]
    # a2 and c would make 6 images: c waits for the next call rather than overfill; big
    # is claimed alone and made in two calls (never more than max_batch in one)
    assert prompts == [["a0", "a1"], ["a2"], ["b"], ["c"], ["big"], ["big"]]
    assert [call[0].n for call in engine.calls[-2:]] == [3, 3]
    assert [call[0].seed for call in engine.calls[-2:]] == [100, 103]
    assert all(status(store, j) is JobStatus.SUCCEEDED for j in [*a, b, c, big])


def test_priority_comes_before_batching(
    store: Store, engine: FakeEngine, make_runner: Callable[..., Runner]
) -> None:
    submit(store, "low 1")
    submit(store, "other size", width=128)
    submit(store, "low 2")
    submit(store, "urgent", width=128, priority=5)
    make_runner().run()
    prompts = [[s.prompt for s in call] for call in engine.calls]
    assert prompts == [["urgent", "other size"], ["low 1", "low 2"]]


def test_the_resident_model_is_preferred_within_a_bound(
    store: Store, engine: FakeEngine, make_runner: Callable[..., Runner]
) -> None:
    """Jobs for a, b, a, b at one priority: with a loaded, both a jobs run before the
    b jobs (one switch instead of three); with no patience, strict queue order."""
    engine.resident_model = "sd/a"
    for i in range(2):
        submit(store, f"a{i}", model="sd/a", steps=4 + i)  # different keys: one call each
        submit(store, f"b{i}", model="sd/b", steps=4 + i)
    make_runner(switch_model_after_s=60).run()
    order = [call[0].prompt for call in engine.calls]
    assert order == ["a0", "a1", "b0", "b1"]

    engine.calls.clear()
    engine.resident_model = "sd/a"
    for i in range(2):
        submit(store, f"b{i}", model="sd/b", steps=4 + i)
        submit(store, f"a{i}", model="sd/a", steps=4 + i)
    make_runner(switch_model_after_s=0).run()
    assert [call[0].prompt for call in engine.calls] == ["b0", "a0", "b1", "a1"]


def test_jobs_for_another_model_wait_no_longer_than_the_bound(
    store: Store, engine: FakeEngine, make_runner: Callable[..., Runner]
) -> None:
    """b's job is first in the queue but a is loaded: a's jobs go first, until b's job
    has waited `switch_model_after_s`; then b gets its switch, before a's queue is done."""
    engine.resident_model = "sd/a"
    engine.step_s = 0.025  # about 0.1 s a job
    submit(store, "b", model="sd/b")
    for i in range(6):
        submit(store, f"a{i}", model="sd/a", steps=4 + i % 2, seed=i)
        submit(store, f"a{i}", model="sd/a", steps=4 + (i + 1) % 2, seed=i + 100)
    make_runner(switch_model_after_s=0.3, max_batch=1).run()
    order = [call[0].prompt for call in engine.calls]
    assert 1 <= order.index("b") < len(order) - 1, order


# -- faults ---------------------------------------------------------------------------


def test_out_of_memory_splits_the_batch_until_it_fits(
    store: Store, outbox: Outbox, engine: FakeEngine, make_runner: Callable[..., Runner]
) -> None:
    engine.oom_above = 2
    jobs = [submit(store, f"cat {i}", seed=i * 10) for i in range(3)]
    three = submit(store, "three", n=3, seed=50)
    make_runner().run()
    sizes = [sum(s.n for s in call) for call in engine.calls]
    assert sizes == [6, 3, 2, 1, 3, 1, 2]  # halves of about equal images, then a job by image
    for job in [*jobs, three]:
        assert status(store, job) is JobStatus.SUCCEEDED
    result = outbox.read_result(three.id)
    assert [i["seed"] for i in result["images"]] == [50, 51, 52]  # split by image, in order
    with Image.open(outbox.job_dir(three.id) / f"{three.id}-2.png") as png:
        assert png.getpixel((0, 0)) == colour(52)


def test_calls_never_exceed_what_the_engine_says_fits(
    store: Store, outbox: Outbox, engine: FakeEngine, make_runner: Callable[..., Runner]
) -> None:
    engine.limit = 2  # e.g. SDXL at 1024x1024 on a small card
    jobs = [submit(store, f"cat {i}", seed=i * 10) for i in range(3)]
    three = submit(store, "three", n=3, seed=50)
    waiting_per_call: list[list[str]] = []  # claimed, not yet in a call (or being written)
    generate = engine.generate

    def count_running(specs: Sequence[JobSpec], **kwargs: Any) -> Any:
        made = {spec.prompt for call in engine.calls for spec in call}
        running = store.jobs.list_jobs(statuses=[JobStatus.RUNNING]).jobs
        waiting_per_call.append(sorted(j.spec.prompt for j in running if j.spec.prompt not in made))
        return generate(specs, **kwargs)

    engine.generate = count_running  # type: ignore[method-assign]
    make_runner(max_batch=8).run()
    sizes = [sum(s.n for s in call) for call in engine.calls]
    assert sizes == [2, 1, 1, 2]  # never more than fits in a call, never tried whole
    # Claimed only as many as one call takes: no job waits as running for a later call
    # (another runner could have had it); the job too big for one call runs in two.
    assert waiting_per_call == [["cat 0", "cat 1"], ["cat 2"], ["three"], []]
    for job in [*jobs, three]:
        assert status(store, job) is JobStatus.SUCCEEDED
    result = outbox.read_result(three.id)
    assert [i["seed"] for i in result["images"]] == [50, 51, 52]


def test_the_runner_warms_up_before_its_first_claim_and_says_so(
    store: Store,
    engine: FakeEngine,
    make_runner: Callable[..., Runner],
    background: Callable[[Runner], threading.Thread],
) -> None:
    engine.warming = threading.Event()
    job = submit(store, "waits for the warm-up")
    background(make_runner(exit_when_idle=False))
    wait_until(lambda: [r.state for r in store.leases.runners()] == ["warming"])
    assert status(store, job) is JobStatus.QUEUED and engine.calls == []
    engine.warming.set()
    wait_until(lambda: status(store, job) is JobStatus.SUCCEEDED)
    assert engine.warmed
    wait_until(lambda: [r.state for r in store.leases.runners()] == ["idle"])


def test_an_image_that_fits_nowhere_fails_only_its_job(
    store: Store, outbox: Outbox, engine: FakeEngine, make_runner: Callable[..., Runner]
) -> None:
    engine.oom_above = 0
    job = submit(store, "too big")
    make_runner().run()
    failed = store.jobs.get(job.id)
    assert (failed.status, failed.error_code) == (JobStatus.FAILED, "gpu_out_of_memory")
    result = outbox.read_result(job.id)
    assert result["status"] == "failed" and result["error"]["code"] == "gpu_out_of_memory"
    assert [p.name for p in outbox.job_dir(job.id).iterdir()] == [RESULT]


def test_a_broken_image_fails_its_job_and_not_the_batch(
    store: Store, engine: FakeEngine, make_runner: Callable[..., Runner]
) -> None:
    engine.broken_prompts = {"nan"}
    good, bad = submit(store, "fine"), submit(store, "nan")
    make_runner().run()
    assert len(engine.calls) == 1
    assert status(store, good) is JobStatus.SUCCEEDED
    assert store.jobs.get(bad.id).error_code == "generation_failed"


def test_a_job_whose_stored_inputs_are_gone_or_damaged_fails_alone(
    store: Store, outbox: Outbox, engine: FakeEngine, tmp_path: Path
) -> None:
    """Three img2img jobs that would share a call: one's input was deleted, one's
    overwritten since they were queued. Those two fail with input_unavailable naming
    the role; the third runs, in a call of its own, with its own input."""
    data_dir = tmp_path / "data"
    queued = []
    for seed in (1, 2, 3):
        png = io.BytesIO()
        Image.new("RGB", (64, 64), colour(seed)).save(png, format="PNG")
        request = {"prompt": "a boat", "init_image": base64.b64encode(png.getvalue()).decode()}
        fields, staged = inputs.take({**request, "steps": 4, "seed": seed}, 10**6)
        spec, job_id = parse_spec(fields), new_id()
        inputs.store(data_dir, job_id, staged)
        queued.append(store.jobs.enqueue(spec, source="cli", job_id=job_id).job)
    gone, damaged, fine = queued
    inputs.remove(data_dir, gone.id)
    other = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(other, format="PNG")
    (inputs.job_dir(data_dir, damaged.id) / "init.png").write_bytes(other.getvalue())
    options = RunnerOptions(name="test", exit_when_idle=True, data_dir=data_dir)
    Runner(store, outbox, engine, options, lock_dir=tmp_path).run()

    for job, says in ((gone, "no longer stored"), (damaged, "not the image it was queued")):
        failed = store.jobs.get(job.id)
        assert (failed.status, failed.error_code) == (JobStatus.FAILED, "input_unavailable")
        assert says in failed.error_message and "init_image" in failed.error_message
        assert failed.attempts == 1
        assert outbox.read_result(job.id)["error"]["code"] == "input_unavailable"
    assert status(store, fine) is JobStatus.SUCCEEDED
    assert [[s.seed for s in call] for call in engine.calls] == [[3]]
    (given,) = engine.inputs[0]
    assert given["init_image"].getpixel((0, 0)) == colour(3)


def test_a_job_for_a_missing_model_fails_and_the_runner_goes_on(
    store: Store, outbox: Outbox, make_runner: Callable[..., Runner]
) -> None:
    missing = submit(store, "gone", model="sd/removed")
    after = submit(store, "next")
    make_runner().run()
    failed = store.jobs.get(missing.id)
    assert (failed.status, failed.error_code) == (JobStatus.FAILED, "model_not_found")
    assert "sd/removed" in failed.error_message
    assert outbox.read_result(missing.id)["error"]["code"] == "model_not_found"
    assert status(store, after) is JobStatus.SUCCEEDED


def test_a_failing_outbox_write_leaves_the_job_retryable_and_nothing_half_written(
    store: Store,
    outbox: Outbox,
    make_runner: Callable[..., Runner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = submit(store, "disk full", n=2)
    real_save = Image.Image.save
    calls = {"n": 0}

    def full_disk(self: Image.Image, fp: Any, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the first PNG is written, the second finds the disk full
            raise OSError(28, "No space left on device")
        real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", full_disk)
    make_runner(retry_after_s=3600).run()
    again = store.jobs.get(job.id)
    assert again.status is JobStatus.QUEUED and again.error_code == "outbox_write_failed"
    assert "No space left on device" in again.error_message
    assert again.not_before is not None and again.not_before > utcnow() + timedelta(minutes=59)
    assert list(outbox.root.iterdir()) == []  # no directory, no staging left

    store.db.write(lambda c: c.exec_driver_sql("UPDATE jobs SET not_before = NULL"))
    make_runner().run()  # the disk has room again
    done = store.jobs.get(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.attempts == 2
    assert len(outbox.read_result(job.id)["images"]) == 2


def test_a_job_failed_for_good_lists_no_images(
    store: Store,
    outbox: Outbox,
    make_runner: Callable[..., Runner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its images were made but never written (the disk stayed full): none are listed."""
    job = submit(store, "disk full for good", n=2)

    def full_disk(self: Image.Image, fp: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    for _ in range(3):  # max_attempts
        make_runner(retry_after_s=0).run()
    failed = store.jobs.get(job.id)
    assert (failed.status, failed.error_code) == (JobStatus.FAILED, "outbox_write_failed")
    assert failed.result is not None and failed.result["images"] == []
    assert outbox.read_result(job.id)["images"] == []
    assert [p.name for p in outbox.job_dir(job.id).iterdir()] == ["result.json"]


def test_a_job_that_runs_too_long_fails_with_timeout(
    store: Store, outbox: Outbox, engine: FakeEngine, make_runner: Callable[..., Runner]
) -> None:
    engine.step_s = 0.05
    job = submit(store, "slow", steps=100)
    make_runner(job_timeout_s=0.3).run()
    failed = store.jobs.get(job.id)
    assert (failed.status, failed.error_code) == (JobStatus.FAILED, "timeout")
    assert outbox.read_result(job.id)["error"]["code"] == "timeout"
    assert failed.progress_step is not None and failed.progress_step < 100


def test_a_hung_device_fails_the_batch_with_timeout(
    store: Store, engine: FakeEngine, make_runner: Callable[..., Runner], tmp_path: Path
) -> None:
    """A call that never reaches its next step: the monitor gives up on it."""
    engine.hang = threading.Event()
    job = submit(store, "stuck")
    gave_up = threading.Event()
    runner = Runner(
        store,
        Outbox(tmp_path / "outbox"),
        engine,
        RunnerOptions(
            name="hang", job_timeout_s=0.2, hang_grace_s=0.2, progress_s=0.05, exit_when_idle=True
        ),
        lock_dir=tmp_path,
        on_hang=lambda: (gave_up.set(), engine.hang.set()),
    )
    runner.run()
    assert gave_up.is_set()
    failed = store.jobs.get(job.id)
    assert (failed.status, failed.error_code) == (JobStatus.FAILED, "timeout")
    assert "did not return" in failed.error_message
    # Like every finished job: a result.json in its directory, and on the job.
    written = Outbox(tmp_path / "outbox").read_result(job.id)
    assert written["status"] == "failed" and written["error"]["code"] == "timeout"
    assert written["images"] == [] and failed.result == written


# -- cancel, stop, restart -----------------------------------------------------------------


def test_cancelling_a_running_job_stops_it_at_the_next_step(
    store: Store,
    outbox: Outbox,
    engine: FakeEngine,
    make_runner: Callable[..., Runner],
    background: Callable[[Runner], threading.Thread],
) -> None:
    engine.step_s = 0.02
    job = submit(store, "long", steps=500)
    thread = background(make_runner(exit_when_idle=False, progress_s=0.05))
    wait_until(lambda: (store.jobs.get(job.id).progress_step or 0) > 2)
    store.jobs.cancel(job.id)
    wait_until(lambda: status(store, job) is JobStatus.CANCELLED, timeout=5)
    step = store.jobs.get(job.id).progress_step
    assert step is not None and step < 500
    assert not outbox.job_dir(job.id).exists()
    assert thread.is_alive()  # the runner goes on


def test_a_cancelled_job_leaves_its_batch_mates_alone(
    store: Store,
    outbox: Outbox,
    engine: FakeEngine,
    make_runner: Callable[..., Runner],
    background: Callable[[Runner], threading.Thread],
) -> None:
    engine.step_s = 0.02
    keep, drop = submit(store, "keep", steps=40), submit(store, "drop", steps=40)
    background(make_runner(exit_when_idle=False, progress_s=0.05))
    wait_until(lambda: (store.jobs.get(drop.id).progress_step or 0) > 1)
    store.jobs.cancel(drop.id)
    wait_until(lambda: status(store, drop) is JobStatus.CANCELLED)
    assert status(store, keep) is JobStatus.RUNNING  # cancelled at once, not after the batch
    wait_until(lambda: status(store, keep) is JobStatus.SUCCEEDED)
    assert status(store, drop) is JobStatus.CANCELLED and not outbox.job_dir(drop.id).exists()
    assert len(engine.calls) == 1


def test_stopping_mid_batch_releases_the_jobs_uncounted(
    store: Store,
    outbox: Outbox,
    engine: FakeEngine,
    make_runner: Callable[..., Runner],
    background: Callable[[Runner], threading.Thread],
) -> None:
    engine.step_s = 0.02
    jobs = [submit(store, f"job {i}", steps=500) for i in range(3)]
    runner = make_runner(exit_when_idle=False)
    thread = background(runner)
    engine.started.wait(5)
    runner.request_stop()
    thread.join(5)
    assert not thread.is_alive()
    for job in jobs:
        again = store.jobs.get(job.id)
        assert (again.status, again.attempts, again.lease_owner) == (JobStatus.QUEUED, 0, None)
    assert list(outbox.root.iterdir()) == []


def test_a_restarted_runner_reruns_its_predecessors_jobs_at_once(
    store: Store, outbox: Outbox, make_runner: Callable[..., Runner]
) -> None:
    """Jobs held by a dead runner of the same name rerun without waiting out the lease;
    another runner's live lease is left alone."""
    mine = submit(store, "mine")
    theirs = submit(store, "theirs", steps=5)
    store.leases.claim_batch("test/999/dead", 1, lease_s=3600)  # takes `mine`, the oldest
    store.leases.claim_batch("elsewhere/1/x", 1, lease_s=3600)
    make_runner().run()
    done = store.jobs.get(mine.id)
    assert done.status is JobStatus.SUCCEEDED and done.attempts == 2
    assert store.jobs.get(theirs.id).lease_owner == "elsewhere/1/x"


def test_a_running_runner_rescues_jobs_whose_leases_expired(
    store: Store,
    make_runner: Callable[..., Runner],
    background: Callable[[Runner], threading.Thread],
) -> None:
    """Another host's runner died holding a job: once its lease runs out, this runner
    (which never restarted) requeues and runs it."""
    job = submit(store, "orphan")
    store.leases.claim_batch("elsewhere/1/x", 1, lease_s=0.5)
    background(make_runner(exit_when_idle=False, lease_s=1.0, progress_s=0.05))
    wait_until(lambda: status(store, job) is JobStatus.SUCCEEDED, timeout=10)
    assert store.jobs.get(job.id).attempts == 2


def test_a_job_written_before_a_crash_is_finished_from_its_directory(
    store: Store, outbox: Outbox, engine: FakeEngine, make_runner: Callable[..., Runner]
) -> None:
    job = submit(store, "written")
    store.leases.claim_batch("test/999/dead", 1, lease_s=3600)
    earlier = {"job_id": job.id, "status": "succeeded", "images": [], "run": "earlier"}
    outbox.write(job.id, earlier)
    make_runner().run()
    assert engine.calls == []
    done = store.jobs.get(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.result == earlier


def _late_runner(
    store: Store, outbox: Outbox, tmp_path: Path, engine: FakeEngine
) -> tuple[Runner, threading.Event]:
    """Runner `late` claims the job and stalls in its call, renewing nothing (a process
    paused, a host cut off) until its lease lapses and the job is rescued."""
    engine.hang = threading.Event()
    late = Runner(
        store,
        outbox,
        engine,
        RunnerOptions(name="late", exit_when_idle=True, lease_s=0.3, progress_s=3600),
        lock_dir=tmp_path,
    )
    return late, engine.hang


def _take_over(store: Store, job: JobRecord, outbox: Outbox, tmp_path: Path, engine: Any) -> None:
    time.sleep(0.4)  # the late runner's lease has lapsed
    assert store.leases.requeue_orphans().requeued == [job.id]
    Runner(
        store, outbox, engine, RunnerOptions(name="next", exit_when_idle=True), lock_dir=tmp_path
    ).run()


def test_a_late_runner_never_removes_the_directory_of_the_claim_that_took_over(
    store: Store, outbox: Outbox, tmp_path: Path, background: Callable[[Runner], threading.Thread]
) -> None:
    """The late runner's job fails for good after another runner succeeded it: its
    `fail` is refused (lease lost), and the directory it would clean up is not its own."""
    job = submit(store, "taken over")
    slow = FakeEngine()
    slow.broken_prompts = {"taken over"}  # its call ends in a failure, not retried
    late, go_on = _late_runner(store, outbox, tmp_path, slow)
    thread = background(late)
    assert slow.started.wait(5)
    _take_over(store, job, outbox, tmp_path, FakeEngine())
    written = outbox.read_result(job.id)
    assert written is not None and (written["status"], written["claim"]) == ("succeeded", 2)
    go_on.set()
    thread.join(10)
    assert not thread.is_alive()
    done = store.jobs.get(job.id)
    assert (done.status, done.claims) == (JobStatus.SUCCEEDED, 2)
    assert outbox.read_result(job.id) == written == done.result
    assert sorted(p.name for p in outbox.job_dir(job.id).iterdir()) == [f"{job.id}-0.png", RESULT]
    assert [p.name for p in outbox.root.iterdir()] == [job.id]


def test_a_late_runner_never_overwrites_the_directory_of_the_claim_that_took_over(
    store: Store, outbox: Outbox, tmp_path: Path, background: Callable[[Runner], threading.Thread]
) -> None:
    """The claim that took over failed the job for good; the late runner's call then
    succeeds: its images are dropped, the failure's directory stays as the table says."""
    job = submit(store, "taken over")
    late, go_on = _late_runner(store, outbox, tmp_path, slow := FakeEngine())
    thread = background(late)
    assert slow.started.wait(5)
    failing = FakeEngine()
    failing.broken_prompts = {"taken over"}
    _take_over(store, job, outbox, tmp_path, failing)
    written = outbox.read_result(job.id)
    assert written is not None and (written["status"], written["claim"]) == ("failed", 2)
    go_on.set()
    thread.join(10)
    assert not thread.is_alive()
    assert store.jobs.get(job.id).status is JobStatus.FAILED
    assert outbox.read_result(job.id) == written
    assert [p.name for p in outbox.job_dir(job.id).iterdir()] == [RESULT]  # no late image
    assert [p.name for p in outbox.root.iterdir()] == [job.id]  # nothing staged left


def test_a_second_runner_of_the_same_name_is_refused(
    store: Store,
    make_runner: Callable[..., Runner],
    background: Callable[[Runner], threading.Thread],
) -> None:
    first = make_runner(exit_when_idle=False)
    background(first)
    wait_until(lambda: first.lock.path.exists() and first.lock._fd is not None)
    with pytest.raises(RunnerBusy, match="already running"):
        make_runner().run()
    make_runner(name="other").run()  # another name is fine


def test_an_idle_runner_wakes_for_a_new_job(
    store: Store,
    engine: FakeEngine,
    make_runner: Callable[..., Runner],
    background: Callable[[Runner], threading.Thread],
) -> None:
    background(make_runner(exit_when_idle=False, recheck_s=3600))
    time.sleep(0.2)  # idle, watching for changes
    job = submit(store, "wake up")
    wait_until(lambda: status(store, job) is JobStatus.SUCCEEDED, timeout=5)


def test_progress_reaches_the_row_while_a_batch_runs(
    store: Store,
    engine: FakeEngine,
    make_runner: Callable[..., Runner],
    background: Callable[[Runner], threading.Thread],
) -> None:
    engine.step_s = 0.01
    job = submit(store, "steps", steps=150)
    background(make_runner(exit_when_idle=False, progress_s=0.05))
    seen: set[int] = set()
    wait_until(lambda: seen.add(store.jobs.get(job.id).progress_step or 0) or len(seen) > 3)
    wait_until(lambda: status(store, job) is JobStatus.SUCCEEDED)
    done = store.jobs.get(job.id)
    assert (done.progress_step, done.progress_total) == (150, 150)
    assert len(seen) < 150  # throttled, not one write per step
    assert json.dumps(done.result)  # stored as JSON


def test_the_runner_reports_itself(
    store: Store,
    engine: FakeEngine,
    make_runner: Callable[..., Runner],
    background: Callable[[Runner], threading.Thread],
) -> None:
    engine.step_s = 0.01
    job = submit(store, "reported", steps=150)
    runner = make_runner(exit_when_idle=False, progress_s=0.05)
    thread = background(runner)

    def busy_with_the_job() -> bool:
        return any(
            r.state == "busy" and r.job_id == job.id and (r.step or 0) > 0 and r.total == 150
            for r in store.leases.runners()
        )

    wait_until(busy_with_the_job)
    wait_until(lambda: status(store, job) is JobStatus.SUCCEEDED)
    wait_until(lambda: store.leases.runners()[0].state == "idle")
    (report,) = store.leases.runners()
    assert (report.name, report.owner, report.model) == ("test", runner.owner, "sd/a")
    assert report.age_s(utcnow()) < 5
    runner.request_stop()
    thread.join(10)
    assert store.leases.runners()[0].state == "stopped"


def test_each_transition_is_one_log_line(
    store: Store, make_runner: Callable[..., Runner], caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="alice_spool")
    job = submit(store, "logged")
    make_runner().run()
    mine = [r for r in caplog.records if getattr(r, "job_id", None) == job.id]
    assert [r.status for r in mine] == ["queued", "running", "succeeded"]
    assert "source cli" in mine[0].getMessage() and "waited" in mine[2].getMessage()


def test_a_finish_the_database_refused_is_rescued_not_lost(
    store: Store,
    outbox: Outbox,
    engine: FakeEngine,
    make_runner: Callable[..., Runner],
    background: Callable[[Runner], threading.Thread],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The database refuses the writer's `succeed` once: the writer lives on, the job's
    lease lapses, and the rescued job is finished from its outbox directory."""
    from alice_spool.errors import DatabaseBusy

    real_succeed = store.leases.succeed
    refusals = []

    def succeed_once_refused(*args: Any, **kwargs: Any) -> JobRecord:
        if not refusals:
            refusals.append(args[0])
            raise DatabaseBusy()
        return real_succeed(*args, **kwargs)

    monkeypatch.setattr(store.leases, "succeed", succeed_once_refused)
    first = submit(store, "refused once")
    background(make_runner(exit_when_idle=False, lease_s=1.0, progress_s=0.05))
    wait_until(lambda: status(store, first) is JobStatus.SUCCEEDED, timeout=15)
    after = submit(store, "the writer lives", steps=5)
    wait_until(lambda: status(store, after) is JobStatus.SUCCEEDED, timeout=15)
    assert refusals == [first.id] and len(engine.calls) == 2  # not generated twice
    assert store.jobs.get(first.id).attempts == 2


def test_an_idle_runner_asks_its_engine_to_drop_deleted_models(
    store: Store,
    engine: FakeEngine,
    make_runner: Callable[..., Runner],
    background: Callable[[Runner], threading.Thread],
) -> None:
    asked: list[float] = []
    engine.drop_deleted = lambda: asked.append(time.monotonic()) or False  # type: ignore[attr-defined]
    background(make_runner(exit_when_idle=False, recheck_s=0.1))
    wait_until(lambda: len(asked) >= 2, timeout=5)  # at every idle wait, not once
