"""The GPU runner (DESIGN section 8): claim compatible jobs, generate them as one batch,
write their outbox directories, finish them; forever, one process per GPU.

Three threads share the work so the GPU never waits on the database or the disk:

- the *main loop* claims a batch (the head job and the queued jobs that can share its
  pipeline call), generates it, and hands each job's images to the writer;
- the *writer* encodes the PNGs, writes the job's outbox directory durably, and only
  then marks the job succeeded, while the main loop already runs the next batch;
- the *monitor* writes progress (a few times a second at most), notices cancels and
  renews the leases of every job the runner holds, and stops a batch that hangs.

A runner's leases carry its name (`runner.name`, the host name by default). A lock
file makes the name unique on the host, so a starting runner knows that running jobs
under its name belong to a predecessor that died, and reruns them at once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from .config import Settings
from .errors import (
    ConfigError,
    DatabaseError,
    GenerationFailed,
    GpuOutOfMemory,
    IllegalTransition,
    Interrupted,
    JobTimeout,
    LeaseLost,
    OutboxWriteFailed,
    RunnerBusy,
    SpoolError,
)
from .faults import NO_FAULTS, Faults
from .models import JobStatus, Source
from .outbox import Outbox, image_name, infotext
from .records import JobRecord, RunnerReport
from .spec import SEED_MAX, JobSpec
from .stopping import StopSignals, exit_now
from .store import Store

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
DB_RETRY_S = 1.0
REPORT_S = 1.0  # how often the runner reports itself (runners table)
HANG_EXIT_CODE = 70  # the process gives up on a stuck device; its supervisor restarts it


class BatchGenerator(Protocol):
    """What the runner needs of the engine (`engine.resident.Engine` is one); the runner
    never imports the engine, so tests can hand it a stand-in."""

    @property
    def resident_model(self) -> str | None: ...

    def default_model_id(self) -> str | None: ...

    def resolve(self, spec: JobSpec) -> JobSpec: ...

    def generate(
        self,
        specs: Sequence[JobSpec],
        *,
        on_step: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Any: ...

    def unload(self) -> None: ...

    # Optional: {"device", "gpu_available", "gpu_name", "memory_used", "memory_total"}
    # def device_info(self) -> dict[str, Any]: ...
    # Optional: the images one call may take for this spec (its family, size, memory)
    # def batch_limit(self, spec: JobSpec) -> int: ...
    # Optional: compile and warm up the default model before the first claim
    # def warm_up_default(self) -> None: ...


@dataclass(frozen=True)
class RunnerOptions:
    name: str
    max_batch: int = 8
    lease_s: float = 60.0
    job_timeout_s: float = 300.0
    switch_model_after_s: float = 30.0
    poll_s: float = 0.05  # how often an idle runner looks for a change in the queue
    recheck_s: float = 1.0  # and how often it claims anyway (not_before, other hosts)
    progress_s: float = 0.25  # progress and cancel checks while a batch runs
    retry_after_s: float = 30.0  # a job whose outputs could not be written waits this long
    hang_grace_s: float = 60.0  # beyond the job timeout, before a stuck device is given up
    exit_when_idle: bool = False  # drain the queue, then stop (cron, benchmarks)
    parent_pid: int | None = None  # serve's pid: stop when it is gone (serve was killed)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> RunnerOptions:
        runner = settings.runner
        values: dict[str, Any] = {
            "name": runner.name or default_name(),
            "max_batch": runner.max_batch,
            "lease_s": runner.lease_s,
            "job_timeout_s": runner.job_timeout_s,
            "switch_model_after_s": runner.switch_model_after_s,
            "hang_grace_s": max(60.0, runner.lease_s),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @staticmethod
    def check_name(name: str) -> None:
        if not NAME.fullmatch(name):
            raise ConfigError(
                f"runner name {name!r}: use 1..64 letters, digits, '.', '_' or '-'", key="name"
            )


def default_name() -> str:
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())
    return host[:64] or "runner"


@dataclass(frozen=True)
class Piece:
    """Some or all of one job's images, as a spec the engine can batch."""

    job: JobRecord
    spec: JobSpec
    first: int  # index of the piece's first image in its job

    def split(self) -> tuple[Piece, Piece]:
        half = self.spec.n // 2
        seed = self.spec.seed or 0
        head = replace(self.spec, n=half)
        tail = replace(self.spec, n=self.spec.n - half, seed=(seed + half) % (SEED_MAX + 1))
        return Piece(self.job, head, self.first), Piece(self.job, tail, self.first + half)


