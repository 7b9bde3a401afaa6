"""The runner's side once it holds jobs: leases and heartbeats, progress, finishing
jobs, giving them back, and rescuing the jobs of runners that died. (Taking them is
`claims.py`.)

These statements run for every job, so they are built once, with bound parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Update, bindparam, case, or_, update

from .. import errors
from ..records import Heartbeat, JobRecord, OrphanReport
from ..states import JobStatus
from ._base import COLUMNS, Repository, chunks, get_job, utcnow, when
from .counters import count_finished, count_records
from .gallery import add_images
from .tables import Job

log = logging.getLogger(__name__)

# The jobs (of a list) that this runner holds.
_HELD = (
    update(Job)
    .where(Job.id.in_(bindparam("ids", expanding=True)))
    .where(Job.status == JobStatus.RUNNING, Job.lease_owner == bindparam("runner"))
)
_HEARTBEAT = _HELD.values(lease_expires_at=when("until")).returning(Job.id, Job.cancel_requested)
_PROGRESS = _HELD.values(
    progress_step=bindparam("step"), progress_total=bindparam("total")
).returning(Job.id, Job.cancel_requested)
_LEASE_CLEARED = {"lease_owner": None, "lease_expires_at": None}
_RELEASE_CANCELLED = (
    _HELD.where(Job.cancel_requested.is_(True))
    .values(status=JobStatus.CANCELLED, finished_at=when("now"), **_LEASE_CLEARED)
    .returning(Job.id)
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
    Job.lease_owner == bindparam("runner"),
)
_AGAIN = Job.attempts < Job.max_attempts
_FINISH = {
    "succeed": _OWNED.values(
        status=JobStatus.SUCCEEDED,
        finished_at=when("now"),
        progress_step=Job.progress_total,
        result=bindparam("outcome"),
        error_code=None,
        error_message=None,
        **_LEASE_CLEARED,
    ),
    "fail": _OWNED.values(
        status=JobStatus.FAILED,
        finished_at=when("now"),
        result=bindparam("outcome"),
        error_code=bindparam("code"),
        error_message=bindparam("message"),
        **_LEASE_CLEARED,
    ),
    # A retryable failure goes back to the queue while the job has attempts left.
    "fail_retryable": _OWNED.values(
        status=case((_AGAIN, JobStatus.QUEUED.value), else_=JobStatus.FAILED.value),
        finished_at=case((_AGAIN, None), else_=when("now")),
        not_before=case((_AGAIN, when("retry_at")), else_=Job.not_before),
        progress_step=None,
        progress_total=None,
        result=bindparam("outcome"),
        error_code=bindparam("code"),
        error_message=bindparam("message"),
        **_LEASE_CLEARED,
    ),
    "cancel": _OWNED.values(status=JobStatus.CANCELLED, finished_at=when("now"), **_LEASE_CLEARED),
}
_FINISH = {action: statement.returning(*COLUMNS) for action, statement in _FINISH.items()}


_EXHAUSTED = (
    "the job's runner stopped before finishing it on each of its attempts (max_attempts reached)"
)


def _orphaned(held_by: str | None, now: datetime) -> Update:
    """An update of the running jobs whose lease expired by `now`, and of those held
    under a name that starts with `held_by`, whatever their leases say."""
    orphaned = Job.lease_expires_at < now
    if held_by is not None:
        orphaned = or_(orphaned, Job.lease_owner.startswith(held_by, autoescape=True))
    return update(Job).where(Job.status == JobStatus.RUNNING).where(orphaned)


def _rescue(conn: Connection, expired: Update, now: datetime) -> OrphanReport:
    """Cancel the orphans whose cancel was waiting, fail those that used all their
    attempts, queue the others again; the finished ones counted."""

    def ids(statement: Update) -> list[str]:
        return list(conn.execute(statement.returning(Job.id)).scalars().all())

    cancelled = ids(
        expired.where(Job.cancel_requested.is_(True)).values(
            status=JobStatus.CANCELLED, finished_at=now, **_LEASE_CLEARED
        )
    )
    exhausted = ids(
        expired.where(Job.attempts >= Job.max_attempts).values(
            status=JobStatus.FAILED,
            finished_at=now,
            error_code=errors.AttemptsExhausted.code,
            error_message=_EXHAUSTED,
            **_LEASE_CLEARED,
        )
    )
    count_finished(conn, [*cancelled, *exhausted])
    requeued = ids(
        expired.values(
            status=JobStatus.QUEUED, progress_step=None, progress_total=None, **_LEASE_CLEARED
        )
    )
    return OrphanReport(requeued, exhausted, cancelled)


class Leasing(Repository):
    """Heartbeat, progress, finish, release, rescue orphans."""

    def heartbeat(
        self, owner: str, job_ids: Iterable[str], *, lease_s: float, now: datetime | None = None
    ) -> Heartbeat:
        """Renew the leases this runner still holds; report which were asked to cancel."""
        ids = list(job_ids)
        if not ids:  # an idle runner: nothing to renew, no statement
            return Heartbeat(frozenset(), frozenset())
        now = now or utcnow()

        until = now + timedelta(seconds=lease_s)

        def work(conn: Connection) -> Heartbeat:
            rows = [
                row
                for chunk in chunks(ids)
                for row in conn.execute(
                    _HEARTBEAT, {"ids": list(chunk), "runner": owner, "until": until}
                )
            ]
            return Heartbeat(
                frozenset(row.id for row in rows),
                frozenset(row.id for row in rows if row.cancel_requested),
            )

        return self.db.write(work) if ids else Heartbeat(frozenset(), frozenset())

    def set_progress(self, owner: str, job_ids: Iterable[str], step: int, total: int) -> Heartbeat:
        """Record denoising progress for the jobs of one pipeline call; report which
        of them this runner still holds and which were asked to cancel."""
        ids = list(job_ids)

        def work(conn: Connection) -> Heartbeat:
            params = {"runner": owner, "step": step, "total": total}
            rows = [
                row
                for chunk in chunks(ids)
                for row in conn.execute(_PROGRESS, {**params, "ids": list(chunk)})
            ]
            return Heartbeat(
                frozenset(row.id for row in rows),
                frozenset(row.id for row in rows if row.cancel_requested),
            )

        return self.db.write(work) if ids else Heartbeat(frozenset(), frozenset())

    def _finish_owned(
        self, action: str, job_id: str, owner: str, now: datetime | None, **params: Any
    ) -> JobRecord:
        """Finish a running job this runner holds, or say precisely why it cannot."""
        params.update(job_id=job_id, runner=owner, now=now or utcnow())
        verb = {"fail_retryable": "fail"}.get(action, action)

        def work(conn: Connection) -> JobRecord:
            row = conn.execute(_FINISH[action], params).first()
            if row is not None:
                record = JobRecord.from_row(row)
                count_records(conn, [record])  # (a retryable failure may be queued again)
                if record.status is JobStatus.SUCCEEDED:  # the gallery, in the same commit
                    add_images(conn, record, params["now"], row.seq)
                return record
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
        retry_after_s: float = 0.0,
        result: dict[str, Any] | None = None,
        now: datetime | None = None,
    ) -> JobRecord:
        """Fail a running job. A retryable failure puts it back in the queue while it has
        attempts left, not to be claimed for `retry_after_s` (the error stays recorded);
        otherwise it is `failed` for good."""
        now = now or utcnow()
        if not retryable:
            return self._finish_owned(
                "fail", job_id, owner, now, outcome=result, code=code, message=message
            )
        return self._finish_owned(
            "fail_retryable",
            job_id,
            owner,
            now,
            outcome=result,
            code=code,
            message=message,
            retry_at=now + timedelta(seconds=retry_after_s),
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
                params = {"ids": list(chunk), "runner": owner, "now": now}
                count_finished(conn, conn.execute(_RELEASE_CANCELLED, params).scalars().all())
                released += conn.execute(_RELEASE, params).rowcount
            return released

        return self.db.write(work) if ids else 0

    def requeue_orphans(
        self, *, held_by: str | None = None, now: datetime | None = None
    ) -> OrphanReport:
        """Rescue running jobs whose lease expired (their runner died): back to the
        queue, or `failed` with `attempts_exhausted` once they used all their attempts,
        or `cancelled` if a cancel was waiting for them.

        `held_by`: an owner prefix whose jobs are orphans whatever their leases say (a
        runner starting under a name that no other live runner holds passes its own
        name, so that its dead predecessor's jobs rerun at once)."""
        now = now or utcnow()
        expired = _orphaned(held_by, now)
        report = self.db.write(lambda conn: _rescue(conn, expired, now))
        for name in ("requeued", "exhausted", "cancelled"):
            for job_id in getattr(report, name):
                log.warning("orphaned job %s %s", job_id, name, extra={"job_id": job_id})
        return report
