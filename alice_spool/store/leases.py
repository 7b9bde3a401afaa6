"""The runner's side: the atomic claim, leases and heartbeats, finishing jobs, and
rescuing the jobs of runners that died.

The claim is a single `UPDATE ... RETURNING` whose subquery carries `FOR UPDATE SKIP
LOCKED`: PostgreSQL honours it, and on SQLite the writer lock already serialises claims.
These statements run for every job, so they are built once, with bound parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Update, bindparam, case, or_, select, update

from .. import errors
from ..models import Job, JobStatus, UTCDateTime
from ..records import Heartbeat, JobRecord, OrphanReport
from ._base import COLUMNS, StoreBase, chunks, get_job, utcnow

log = logging.getLogger(__name__)


def _when(name: str) -> Any:
    return bindparam(name, type_=UTCDateTime())


def _claim_statement(*, by_model: bool) -> Update:
    candidates = (
        select(Job.seq)
        .where(Job.status == JobStatus.QUEUED)
        .where(or_(Job.not_before.is_(None), Job.not_before <= _when("now")))
        .order_by(Job.priority.desc(), Job.seq)
        .limit(bindparam("limit"))
        .with_for_update(skip_locked=True)
    )
    if by_model:
        candidates = candidates.where(Job.model == bindparam("only_model"))
    return (
        update(Job)
        .where(Job.seq.in_(candidates))
        .values(
            status=JobStatus.RUNNING,
            lease_owner=bindparam("owner"),
            lease_expires_at=_when("until"),
            started_at=_when("now"),
            attempts=Job.attempts + 1,
            progress_step=None,
            progress_total=None,
        )
        .returning(*COLUMNS)
    )


_CLAIM = _claim_statement(by_model=False)
_CLAIM_MODEL = _claim_statement(by_model=True)

# The jobs (of a list) that this runner holds.
_HELD = (
    update(Job)
    .where(Job.id.in_(bindparam("ids", expanding=True)))
    .where(Job.status == JobStatus.RUNNING, Job.lease_owner == bindparam("owner"))
)
_HEARTBEAT = _HELD.values(lease_expires_at=_when("until")).returning(Job.id, Job.cancel_requested)
_PROGRESS = _HELD.values(progress_step=bindparam("step"), progress_total=bindparam("total"))
_LEASE_CLEARED = {"lease_owner": None, "lease_expires_at": None}
_RELEASE_CANCELLED = _HELD.where(Job.cancel_requested.is_(True)).values(
    status=JobStatus.CANCELLED, finished_at=_when("now"), **_LEASE_CLEARED
)
_RELEASE = _HELD.values(
    status=JobStatus.QUEUED,
    attempts=Job.attempts - 1,
    progress_step=None,
    progress_total=None,
    **_LEASE_CLEARED,
)

# One running job that this runner holds, finished one way or another.
_OWNED = update(Job).where(
    Job.id == bindparam("job_id"),
    Job.status == JobStatus.RUNNING,
    Job.lease_owner == bindparam("owner"),
)
_AGAIN = Job.attempts < Job.max_attempts
_FINISH = {
    "succeed": _OWNED.values(
        status=JobStatus.SUCCEEDED,
        finished_at=_when("now"),
        result=bindparam("outcome"),
        error_code=None,
        error_message=None,
        **_LEASE_CLEARED,
    ),
    "fail": _OWNED.values(
        status=JobStatus.FAILED,
        finished_at=_when("now"),
        result=bindparam("outcome"),
        error_code=bindparam("code"),
        error_message=bindparam("message"),
        **_LEASE_CLEARED,
    ),
    # A retryable failure goes back to the queue while the job has attempts left.
    "fail_retryable": _OWNED.values(
        status=case((_AGAIN, JobStatus.QUEUED.value), else_=JobStatus.FAILED.value),
        finished_at=case((_AGAIN, None), else_=_when("now")),
        result=bindparam("outcome"),
        error_code=bindparam("code"),
        error_message=bindparam("message"),
        **_LEASE_CLEARED,
    ),
    "cancel": _OWNED.values(status=JobStatus.CANCELLED, finished_at=_when("now"), **_LEASE_CLEARED),
}
_FINISH = {action: statement.returning(*COLUMNS) for action, statement in _FINISH.items()}


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
        params: dict[str, Any] = {
            "now": now,
            "until": now + timedelta(seconds=lease_s),
            "owner": owner,
            "limit": limit,
        }
        statement = _CLAIM if model is None else _CLAIM_MODEL
        if model is not None:
            params["only_model"] = model
        rows = self.db.write(lambda conn: conn.execute(statement, params).all())
        # RETURNING gives no order guarantee; hand the jobs out in claim order.
        rows.sort(key=lambda r: (-r.priority, r.seq))
        return [JobRecord.from_row(r) for r in rows]

    def heartbeat(
        self, owner: str, job_ids: Iterable[str], *, lease_s: float, now: datetime | None = None
    ) -> Heartbeat:
        """Renew the leases this runner still holds; report which were asked to cancel."""
        ids = list(job_ids)
        now = now or utcnow()

        until = now + timedelta(seconds=lease_s)

        def work(conn: Connection) -> Heartbeat:
            rows = [
                row
                for chunk in chunks(ids)
                for row in conn.execute(
                    _HEARTBEAT, {"ids": list(chunk), "owner": owner, "until": until}
                )
            ]
            return Heartbeat(
                frozenset(row.id for row in rows),
                frozenset(row.id for row in rows if row.cancel_requested),
            )

        return self.db.write(work) if ids else Heartbeat(frozenset(), frozenset())

    def set_progress(self, owner: str, job_ids: Iterable[str], step: int, total: int) -> int:
        """Record denoising progress for the jobs of one pipeline call."""
        ids = list(job_ids)

        def work(conn: Connection) -> int:
            params = {"owner": owner, "step": step, "total": total}
            return sum(
                conn.execute(_PROGRESS, {**params, "ids": list(chunk)}).rowcount
                for chunk in chunks(ids)
            )

        return self.db.write(work) if ids else 0

    def _finish_owned(
        self, action: str, job_id: str, owner: str, now: datetime | None, **params: Any
    ) -> JobRecord:
        """Finish a running job this runner holds, or say precisely why it cannot."""
        params.update(job_id=job_id, owner=owner, now=now or utcnow())
        verb = {"fail_retryable": "fail"}.get(action, action)

        def work(conn: Connection) -> JobRecord:
            row = conn.execute(_FINISH[action], params).first()
            if row is not None:
                return JobRecord.from_row(row)
            current = get_job(conn, job_id)
            if current.status.finished:
                raise errors.IllegalTransition(
                    f"cannot {verb} job {job_id}: it already {current.status.value}"
                )
            raise errors.LeaseLost(
                f"cannot {verb} job {job_id}: runner {owner} no longer holds its lease "
                f"(status {current.status.value})",
                job_id=job_id,
            )

        return self.db.write(work)

    def succeed(
        self, job_id: str, owner: str, result: dict[str, Any], *, now: datetime | None = None
    ) -> JobRecord:
        return self._finish_owned("succeed", job_id, owner, now, outcome=result)

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
        action = "fail_retryable" if retryable else "fail"
        return self._finish_owned(
            action, job_id, owner, now, outcome=result, code=code, message=message
        )

    def finish_cancelled(
        self, job_id: str, owner: str, *, now: datetime | None = None
    ) -> JobRecord:
        """The runner stopped a job whose cancel was requested."""
        return self._finish_owned("cancel", job_id, owner, now)

    def release(self, owner: str, job_ids: Iterable[str]) -> int:
        """Give jobs back unfinished (graceful shutdown): queued again, the attempt
        not counted. Jobs whose cancel was requested are cancelled instead."""
        ids = list(job_ids)
        now = utcnow()

        def work(conn: Connection) -> int:
            released = 0
            for chunk in chunks(ids):
                params = {"ids": list(chunk), "owner": owner, "now": now}
                conn.execute(_RELEASE_CANCELLED, params)
                released += conn.execute(_RELEASE, params).rowcount
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

        def work(conn: Connection) -> OrphanReport:
            cancelled = (
                conn.execute(
                    expired.where(Job.cancel_requested.is_(True))
                    .values(status=JobStatus.CANCELLED, finished_at=now, **_LEASE_CLEARED)
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
                        **_LEASE_CLEARED,
                    )
                    .returning(Job.id)
                )
                .scalars()
                .all()
            )
            requeued = (
                conn.execute(
                    expired.values(
                        status=JobStatus.QUEUED,
                        progress_step=None,
                        progress_total=None,
                        **_LEASE_CLEARED,
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