@dataclass
class Outcome:
    """What became of one job of a batch."""

    job: JobRecord
    spec: JobSpec  # resolved
    images: dict[int, Any] = field(default_factory=dict)  # index -> PIL image
    seeds: dict[int, int] = field(default_factory=dict)
    error: SpoolError | None = None
    retryable: bool = False  # the error may pass: requeue while attempts are left
    seconds: float = 0.0  # pipeline time of the calls that made its images
    batch_images: int = 0  # images in the largest call it was part of
    device: str | None = None
    memory_mode: str | None = None


@dataclass
class Running:
    """The pipeline call in progress, as the monitor and the stop check see it."""

    job_ids: list[str]
    deadline: float  # monotonic
    started: float
    step: int = 0
    total: int = 0
    reported: tuple[int, int] = (0, 0)
    stop_reason: str | None = None  # shutdown | timeout | cancelled


class RunnerLock:
    """An exclusive lock on `<data_dir>/runner-<name>.lock`, held while the runner runs;
    the kernel drops it when the process dies, however it dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.path.read_text().strip() or "another process"
            raise RunnerBusy(
                f"a runner named {self.path.stem.removeprefix('runner-')!r} is already "
                f"running on this host (pid {holder}); give this one another runner.name",
                lock=str(self.path),
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


class Runner:
    def __init__(
        self,
        store: Store,
        outbox: Outbox,
        generator: BatchGenerator,
        options: RunnerOptions,
        *,
        lock_dir: Path,
        on_hang: Callable[[], None] | None = None,
        faults: Faults = NO_FAULTS,
    ) -> None:
        self.store = store
        self.faults = faults
        self.outbox = outbox
        self.generator = generator
        self.options = options
        self.owner = f"{options.name}/{os.getpid()}/{secrets.token_hex(3)}"
        self.lock = RunnerLock(lock_dir / f"runner-{options.name}.lock")
        self._on_hang = on_hang or self._exit_hung
        self._stop = threading.Event()
        self._done = threading.Event()  # the main loop has ended; helpers stop too
        self._lock = threading.Lock()
        # The jobs this runner holds a lease on. A job leaves it when it is finished, or
        # cancelled (the monitor finishes it at once), or its lease is lost: whatever is
        # still working on it then drops its result.
        self._held: dict[str, JobRecord] = {}
        self._running: Running | None = None
        # Outcomes waiting for the writer: at most two batches ahead of the disk.
        self._writes: queue.Queue[Outcome | None] = queue.Queue(maxsize=2 * options.max_batch)
        self._warming = False  # compiling the default model before the first claim
        self._resident_since = time.monotonic()
        self._resident: str | None = None
        self._started_at = utcnow()
        self._signals: StopSignals | None = None

    # -- the outside world -------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop after (or, at its next step, during) the current batch."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: stop gracefully, giving the jobs of the batch back to the queue
        with their attempts uncounted; the same signal again within a second is that stop
        delivered twice (a process group's signal and its parent's); later, exit at once
        (the jobs held are rescued when a runner of this name starts again)."""
        self._signals = StopSignals(self._on_warm_stop, exit_now)
        self._signals.install()

    def _on_warm_stop(self, name: str) -> None:
        log.info("%s: finishing up; send it again after a second to exit at once", name)
        self._stop.set()

    # -- the main loop -------------------------------------------------------------------

    def run(self) -> None:
        self.lock.acquire()
        try:
            self._start_up()
            threads = [
                threading.Thread(target=self._write_loop, name="outbox-writer", daemon=True),
                threading.Thread(target=self._monitor_loop, name="monitor", daemon=True),
            ]
            for thread in threads:
                thread.start()
            try:
                self._warm_up()
                with self.store.db.pinned():
                    self._loop()
            finally:
                self._writes.put(None)  # the writer drains what was generated, then ends
                threads[0].join()
                self._done.set()
                threads[1].join()
                self._release_held()
                self._report_quietly("stopped")
        finally:
            self.lock.release()
        log.info("runner %s stopped", self.owner)

    def _start_up(self) -> None:
        self.outbox.root.mkdir(parents=True, exist_ok=True)
        self.outbox.remove_stale()
        log.info("runner %s starting", self.owner)
        self._report_quietly("idle")
        # The lock says no live runner has this name: its jobs are a dead one's.
        self._rescue_orphans(held_by=f"{self.options.name}/")

    def _warm_up(self) -> None:
        """Load the default model (and compile it, with runner.compile) before the first
        claim, while the monitor thread reports this runner as `warming`."""
        warm = getattr(self.generator, "warm_up_default", None)
        if warm is None:
            return
        self._warming = True
        try:
            warm()
        except SpoolError as exc:  # no model yet, or it does not load: jobs will say so
            log.warning("warm-up skipped: %s", exc.message)
        finally:
            self._warming = False

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                jobs = self._claim()
            except DatabaseError as exc:  # away or locked for long: wait, then try again
                log.error("cannot claim jobs: %s; retrying in %g s", exc.message, DB_RETRY_S)
                self._stop.wait(DB_RETRY_S)
                continue
            if jobs:
                self._run_batch(jobs)
            elif self.options.exit_when_idle:
                return  # nothing to claim now; the writer finishes what was made
            else:
                self._wait_for_work()

    def _wait_for_work(self) -> None:
        """Sleep until the database changes (checked every `poll_s`, a cheap read of a
        counter) or `recheck_s` passes, whichever comes first."""
        marker = self.store.change_marker()
        deadline = time.monotonic() + self.options.recheck_s
        while time.monotonic() < deadline:
            if self._stop.wait(self.options.poll_s):
                return
            if self.store.change_marker() != marker:
                return

    def _claim(self) -> list[JobRecord]:
        resident = self.generator.resident_model
        if resident != self._resident:
            self._resident, self._resident_since = resident, time.monotonic()
        waited = time.monotonic() - self._resident_since
        cutoff = (
            None
            if waited < self.options.switch_model_after_s
            else utcnow() - timedelta(seconds=self.options.switch_model_after_s)
        )
        jobs = self.store.claim_compatible(
            self.owner,
            max_images=self.options.max_batch,
            lease_s=self.options.lease_s,
            prefer_models=[resident] if resident else [],
            prefer_default=resident is not None and resident == self.generator.default_model_id(),
            switch_for_jobs_queued_before=cutoff,
            images_for=self._images_per_call,
        )
        if jobs:
            with self._lock:
                self._held.update((job.id, job) for job in jobs)
            for job in jobs:
                log.info(
                    "job %s running (attempt %d of %d, %d job(s) in the call, waited %.2f s)",
                    job.id,
                    job.attempts,
                    job.max_attempts,
                    len(jobs),
                    (job.started_at - job.created_at).total_seconds() if job.started_at else 0.0,
                    extra={"job_id": job.id, "status": "running"},
                )
            self.faults.crash_point("after_claim")
        return jobs

    # -- one batch -------------------------------------------------------------------------

    def _run_batch(self, jobs: list[JobRecord]) -> None:
        pending: list[Outcome] = []
        for job in jobs:
            if self._finish_if_written(job):
                continue
            try:
                resolved = self.generator.resolve(job.spec.with_seed())
            except SpoolError as exc:  # e.g. the model was removed since it was queued
                self._fail(Outcome(job, job.spec, error=exc))
                continue
            pending.append(Outcome(job, resolved))
        if not pending:
            return
        pieces = [Piece(o.job, o.spec, 0) for o in pending]
        by_id = {o.job.id: o for o in pending}
        deadline = time.monotonic() + self.options.job_timeout_s
        try:
            self._generate(pieces, by_id, deadline)
        except Interrupted:
            pass  # handled per job below, from the stop reason
        except SpoolError as exc:  # the model failed to load, a size it cannot do, ...
            for outcome in pending:
                outcome.error = outcome.error or exc
        except Exception as exc:  # a bug or a device fault: retry the jobs elsewhere/later
            log.exception("generation failed")
            failure = _unexpected(exc)
            for outcome in pending:
                if outcome.error is None:
                    outcome.error, outcome.retryable = failure, True
        reason = self._running.stop_reason if self._running else None
        with self._lock:
            self._running = None
        self.faults.crash_point("after_generate")
        for outcome in pending:
            self._settle(outcome, reason)

    def _generate(self, pieces: list[Piece], by_id: dict[str, Outcome], deadline: float) -> None:
        """Run the pieces as one call; out of memory, as two halves, down to single
        images; an image that does not fit alone fails its job."""
        images = sum(p.spec.n for p in pieces)
        if images > self._images_per_call(pieces[0].spec):  # more than fits: in parts
            for half in _halves(pieces):
                self._generate(half, by_id, deadline)
            return
        running = Running(
            job_ids=sorted({p.job.id for p in pieces}), deadline=deadline, started=time.monotonic()
        )
        with self._lock:
            self._running = running
        try:
            output = self.generator.generate(
                [p.spec for p in pieces],
                on_step=self._on_step,
                should_stop=self._should_stop,
            )
        except GpuOutOfMemory as exc:
            # Only the message is kept: the error's traceback holds the failed call's
            # frames, which must be gone before a smaller call is tried.
            out_of_memory: GpuOutOfMemory | None = GpuOutOfMemory(exc.message, **exc.details)
        else:
            out_of_memory = None
        if out_of_memory is not None:
            if images == 1:
                by_id[pieces[0].job.id].error = out_of_memory
                return
            log.warning("out of memory with %d images in one call: splitting", images)
            for half in _halves(pieces):
                self._generate(half, by_id, deadline)
            return
        for piece, made in zip(pieces, output.jobs, strict=True):
            outcome = by_id[piece.job.id]
            outcome.seconds += output.seconds
            outcome.batch_images = max(outcome.batch_images, images)
            outcome.device, outcome.memory_mode = output.device, output.memory_mode
            if made.error is not None:
                outcome.error = outcome.error or made.error
                continue
            for offset, (image, seed) in enumerate(zip(made.images, made.seeds, strict=True)):
                outcome.images[piece.first + offset] = image
                outcome.seeds[piece.first + offset] = seed

    def _images_per_call(self, spec: JobSpec) -> int:
        """How many images one call may take for this spec's model and size: what the
        engine says fits (on a GPU, by free memory), at most `max_batch`. Asked when
        claiming, so that no claimed job waits as `running` for a later call, and again
        before the call (the model may have changed since)."""
        limit_of = getattr(self.generator, "batch_limit", None)
        if limit_of is None:
            return self.options.max_batch
        try:
            return max(1, min(self.options.max_batch, limit_of(spec)))
        except SpoolError:  # e.g. its model is gone: the job fails with that when it runs
            return self.options.max_batch

    def _on_step(self, step: int, total: int) -> None:
        running = self._running
        if running is not None:
            running.step, running.total = step, total

    def _should_stop(self) -> bool:
        running = self._running
        if running is None:
            return False
        if self._stop.is_set():
            running.stop_reason = "shutdown"
        elif time.monotonic() > running.deadline:
            running.stop_reason = "timeout"
        elif not any(job_id in self._held for job_id in running.job_ids):
            running.stop_reason = "cancelled"  # (or their leases were lost)
        return running.stop_reason is not None

    def _settle(self, outcome: Outcome, reason: str | None) -> None:
        """Send one job of the batch on its way: to the writer, or finished otherwise."""
        job_id = outcome.job.id
        with self._lock:
            held = job_id in self._held
        if not held:
            return  # cancelled or taken over meanwhile: its images are dropped
        complete = outcome.error is None and len(outcome.images) == outcome.spec.n
        if complete:
            self._writes.put(outcome)
        elif outcome.error is not None and not isinstance(outcome.error, Interrupted):
            self._fail(outcome)
        elif reason == "timeout":
            outcome.error = JobTimeout(
                f"the job ran longer than runner.job_timeout_s ({self.options.job_timeout_s:g} s)"
            )
            self._fail(outcome)
        else:  # stopped for shutdown: back to the queue, the attempt not counted
            self._release([job_id])

    def _finish_if_written(self, job: JobRecord) -> bool:
        """A job whose outbox directory is complete (it ran before, and its runner died
        before recording that) is finished from it, not run twice."""
        result = self.outbox.read_result(job.id)
        if result is None or result.get("status") != "succeeded":
            return False
        log.info("job %s was already written; finishing it", job.id, extra={"job_id": job.id})
        self._finish(job.id, lambda: self.store.succeed(job.id, self.owner, result))
        return True

    # -- finishing ---------------------------------------------------------------------------

    def _finish(self, job_id: str, change: Callable[[], JobRecord]) -> JobRecord | None:
        """Apply a final status change to a held job; a job whose lease was lost (another
        runner took it over) or that was finished meanwhile is left to its new owner."""
        try:
            record = change()
        except (LeaseLost, IllegalTransition) as exc:
            log.warning("%s", exc.message, extra={"job_id": job_id})
            record = None
        with self._lock:
            self._held.pop(job_id, None)
        if record is not None:
            _log_transition(record)
        return record

    def _fail(self, outcome: Outcome) -> None:
        error = outcome.error or SpoolError("unknown failure")
        job = outcome.job
        retryable = outcome.retryable
        final = not retryable or job.attempts >= job.max_attempts
        result = self._result(outcome, status="failed") if final else None
        if final:
            self._write_failure(job, result)
        done = self._finish(
            job.id,
            lambda: self.store.fail(
                job.id,
                self.owner,
                error.code,
                error.message,
                retryable=retryable,
                retry_after_s=self.options.retry_after_s if retryable else 0.0,
                result=result,
            ),
        )
        if final and done is None:  # cancelled or taken over meanwhile: not our failure
            self.outbox.remove(job.id)

    def _write_failure(self, job: JobRecord, result: dict[str, Any] | None) -> None:
        """A failed job's directory holds a result.json with the error, and no images."""
        if result is None:
            result = {
                **self._base_result(job, job.spec),
                "status": "failed",
                "error": {"code": job.error_code, "message": job.error_message},
            }
        try:
            self.outbox.write(job.id, result)
        except OutboxWriteFailed as exc:
            log.error("%s", exc.message, extra={"job_id": job.id})

    def _release(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        self.store.release(self.owner, job_ids)
        with self._lock:
            for job_id in job_ids:
                self._held.pop(job_id, None)
        log.info("released %d job(s) back to the queue", len(job_ids))

    def _release_held(self) -> None:
        with self._lock:
            held = list(self._held)
        self._release(held)

    # -- results -------------------------------------------------------------------------------

    def _base_result(self, job: JobRecord, spec: JobSpec) -> dict[str, Any]:
        return {
            "job_id": job.id,
            "batch_id": job.batch_id,
            "source": job.source.value,
            "client": job.client,
            # the request file's name, for jobs from the inbox
            "source_file": job.client if job.source is Source.INBOX else None,
            "spec": spec.to_dict(),
            "attempt": job.attempts,
        }

    def _result(self, outcome: Outcome, *, status: str) -> dict[str, Any]:
        job, spec = outcome.job, outcome.spec
        now = utcnow()
        files = [
            {
                "file": image_name(job.id, i),
                "seed": outcome.seeds[i],
                "width": outcome.images[i].width,
                "height": outcome.images[i].height,
            }
            for i in sorted(outcome.images)
        ]
        return {
            **self._base_result(job, spec),
            "status": status,
            # a failed job's directory holds no images: none are listed, whatever was made
            "images": files if status == "succeeded" else [],
            "device": getattr(outcome, "device", None),
            "memory_mode": getattr(outcome, "memory_mode", None),
            "timings": {
                "queued_at": _iso(job.created_at),
                "started_at": _iso(job.started_at),
                "finished_at": _iso(now),
                "wait_s": _round((job.started_at - job.created_at).total_seconds())
                if job.started_at
                else None,
                "generate_s": _round(outcome.seconds),
                "batch_images": outcome.batch_images,
            },
            "error": outcome.error.to_dict() if outcome.error else None,
        }

    # -- the writer thread ------------------------------------------------------------------

    def _write_loop(self) -> None:
        with self.store.db.pinned():
            while True:
                outcome = self._writes.get()
                if outcome is None:
                    return
                try:
                    self._write(outcome)
                except Exception:  # the writer never dies with jobs in its queue
                    log.exception("writing the outputs of job %s failed", outcome.job.id)
                    self._let_go(outcome.job.id)

    def _let_go(self, job_id: str) -> None:
        """Stop renewing a job's lease whose end could not be recorded (the database was
        away): it lapses, the job is rescued, and whoever claims it next finishes it from
        its outbox directory if that was written, or runs it again."""
        with self._lock:
            self._held.pop(job_id, None)

    def _write(self, outcome: Outcome) -> None:
        job, spec = outcome.job, outcome.spec
        with self._lock:
            held = job.id in self._held
        if not held:
            return  # cancelled or taken over while it waited
        result = self._result(outcome, status="succeeded")
        order = sorted(outcome.images)
        try:
            self.outbox.write(
                job.id,
                result,
                [outcome.images[i] for i in order],
                [
                    infotext(
                        spec, outcome.seeds[i], outcome.images[i].width, outcome.images[i].height
                    )
                    for i in order
                ],
            )
        except OutboxWriteFailed as exc:
            log.error("%s; the job goes back to the queue", exc.message, extra={"job_id": job.id})
            outcome.error, outcome.retryable = exc, True
            self._fail(outcome)
            return
        self.faults.crash_point("after_outbox_write")
        self.faults.crash_point("before_succeed")
        done = self._finish(job.id, lambda: self.store.succeed(job.id, self.owner, result))
        if done is None and self.store.get(job.id).status is JobStatus.CANCELLED:
            self.outbox.remove(job.id)  # cancelled while its files were being written

    # -- the monitor thread ---------------------------------------------------------------

    def _monitor_loop(self) -> None:
        renew_every = self.options.lease_s / 3
        last_renewal = last_rescue = time.monotonic()
        last_report = float("-inf")
        with self.store.db.pinned():
            while not self._done.wait(self.options.progress_s):
                try:
                    self._check_running()
                    self._check_parent()
                    if time.monotonic() - last_report >= REPORT_S:
                        self._report()
                        last_report = time.monotonic()
                    if time.monotonic() - last_renewal >= renew_every:
                        self._renew_leases()
                        last_renewal = time.monotonic()
                    if time.monotonic() - last_rescue >= self.options.lease_s:
                        self._rescue_orphans()
                        last_rescue = time.monotonic()
                except SpoolError as exc:  # the database is busy or away: try again
                    log.warning("monitor: %s", exc.message)

    def _check_parent(self) -> None:
        parent = self.options.parent_pid
        if parent is not None and os.getppid() != parent and not self._stop.is_set():
            log.warning("serve (pid %d) is gone: stopping", parent)
            self._stop.set()

    def _report(self, state: str | None = None) -> None:
        """Tell /health and /metrics what this runner is doing (about once a second)."""
        running = self._running
        info_of = getattr(self.generator, "device_info", None)
        info: dict[str, Any] = info_of() if info_of is not None else {}
        self.store.report_runner(
            RunnerReport(
                name=self.options.name,
                owner=self.owner,
                started_at=self._started_at,
                heartbeat_at=utcnow(),
                state=state or ("busy" if running is not None else self._idle_state()),
                device=info.get("device"),
                gpu_available=bool(info.get("gpu_available", False)),
                gpu_name=info.get("gpu_name"),
                memory_used=info.get("memory_used"),
                memory_total=info.get("memory_total"),
                model=self.generator.resident_model,
                job_id=running.job_ids[0] if running is not None else None,
                step=running.step if running is not None else None,
                total=running.total if running is not None else None,
            )
        )

    def _idle_state(self) -> str:
        return "warming" if self._warming else "idle"

    def _report_quietly(self, state: str) -> None:
        try:
            self._report(state)
        except SpoolError as exc:
            log.warning("could not report the runner %s: %s", state, exc.message)

    def _rescue_orphans(self, held_by: str | None = None) -> None:
        """Requeue the jobs of runners whose leases expired (another host's runner that
        died, say); the ones out of attempts fail, with a result.json saying so."""
        report = self.store.requeue_orphans(held_by=held_by)
        for job in self.store.get_many(report.exhausted):
            self._write_failure(job, None)
        if report.requeued or report.exhausted or held_by is not None:
            log.info(
                "%d orphaned job(s) requeued, %d out of attempts",
                len(report.requeued),
                len(report.exhausted),
            )

    def _check_running(self) -> None:
        running = self._running
        if running is None:
            return
        if time.monotonic() > running.deadline + self.options.hang_grace_s:
            self._hung(running)
            return
        progress = (running.step, running.total)
        if progress != running.reported and running.total:
            beat = self.store.set_progress(self.owner, running.job_ids, *progress)
            running.reported = progress
        else:
            beat = self.store.heartbeat(self.owner, running.job_ids, lease_s=self.options.lease_s)
        self._note(beat.cancel_requested, beat.lost(running.job_ids))

    def _renew_leases(self) -> None:
        with self._lock:
            held = list(self._held)
        beat = self.store.heartbeat(self.owner, held, lease_s=self.options.lease_s)
        self._note(beat.cancel_requested, beat.lost(held))

    def _note(self, cancelled: frozenset[str], lost: set[str]) -> None:
        """Act on a heartbeat: cancelled jobs are finished as cancelled now (the batch
        they are in drops their images, or stops if nothing else is left in it); jobs
        whose lease was lost are let go."""
        with self._lock:
            for job_id in lost:
                if self._held.pop(job_id, None) is not None:
                    log.warning("lost the lease of job %s", job_id, extra={"job_id": job_id})
            to_cancel = [job_id for job_id in cancelled if job_id in self._held]
        for job_id in to_cancel:
            self._finish(job_id, lambda j=job_id: self.store.finish_cancelled(j, self.owner))

    def _hung(self, running: Running) -> None:
        """The device has not come back from a call long past its deadline: fail its jobs
        with `timeout` and give up the process (its supervisor starts a fresh one)."""
        message = (
            f"the device did not return within {self.options.job_timeout_s:g} s "
            f"(+{self.options.hang_grace_s:g} s grace); the runner restarted"
        )
        log.critical("%s; failing %d job(s)", message, len(running.job_ids))
        error = JobTimeout(message)
        for job_id in running.job_ids:
            with self._lock:
                job = self._held.get(job_id)
            if job is None:  # cancelled or taken over meanwhile
                continue
            # Like every finished job, it gets its result.json (the error, no images).
            result = {**self._base_result(job, job.spec), "status": "failed"}
            result.update(images=[], error=error.to_dict())
            self._write_failure(job, result)
            try:
                self._finish(
                    job_id,
                    lambda job_id=job_id, result=result: self.store.fail(
                        job_id, self.owner, error.code, message, result=result
                    ),
                )
            except SpoolError as exc:  # the database is away too: its lease will lapse
                log.warning("%s", exc.message)
        self._on_hang()

    @staticmethod
    def _exit_hung() -> None:
        logging.shutdown()
        os._exit(HANG_EXIT_CODE)


def _halves(pieces: list[Piece]) -> list[list[Piece]]:
    """Split a call in two of about equal image counts (a lone job by its images)."""
    if len(pieces) == 1:
        head, tail = pieces[0].split()
        return [[head], [tail]]
    total = sum(p.spec.n for p in pieces)
    count = 0
    for index, piece in enumerate(pieces):
        count += piece.spec.n
        if count * 2 >= total:
            cut = max(1, min(index + 1, len(pieces) - 1))
            return [pieces[:cut], pieces[cut:]]
    return [pieces[:1], pieces[1:]]


def _unexpected(exc: Exception | None) -> SpoolError:
    reason = f"{type(exc).__name__}: {exc}" if exc is not None else "see the runner's log"
    return GenerationFailed(f"unexpected error: {reason}"[:500])


def _round(value: float) -> float:
    return round(value, 3)


def _log_transition(job: JobRecord) -> None:
    wait = run = None
    if job.started_at is not None:
        wait = (job.started_at - job.created_at).total_seconds()
        if job.finished_at is not None:
            run = (job.finished_at - job.started_at).total_seconds()
    log.info(
        "job %s %s%s (source %s, model %s, waited %s s, ran %s s)",
        job.id,
        job.status.value,
        f" {job.error_code}" if job.error_code else "",
        job.source.value,
        job.model or "default",
        f"{wait:.2f}" if wait is not None else "-",
        f"{run:.2f}" if run is not None else "-",
        extra={"job_id": job.id, "status": job.status.value},
    )
