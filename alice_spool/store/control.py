"""The user's side: cancel, retry, reprioritise and purge jobs.

Each change is a conditional UPDATE (the job must be in a state that allows it), so a
concurrent runner can never be overwritten; when nothing matched, the job is read to say
precisely why.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.engine import Row

from .. import errors
from ..records import BatchCancelReport, JobRecord
from ..spec import parse_priority
from ..states import FINISHED, JobStatus
from ._base import COLUMNS, Repository, chunks, get_job, utcnow
from .counters import count_finished, count_records
from .gallery import forget_jobs
from .tables import Job

# What a retried job starts again with.
_FRESH = {
    "status": JobStatus.QUEUED,
    "attempts": 0,
    "started_at": None,
    "finished_at": None,
    "lease_owner": None,
    "lease_expires_at": None,
    "cancel_requested": False,
    "progress_step": None,
    "progress_total": None,
    "result": None,
    "error_code": None,
    "error_message": None,
}
_RETRYABLE = (JobStatus.FAILED, JobStatus.CANCELLED)


def _change(
    conn: Connection, job_id: str, allowed: Collection[JobStatus], values: dict[str, Any]
) -> Row[Any] | None:
    """Apply `values` to the job if its status is one of `allowed`; its new row, or None."""
    return conn.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(allowed))
        .values(**values)
        .returning(*COLUMNS)
    ).first()


_STATE = {
    JobStatus.QUEUED: "is queued",
    JobStatus.RUNNING: "is running",
    JobStatus.SUCCEEDED: "already succeeded",
    JobStatus.FAILED: "already failed",
    JobStatus.CANCELLED: "was cancelled",
}


def _refuse(current: JobRecord, allowed: str) -> errors.IllegalTransition:
    return errors.IllegalTransition(
        f"job {current.id} {_STATE[current.status]}; only {allowed}", job_id=current.id
    )


class Control(Repository):
    """Cancel, retry, reprioritise, purge."""

    def cancel(self, job_id: str, *, now: datetime | None = None) -> JobRecord:
        """Cancel a queued job at once, or ask the runner to stop a running one.
        Cancelling a cancelled job changes nothing; a finished job cannot be cancelled."""
        now = now or utcnow()

        def work(conn: Connection) -> JobRecord:
            row = _change(
                conn,
                job_id,
                [JobStatus.QUEUED],
                {"status": JobStatus.CANCELLED, "finished_at": now},
            )
            if row is not None:
                cancelled = JobRecord.from_row(row)
                count_records(conn, [cancelled])
                return cancelled
            row = _change(conn, job_id, [JobStatus.RUNNING], {"cancel_requested": True})
            if row is not None:
                return JobRecord.from_row(row)
            current = get_job(conn, job_id)
            if current.status is JobStatus.CANCELLED:
                return current
            raise _refuse(current, "queued or running jobs can be cancelled")

        return self.db.write(work)

    def fail_queued_for_model(
        self, model_id: str, error: errors.SpoolError, *, now: datetime | None = None
    ) -> list[str]:
        """End every queued job for `model_id` as failed with `error` (the model was
        deleted); running jobs finish as they are. Returns their ids."""
        now = now or utcnow()

        def work(conn: Connection) -> list[str]:
            rows = conn.execute(
                update(Job)
                .where(Job.status == JobStatus.QUEUED, Job.model == model_id)
                .values(
                    status=JobStatus.FAILED,
                    finished_at=now,
                    error_code=error.code,
                    error_message=error.message,
                )
                .returning(*COLUMNS)
            ).all()
            failed = [JobRecord.from_row(row) for row in rows]
            count_records(conn, failed)
            return [job.id for job in failed]

        return self.db.write(work)

    def cancel_batch(self, batch_id: str, *, now: datetime | None = None) -> BatchCancelReport:
        """Cancel every unfinished job of a batch (running ones at their next step)."""
        now = now or utcnow()
        in_batch = update(Job).where(Job.batch_id == batch_id)

        def work(conn: Connection) -> BatchCancelReport:
            total = conn.scalar(
                select(func.count()).select_from(Job).where(Job.batch_id == batch_id)
            )
            if not total:
                raise errors.BatchNotFound(f"no batch {batch_id}", batch_id=batch_id)
            cancelled_ids = (
                conn.execute(
                    in_batch.where(Job.status == JobStatus.QUEUED)
                    .values(status=JobStatus.CANCELLED, finished_at=now)
                    .returning(Job.id)
                )
                .scalars()
                .all()
            )
            count_finished(conn, cancelled_ids)
            cancelled = len(cancelled_ids)
            requested = conn.execute(
                in_batch.where(Job.status == JobStatus.RUNNING).values(cancel_requested=True)
            ).rowcount
            return BatchCancelReport(cancelled, requested, total - cancelled - requested)

        return self.db.write(work)

    def retry(self, job_id: str) -> JobRecord:
        """Queue a failed or cancelled job again, with fresh attempts."""

        def work(conn: Connection) -> JobRecord:
            self.check_room(conn, 1)
            row = _change(conn, job_id, _RETRYABLE, _FRESH)
            if row is not None:
                return JobRecord.from_row(row)
            raise _refuse(get_job(conn, job_id), "failed or cancelled jobs can be retried")

        return self.db.write(work)

    def retry_failed(self, *, batch_id: str | None = None) -> list[str]:
        """Queue every failed job (of one batch, if given) again. Returns their ids."""
        failed = [Job.status == JobStatus.FAILED]
        if batch_id is not None:
            failed.append(Job.batch_id == batch_id)

        def work(conn: Connection) -> list[str]:
            self.check_room(conn, conn.scalar(select(func.count()).where(*failed)) or 0)
            retried = conn.execute(update(Job).where(*failed).values(**_FRESH).returning(Job.id))
            return list(retried.scalars())

        return self.db.write(work)

    def set_priority(self, job_id: str, priority: int) -> JobRecord:
        """Change a queued job's priority (higher runs first)."""
        priority = parse_priority(priority)

        def work(conn: Connection) -> JobRecord:
            row = _change(conn, job_id, [JobStatus.QUEUED], {"priority": priority})
            if row is not None:
                return JobRecord.from_row(row)
            raise _refuse(get_job(conn, job_id), "a queued job's priority can change")

        return self.db.write(work)

    def mark_images_expired(self, job_ids: Iterable[str], *, now: datetime | None = None) -> int:
        """Record that retention deleted these finished jobs' images."""
        ids = list(job_ids)
        now = now or utcnow()

        def work(conn: Connection) -> int:
            forget_jobs(conn, ids)  # their gallery rows: the files are gone
            return sum(
                conn.execute(
                    update(Job)
                    .where(Job.id.in_(list(chunk)), Job.status.in_(FINISHED))
                    .values(images_expired_at=now)
                ).rowcount
                for chunk in chunks(ids)
            )

        return self.db.write(work) if ids else 0

    def purge(self, *, before: datetime, dry_run: bool = False) -> list[str]:
        """Delete finished jobs that finished before `before`; returns their ids. With
        `dry_run`, only says which jobs that would be."""
        finished_before = (Job.status.in_(FINISHED), Job.finished_at < before)

        def work(conn: Connection) -> list[str]:
            if dry_run:
                return list(conn.execute(select(Job.id).where(*finished_before)).scalars())
            purged = list(
                conn.execute(delete(Job).where(*finished_before).returning(Job.id)).scalars()
            )
            forget_jobs(conn, purged)
            return purged

        return self.db.write(work)
