"""The user's side: cancel, retry, reprioritise and purge jobs."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, delete, func, select, update

from .. import errors
from ..models import FINISHED, Job, JobStatus
from ..records import (
    BatchCancelReport,
    JobRecord,
)
from ..spec import parse_priority
from ._base import COLUMNS, StoreBase, get_job, utcnow


class Control(StoreBase):
    """Cancel, retry, reprioritise, purge."""

    def cancel(self, job_id: str, *, now: datetime | None = None) -> JobRecord:
        """Cancel a queued job at once, or ask the runner to stop a running one.
        Cancelling a cancelled job changes nothing; a finished job cannot be cancelled."""
        now = now or utcnow()

        def work(conn: Connection) -> JobRecord:
            row = (
                conn.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
                    .values(status=JobStatus.CANCELLED, finished_at=now)
                    .returning(*COLUMNS)
                ).first()
                or conn.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
                    .values(cancel_requested=True)
                    .returning(*COLUMNS)
                ).first()
            )
            if row is not None:
                return JobRecord.from_row(row)
            current = get_job(conn, job_id)
            if current.status is JobStatus.CANCELLED:
                return current
            raise errors.IllegalTransition(
                f"job {job_id} already {current.status.value}; only queued or running jobs "
                "can be cancelled",
                job_id=job_id,
            )

        return self.db.write(work)

    def cancel_batch(self, batch_id: str, *, now: datetime | None = None) -> BatchCancelReport:
        now = now or utcnow()

        def work(conn: Connection) -> BatchCancelReport:
            total = conn.scalar(
                select(func.count()).select_from(Job).where(Job.batch_id == batch_id)
            )
            if not total:
                raise errors.BatchNotFound(f"no batch {batch_id}", batch_id=batch_id)
            cancelled = conn.execute(
                update(Job)
                .where(Job.batch_id == batch_id, Job.status == JobStatus.QUEUED)
                .values(status=JobStatus.CANCELLED, finished_at=now)
            ).rowcount
            requested = conn.execute(
                update(Job)
                .where(Job.batch_id == batch_id, Job.status == JobStatus.RUNNING)
                .values(cancel_requested=True)
            ).rowcount
            return BatchCancelReport(cancelled, requested, total - cancelled - requested)

        return self.db.write(work)

    _RESET = {
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

    def retry(self, job_id: str) -> JobRecord:
        """Queue a failed or cancelled job again, with fresh attempts."""

        def work(conn: Connection) -> JobRecord:
            self.check_room(conn, 1)
            row = conn.execute(
                update(Job)
                .where(Job.id == job_id)
                .where(Job.status.in_([JobStatus.FAILED, JobStatus.CANCELLED]))
                .values(**self._RESET)
                .returning(*COLUMNS)
            ).first()
            if row is not None:
                return JobRecord.from_row(row)
            current = get_job(conn, job_id)
            raise errors.IllegalTransition(
                f"job {job_id} is {current.status.value}; only failed or cancelled jobs "
                "can be retried",
                job_id=job_id,
            )

        return self.db.write(work)

    def retry_failed(self, *, batch_id: str | None = None) -> list[str]:
        """Queue every failed job (of one batch, if given) again. Returns their ids."""

        def work(conn: Connection) -> list[str]:
            failed = select(func.count()).select_from(Job).where(Job.status == JobStatus.FAILED)
            statement = update(Job).where(Job.status == JobStatus.FAILED)
            if batch_id is not None:
                failed = failed.where(Job.batch_id == batch_id)
                statement = statement.where(Job.batch_id == batch_id)
            self.check_room(conn, conn.scalar(failed) or 0)
            return list(conn.execute(statement.values(**self._RESET).returning(Job.id)).scalars())

        return self.db.write(work)

    def set_priority(self, job_id: str, priority: int) -> JobRecord:
        """Change a queued job's priority (higher runs first)."""
        priority = parse_priority(priority)

        def work(conn: Connection) -> JobRecord:
            row = conn.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
                .values(priority=priority)
                .returning(*COLUMNS)
            ).first()
            if row is not None:
                return JobRecord.from_row(row)
            current = get_job(conn, job_id)
            raise errors.IllegalTransition(
                f"job {job_id} is {current.status.value}; only a queued job's priority can change",
                job_id=job_id,
            )

        return self.db.write(work)

    def purge(self, *, before: datetime, dry_run: bool = False) -> list[str]:
        """Delete finished jobs that finished before `before`; returns their ids. With
        `dry_run`, only says which jobs that would be."""
        finished_before = (Job.status.in_(FINISHED), Job.finished_at < before)

        def work(conn: Connection) -> list[str]:
            if dry_run:
                return list(conn.execute(select(Job.id).where(*finished_before)).scalars())
            return list(
                conn.execute(delete(Job).where(*finished_before).returning(Job.id)).scalars()
            )

        return self.db.write(work)
