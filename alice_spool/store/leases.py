"""The runner's side: the atomic claim, leases and heartbeats, finishing jobs, and
rescuing the jobs of runners that died.

The claim is a single `UPDATE ... RETURNING` whose subquery carries `FOR UPDATE SKIP
LOCKED`: PostgreSQL honours it, and on SQLite the writer lock already serialises claims.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, case, or_, select, update

from .. import errors
from ..models import Job, JobStatus
from ..records import (
    Heartbeat,
    JobRecord,
    OrphanReport,
)
from ._base import COLUMNS, StoreBase, chunks, get_job, utcnow

log = logging.getLogger(__name__)


class Leasing(StoreBase):
    """Claim, heartbeat, progress, finish, release, rescue orphans."""

    def claim_batch(
        self,
        owner: str,
        limit: int,
        *,
        lease_s: float,
        model: str | None = None,
        now: datetime | None = None,
    ) -> list[JobRecord]:
        """Atomically take up to `limit` queued jobs, highest priority first, then oldest,
        skipping jobs whose `not_before` is still ahead. One statement: no other claimer
        can take the same job."""
        if limit < 1:
            return []
        now = now or utcnow()
        candidates = (
            select(Job.seq)
            .where(Job.status == JobStatus.QUEUED)
            .where(or_(Job.not_before.is_(None), Job.not_before <= now))
            .order_by(Job.priority.desc(), Job.seq)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        if model is not None:
            candidates = candidates.where(Job.model == model)
        statement = (
            update(Job)
            .where(Job.seq.in_(candidates))
            .values(
                status=JobStatus.RUNNING,
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_s),
                started_at=now,
                attempts=Job.attempts + 1,
                progress_step=None,
                progress_total=None,
            )
            .returning(*COLUMNS)
        )
        rows = self.db.write(lambda conn: conn.execute(statement).all())
        # RETURNING gives no order guarantee; hand the jobs out in claim order.
        rows.sort(key=lambda r: (-r.priority, r.seq))
        return [JobRecord.from_row(r) for r in rows]

    def heartbeat(
        self, owner: str, job_ids: Iterable[str], *, lease_s: float, now: datetime | None = None
    ) -> Heartbeat:
        """Renew the leases this runner still holds; report which were asked to cancel."""
        ids = list(job_ids)
        now = now or utcnow()

        def work(conn: Connection) -> Heartbeat:
            owned: set[str] = set()
            cancel: set[str] = set()
            for chunk in chunks(ids):
                for row in conn.execute(
                    update(Job)
                    .where(Job.id.in_(chunk))
                    .where(Job.status == JobStatus.RUNNING, Job.lease_owner == owner)
                    .values(lease_expires_at=now + timedelta(seconds=lease_s))
                    .returning(Job.id, Job.cancel_requested)
                ):
                    owned.add(row.id)
                    if row.cancel_requested:
                        cancel.add(row.id)
            return Heartbeat(frozenset(owned), frozenset(cancel))

        return self.db.write(work) if ids else Heartbeat(frozenset(), frozenset())

    def set_progress(self, owner: str, job_ids: Iterable[str], step: int, total: int) -> int:
        """Record denoising progress for the jobs of one pipeline call."""
        ids = list(job_ids)

        def work(conn: Connection) -> int:
            return sum(
                conn.execute(
                    update(Job)
                    .where(Job.id.in_(chunk))
                    .where(Job.status == JobStatus.RUNNING, Job.lease_owner == owner)
                    .values(progress_step=step, progress_total=total)
                ).rowcount
                for chunk in chunks(ids)
            )

        return self.db.write(work) if ids else 0

    def _finish_owned(
        self, job_id: str, owner: str, values: dict[str, Any], action: str
    ) -> JobRecord:
        """Apply `values` to a running job this runner owns, or say precisely why not."""

        def work(conn: Connection) -> JobRecord:
            row = conn.execute(
                update(Job)
                .where(Job.id == job_id)
                .where(Job.status == JobStatus.RUNNING, Job.lease_owner == owner)
                .values(**values)
                .returning(*COLUMNS)
            ).first()
            if row is not None:
                return JobRecord.from_row(row)
            current = get_job(conn, job_id)
            if current.status.finished:
                raise errors.IllegalTransition(
                    f"cannot {action} job {job_id}: it already {current.status.value}"
                )
            raise errors.LeaseLost(
                f"cannot {action} job {job_id}: runner {owner} no longer holds its lease "
                f"(status {current.status.value})",
                job_id=job_id,
            )

        return self.db.write(work)

    def succeed(
        self, job_id: str, owner: str, result: dict[str, Any], *, now: datetime | None = None
    ) -> JobRecord:
        return self._finish_owned(
            job_id,
            owner,
            {
                "status": JobStatus.SUCCEEDED,
                "finished_at": now or utcnow(),
                "result": result,
                "lease_owner": None,
                "lease_expires_at": None,
                "error_code": None,
                "error_message": None,
            },
            "succeed",
        )

    def fail(
        self,
        job_id: str,
        owner: str,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        result: dict[str, Any] | None = None,
        now: datetime | None = None,
    ) -> JobRecord:
        """Fail a running job. A retryable failure puts it back in the queue while it has
        attempts left (the error stays recorded); otherwise it is `failed` for good."""
        now = now or utcnow()
        if retryable:
            again = Job.attempts < Job.max_attempts
            status: Any = case((again, JobStatus.QUEUED.value), else_=JobStatus.FAILED.value)
            finished_at: Any = case((again, None), else_=now)
        else:
            status, finished_at = JobStatus.FAILED, now
        return self._finish_owned(
            job_id,
            owner,
            {
                "status": status,
                "finished_at": finished_at,
                "result": result,
                "lease_owner": None,
                "lease_expires_at": None,
                "error_code": code,
                "error_message": message,
            },
            "fail",
        )

    def finish_cancelled(
        self, job_id: str, owner: str, *, now: datetime | None = None
    ) -> JobRecord:
        """The runner stopped a job whose cancel was requested."""
        return self._finish_owned(
            job_id,
            owner,
            {
                "status": JobStatus.CANCELLED,
                "finished_at": now or utcnow(),
                "lease_owner": None,
                "lease_expires_at": None,
            },
            "cancel",
        )

    def release(self, owner: str, job_ids: Iterable[str]) -> int:
        """Give jobs back unfinished (graceful shutdown): queued again, the attempt
        not counted. Jobs whose cancel was requested are cancelled instead."""
        ids = list(job_ids)
        now = utcnow()

        def work(conn: Connection) -> int:
            released = 0
            for chunk in chunks(ids):
                base = (
                    update(Job)
                    .where(Job.id.in_(chunk))
                    .where(Job.status == JobStatus.RUNNING, Job.lease_owner == owner)
                )
                conn.execute(
                    base.where(Job.cancel_requested.is_(True)).values(
                        status=JobStatus.CANCELLED,
                        finished_at=now,
                        lease_owner=None,
                        lease_expires_at=None,
                    )
                )
                released += conn.execute(
                    base.values(
                        status=JobStatus.QUEUED,
                        attempts=Job.attempts - 1,
                        lease_owner=None,
                        lease_expires_at=None,
                        progress_step=None,
                        progress_total=None,
                    )
                ).rowcount
            return released

        return self.db.write(work) if ids else 0

    def requeue_orphans(self, *, now: datetime | None = None) -> OrphanReport:
        """Rescue running jobs whose lease expired (their runner died): back to the
        queue, or `failed` with `attempts_exhausted` once they used all their attempts,
        or `cancelled` if a cancel was waiting for them."""
        now = now or utcnow()
        expired = (
            update(Job).where(Job.status == JobStatus.RUNNING).where(Job.lease_expires_at < now)
        )
        cleared = {"lease_owner": None, "lease_expires_at": None}

        def work(conn: Connection) -> OrphanReport:
            cancelled = (
                conn.execute(
                    expired.where(Job.cancel_requested.is_(True))
                    .values(status=JobStatus.CANCELLED, finished_at=now, **cleared)
                    .returning(Job.id)
                )
                .scalars()
                .all()
            )
            exhausted = (
                conn.execute(
                    expired.where(Job.attempts >= Job.max_attempts)
                    .values(
                        status=JobStatus.FAILED,
                        finished_at=now,
                        error_code=errors.AttemptsExhausted.code,
                        error_message=(
                            "the job's runner stopped before finishing it on each of its "
                            "attempts (max_attempts reached)"
                        ),
                        **cleared,
                    )
                    .returning(Job.id)
                )
                .scalars()
                .all()
            )
            requeued = (
                conn.execute(
                    expired.values(
                        status=JobStatus.QUEUED, progress_step=None, progress_total=None, **cleared
                    ).returning(Job.id)
                )
                .scalars()
                .all()
            )
            return OrphanReport(list(requeued), list(exhausted), list(cancelled))

        report = self.db.write(work)
        for name in ("requeued", "exhausted", "cancelled"):
            for job_id in getattr(report, name):
                log.warning("orphaned job %s %s", job_id, name, extra={"job_id": job_id})
        return report
