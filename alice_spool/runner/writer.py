"""Finishing jobs, and the writer thread: each job's images are encoded and its outbox
directory written durably, and only then is the job marked succeeded, while the main loop
already runs the next batch. A failure is recorded with its result.json."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..errors import (
    IllegalTransition,
    LeaseLost,
    OutboxWriteFailed,
    SpoolError,
)
from ..outbox import image_name, infotext
from ..records import JobRecord
from ..spec import JobSpec
from ..states import JobStatus, Source
from .parts import Outcome, RunnerState, iso, log_transition, rounded, utcnow

log = logging.getLogger("alice_spool.runner")


class Finishing(RunnerState):
    """The runner's finishing and writing (a part of `Runner`, by thread)."""

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
            log_transition(record)
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
            lambda: self.store.leases.fail(
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
            self.outbox.remove(job.id, claim=job.claims)  # our own files only

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
        self.store.leases.release(self.owner, job_ids)
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
            # the claim these files belong to (Outbox: a later claim's are never touched)
            "claim": job.claims,
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
            "mode": spec.mode,
            "strength": spec.strength,
            "inputs": {
                f"{role}_sha256": reference.removeprefix("sha256:")
                for role, reference in (
                    ("init_image", spec.init_image),
                    ("mask_image", spec.mask_image),
                )
                if reference
            },
            "loras": outcome.loras,
            # only when the job named one: a plain job's result is as it was
            **({"vae": outcome.vae} if outcome.vae else {}),
            # only when a step cache ran (runner.cache): the image is not the uncached one
            **({"cache": outcome.cache} if outcome.cache != "none" else {}),
            **_ran_on(outcome),
            "device": getattr(outcome, "device", None),
            "memory_mode": getattr(outcome, "memory_mode", None),
            "timings": {
                "queued_at": iso(job.created_at),
                "started_at": iso(job.started_at),
                "finished_at": iso(now),
                "wait_s": rounded((job.started_at - job.created_at).total_seconds())
                if job.started_at
                else None,
                "generate_s": rounded(outcome.seconds),
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
            written = self.outbox.write(
                job.id,
                result,
                [outcome.images[i] for i in order],
                [
                    infotext(
                        spec,
                        outcome.seeds[i],
                        outcome.images[i].width,
                        outcome.images[i].height,
                        loras=outcome.loras,
                        vae=outcome.vae,
                        schedule=outcome.schedule,
                        hires_schedule=outcome.hires_schedule,
                        first_size=outcome.first_size,
                        guidance=outcome.guidance,
                    )
                    for i in order
                ],
            )
        except OutboxWriteFailed as exc:
            log.error("%s; the job goes back to the queue", exc.message, extra={"job_id": job.id})
            outcome.error, outcome.retryable = exc, True
            self._fail(outcome)
            return
        if written.superseded:  # our lease lapsed and a later claim wrote the directory
            self._let_go(job.id)
            return
        if written.already_there:  # complete from an earlier run: recorded as written
            result = self.outbox.read_result(job.id) or result
        self.faults.crash_point("after_outbox_write")
        self.faults.crash_point("before_succeed")
        done = self._finish(job.id, lambda: self.store.leases.succeed(job.id, self.owner, result))
        if done is None and self.store.jobs.get(job.id).status is JobStatus.CANCELLED:
            # cancelled while its files were being written: ours go (a later claim's stay)
            self.outbox.remove(job.id, claim=job.claims)


def _ran_on(outcome: Outcome) -> dict[str, Any]:
    """What the engine reports of how it ran, for other readers than the infotext's (the
    A1111 door): the A1111 schedule types of the passes (`schedule`, `hires_schedule`),
    where there are any, and a hires job's first pass's size (`first_pass`: its images
    are the target's). Nothing for a plain job that ran on none."""
    ran: dict[str, Any] = {}
    if outcome.schedule:
        ran["schedule"] = outcome.schedule
    if outcome.hires_schedule:
        ran["hires_schedule"] = outcome.hires_schedule
    if outcome.first_size is not None and outcome.spec.hires is not None:
        width, height = outcome.first_size
        ran["first_pass"] = {"width": width, "height": height}
    return ran
