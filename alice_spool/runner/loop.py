"""The runner's main loop: claim a batch (the head job and the queued jobs that can share
its pipeline call), generate it, and hand each job's images to the writer; the runner's
start (its name lock, orphans requeued) and stop (warm, then cold)."""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from .. import inputs
from ..errors import DatabaseError, GpuOutOfMemory, Interrupted, JobTimeout, SpoolError
from ..faults import NO_FAULTS, Faults
from ..outbox import Outbox
from ..records import JobRecord
from ..spec import JobSpec
from ..stopping import StopSignals, exit_now
from ..store import Store
from ..store.changes import Subscription
from .monitor import Monitoring
from .parts import (
    DB_RETRY_S,
    BatchGenerator,
    Outcome,
    Piece,
    RunnerLock,
    RunnerOptions,
    Running,
    halves,
    unexpected,
    utcnow,
)

log = logging.getLogger("alice_spool.runner")


class Runner(Monitoring):
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
        self._work: Subscription | None = None  # wakes the idle loop (store.changes)
        self._last_report: tuple[str, str | None] | None = None  # an idle report's (monitor)

    # -- the outside world -------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop after (or, at its next step, during) the current batch."""
        self._stop.set()
        self._wake()

    def _wake(self) -> None:
        work = self._work
        if work is not None:
            work.wake()

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
        self._wake()

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
                with self.store.db.pinned(), self.store.changes.watch(queue=True) as work:
                    self._work = work
                    self._loop()
            finally:
                self._work = None
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
        """Sleep until the queue changes (the process's watcher wakes this loop: a
        notification on PostgreSQL, the file's change counter on SQLite) or `recheck_s`
        passes (jobs whose `not_before` came, a watcher that lost its connection)."""
        drop_deleted = getattr(self.generator, "drop_deleted", None)  # optional
        if drop_deleted is not None:
            drop_deleted()  # a model deleted while it was loaded is not kept in memory
        load_asked = getattr(self.generator, "load_asked", None)  # optional
        if load_asked is not None:
            load_asked()  # POST /v1/models/load: the model asked for, loaded while idle
        if self._work is not None and not self._stop.is_set():
            self._work.wait(self.options.recheck_s)

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
        jobs = self.store.leases.claim_compatible(
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
                # Each job's own inputs, read now: one whose files were deleted or damaged
                # fails alone instead of failing the call it would share.
                stored = self._inputs(job.id, resolved)
            except SpoolError as exc:  # e.g. the model was removed since it was queued
                self._fail(Outcome(job, job.spec, error=exc))
                continue
            pending.append(Outcome(job, resolved, inputs=stored))
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
            failure = unexpected(exc)
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
            for half in halves(pieces):
                self._generate(half, by_id, deadline)
            return
        running = Running(
            job_ids=sorted({p.job.id for p in pieces}), deadline=deadline, started=time.monotonic()
        )
        with self._lock:
            self._running = running
        try:
            extra: dict[str, Any] = {}
            if pieces[0].spec.init_image is not None:  # img2img or inpainting: its inputs
                extra["images"] = [by_id[p.job.id].inputs for p in pieces]
            if self.options.max_pixels is not None:
                extra["max_pixels"] = self.options.max_pixels
            output = self.generator.generate(
                [p.spec for p in pieces],
                on_step=self._on_step,
                should_stop=self._should_stop,
                **extra,
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
            for half in halves(pieces):
                self._generate(half, by_id, deadline)
            return
        for piece, made in zip(pieces, output.jobs, strict=True):
            outcome = by_id[piece.job.id]
            outcome.seconds += output.seconds
            outcome.batch_images = max(outcome.batch_images, images)
            outcome.device, outcome.memory_mode = output.device, output.memory_mode
            outcome.loras = list(getattr(output, "loras", []))
            outcome.vae = getattr(output, "vae", None)
            outcome.schedule = getattr(output, "schedule", None)
            outcome.hires_schedule = getattr(output, "hires_schedule", None)
            outcome.first_size = getattr(output, "first_size", None)
            outcome.guidance = getattr(output, "guidance", "classifier-free")
            outcome.cache = getattr(output, "cache", "none")
            if made.error is not None:
                outcome.error = outcome.error or made.error
                continue
            for offset, (image, seed) in enumerate(zip(made.images, made.seeds, strict=True)):
                outcome.images[piece.first + offset] = image
                outcome.seeds[piece.first + offset] = seed

    def _inputs(self, job_id: str, spec: JobSpec) -> dict[str, Any]:
        """A job's stored input images (inputs.py), by role, checked against the hashes
        its spec records; none for a txt2img job."""
        if self.options.data_dir is None or spec.init_image is None:
            return {}
        wanted = {"init_image": spec.init_image, "mask_image": spec.mask_image}
        return inputs.load(self.options.data_dir, job_id, wanted)

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
        self._finish(job.id, lambda: self.store.leases.succeed(job.id, self.owner, result))
        return True
