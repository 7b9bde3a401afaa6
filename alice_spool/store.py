"""The job store: the only place that queries the job table or changes a job's status.

Each operation is one short transaction (see `database.py` for how they are run) named
after the job's life, and returns frozen records (`records.py`), never live ORM objects.
The claim is a single `UPDATE ... RETURNING` whose subquery carries `FOR UPDATE SKIP
LOCKED`: PostgreSQL honours it, and on SQLite the writer lock already serialises claims.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection, case, delete, func, insert, or_, select, update

from . import errors
from .database import Database
from .models import FINISHED, Job, JobStatus, Source
from .records import (
    BatchCancelReport,
    BatchEnqueued,
    Enqueued,
    Heartbeat,
    JobPage,
    JobRecord,
    NewJob,
    OrphanReport,
    Stats,
)
from .spec import JobSpec, parse_priority

log = logging.getLogger(__name__)
T = TypeVar("T")

_COLUMNS = tuple(Job.__table__.columns)
_CHUNK = 500  # bound parameters per IN (...) list


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """A URL-safe, unguessable id: 120 random bits as 24 lowercase base32 characters."""
    return base64.b32encode(secrets.token_bytes(15)).decode().lower()


class Store:
    """Job-table operations, named after the job's life."""

    def __init__(self, db: Database, *, max_queue: int = 10_000, max_attempts: int = 3) -> None:
        self.db = db
        self.max_queue = max_queue
        self.max_attempts = max_attempts

    @classmethod
    def open(
        cls,
        url: str,
        *,
        max_queue: int = 10_000,
        max_attempts: int = 3,
        busy_timeout_s: float = 30.0,
        busy_deadline_s: float = 60.0,
    ) -> Store:
        db = Database.open(url, busy_timeout_s=busy_timeout_s, busy_deadline_s=busy_deadline_s)
        return cls(db, max_queue=max_queue, max_attempts=max_attempts)

    def close(self) -> None:
        self.db.close()

    # -- enqueue --------------------------------------------------------------------

    def _row(
        self,
        spec: JobSpec,
        *,
        source: Source,
        client: str | None,
        key: str | None,
        batch_id: str | None,
        max_attempts: int | None,
        not_before: datetime | None,
        now: datetime,
    ) -> dict[str, Any]:
        fingerprint = spec.fingerprint()  # before the random seed: a repeat must match
        spec = spec.with_seed()
        stored = spec.to_dict()
        stored.pop("priority")  # the column is the live value
        return {
            "id": new_id(),
            "idempotency_key": key,
            "request_hash": fingerprint,
            "batch_id": batch_id,
            "source": Source(source).value,
            "client": client,
            "status": JobStatus.QUEUED.value,
            "priority": spec.priority,
            "not_before": not_before,
            "created_at": now,
            "started_at": None,
            "finished_at": None,
            "attempts": 0,
            "max_attempts": max_attempts or self.max_attempts,
            "lease_owner": None,
            "lease_expires_at": None,
            "cancel_requested": False,
            "progress_step": None,
            "progress_total": None,
            "model": spec.model,
            "spec": stored,
            "result": None,
            "error_code": None,
            "error_message": None,
        }

    def _check_room(self, conn: Connection, adding: int) -> None:
        queued = conn.scalar(
            select(func.count()).select_from(Job).where(Job.status == JobStatus.QUEUED)
        )
        if (queued or 0) + adding > self.max_queue:
            raise errors.QueueFull(
                f"the queue is full ({queued} queued, limit {self.max_queue}); try again later"
            )

    def enqueue(
        self,
        spec: JobSpec,
        *,
        source: Source | str,
        client: str | None = None,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
        not_before: datetime | None = None,
        now: datetime | None = None,
    ) -> Enqueued:
        """Queue one job. With an idempotency key, a repeat of the same request returns
        the job made the first time; the same key with a different request is an error."""
        now = now or utcnow()
        row = self._row(
            spec,
            source=Source(source),
            client=client,
            key=idempotency_key,
            batch_id=None,
            max_attempts=max_attempts,
            not_before=not_before,
            now=now,
        )

        def work(conn: Connection) -> Enqueued:
            if idempotency_key is not None:
                existing = conn.execute(
                    select(*_COLUMNS).where(Job.idempotency_key == idempotency_key)
                ).first()
                if existing is not None:
                    if existing.request_hash != row["request_hash"]:
                        raise errors.IdempotencyConflict(
                            f"idempotency key {idempotency_key!r} was already used for a "
                            f"different request (job {existing.id})",
                            job_id=existing.id,
                        )
                    return Enqueued(JobRecord.from_row(existing), created=False)
            self._check_room(conn, 1)
            conn.execute(insert(Job), row)
            return Enqueued(JobRecord.from_mapping(row), created=True)

        return self.db.write_once_more_on_conflict(work)

    def enqueue_batch(
        self,
        items: Sequence[NewJob],
        *,
        source: Source | str,
        max_attempts: int | None = None,
        now: datetime | None = None,
    ) -> BatchEnqueued:
        """Queue several jobs under one new `batch_id`, all or nothing.

        If every item carries an idempotency key and all of them name the jobs of one
        earlier batch with identical requests, that batch is returned unchanged.
        """
        if not items:
            raise errors.InvalidParameters("a batch needs at least one request")
        keys = [item.idempotency_key for item in items if item.idempotency_key is not None]
        if len(set(keys)) != len(keys):
            duplicate = next(k for k in keys if keys.count(k) > 1)
            raise errors.InvalidParameters(
                f"the batch uses the id {duplicate!r} more than once", field="id"
            )
        now = now or utcnow()
        batch_id = new_id()
        rows = [
            self._row(
                item.spec,
                source=Source(source),
                client=item.client,
                key=item.idempotency_key,
                batch_id=batch_id,
                max_attempts=max_attempts,
                not_before=None,
                now=now,
            )
            for item in items
        ]

        def work(conn: Connection) -> BatchEnqueued:
            existing = {
                r.idempotency_key: r
                for chunk in _chunks(keys)
                for r in conn.execute(select(*_COLUMNS).where(Job.idempotency_key.in_(chunk)))
            }
            if existing:
                return self._repeated_batch(conn, rows, existing)
            self._check_room(conn, len(rows))
            conn.execute(insert(Job), rows)
            return BatchEnqueued(batch_id, [JobRecord.from_mapping(r) for r in rows], True)

        return self.db.write_once_more_on_conflict(work)

    def _repeated_batch(
        self, conn: Connection, rows: list[dict[str, Any]], existing: dict[str, Any]
    ) -> BatchEnqueued:
        first = next(iter(existing.values()))
        earlier = conn.execute(
            select(*_COLUMNS).where(Job.batch_id == first.batch_id).order_by(Job.seq)
        ).all()
        same = (
            first.batch_id is not None
            and len(earlier) == len(rows)
            and all(
                r["idempotency_key"] in existing
                and existing[r["idempotency_key"]].batch_id == first.batch_id
                and existing[r["idempotency_key"]].request_hash == r["request_hash"]
                for r in rows
            )
        )
        if not same:
            clash = next(r for r in rows if r["idempotency_key"] in existing)
            raise errors.IdempotencyConflict(
                f"id {clash['idempotency_key']!r} was already used by job "
                f"{existing[clash['idempotency_key']].id}, and this batch is not an exact "
                "repeat of that one",
                job_id=existing[clash["idempotency_key"]].id,
            )
        return BatchEnqueued(first.batch_id, [JobRecord.from_row(r) for r in earlier], False)

    # -- the runner's side ------------------------------------------------------------

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
            .returning(*_COLUMNS)
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
            for chunk in _chunks(ids):
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
                for chunk in _chunks(ids)
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
                .returning(*_COLUMNS)
            ).first()
            if row is not None:
                return JobRecord.from_row(row)
            current = self._get(conn, job_id)
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
            for chunk in _chunks(ids):
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

    # -- the user's side ----------------------------------------------------------------

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
                    .returning(*_COLUMNS)
                ).first()
                or conn.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
                    .values(cancel_requested=True)
                    .returning(*_COLUMNS)
                ).first()
            )
            if row is not None:
                return JobRecord.from_row(row)
            current = self._get(conn, job_id)
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
            self._check_room(conn, 1)
            row = conn.execute(
                update(Job)
                .where(Job.id == job_id)
                .where(Job.status.in_([JobStatus.FAILED, JobStatus.CANCELLED]))
                .values(**self._RESET)
                .returning(*_COLUMNS)
            ).first()
            if row is not None:
                return JobRecord.from_row(row)
            current = self._get(conn, job_id)
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
            self._check_room(conn, conn.scalar(failed) or 0)
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
                .returning(*_COLUMNS)
            ).first()
            if row is not None:
                return JobRecord.from_row(row)
            current = self._get(conn, job_id)
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

    # -- reading --------------------------------------------------------------------------

    @staticmethod
    def _get(conn: Connection, job_id: str) -> JobRecord:
        row = conn.execute(select(*_COLUMNS).where(Job.id == job_id)).first()
        if row is None:
            raise errors.JobNotFound(f"no job {job_id}", job_id=job_id)
        return JobRecord.from_row(row)

    def get(self, job_id: str) -> JobRecord:
        return self.db.read(lambda conn: self._get(conn, job_id))

    def get_many(self, job_ids: Iterable[str]) -> list[JobRecord]:
        """The jobs with these ids, in the order asked; a missing one is an error."""
        ids = list(job_ids)

        def work(conn: Connection) -> list[JobRecord]:
            found = {
                row.id: JobRecord.from_row(row)
                for chunk in _chunks(ids)
                for row in conn.execute(select(*_COLUMNS).where(Job.id.in_(chunk)))
            }
            missing = [i for i in ids if i not in found]
            if missing:
                raise errors.JobNotFound(f"no job {missing[0]}", job_id=missing[0])
            return [found[i] for i in ids]

        return self.db.read(work)

    def list_jobs(
        self,
        *,
        statuses: Iterable[JobStatus | str] | None = None,
        batch_id: str | None = None,
        model: str | None = None,
        source: Source | str | None = None,
        client: str | None = None,
        since: datetime | None = None,
        before: str | None = None,
        limit: int = 50,
        oldest_first: bool = False,
    ) -> JobPage:
        """Jobs matching every given filter, newest first, `limit` at a time. `before` is
        the cursor: the `next_cursor` of the previous page."""
        if not 1 <= limit <= 10_000:
            raise errors.InvalidParameters("limit must be between 1 and 10000", field="limit")
        query = select(*_COLUMNS)
        if statuses is not None:
            query = query.where(Job.status.in_([JobStatus(s).value for s in statuses]))
        if batch_id is not None:
            query = query.where(Job.batch_id == batch_id)
        if model is not None:
            query = query.where(Job.model == model)
        if source is not None:
            query = query.where(Job.source == Source(source).value)
        if client is not None:
            query = query.where(Job.client == client)
        if since is not None:
            query = query.where(Job.created_at >= since)

        def work(conn: Connection) -> JobPage:
            nonlocal query
            if before is not None:
                anchor = conn.scalar(select(Job.seq).where(Job.id == before))
                if anchor is None:
                    raise errors.JobNotFound(f"no job {before} (the page cursor)", job_id=before)
                query = query.where(Job.seq > anchor if oldest_first else Job.seq < anchor)
            order = Job.seq.asc() if oldest_first else Job.seq.desc()
            rows = conn.execute(query.order_by(order).limit(limit + 1)).all()
            jobs = [JobRecord.from_row(r) for r in rows[:limit]]
            return JobPage(jobs, jobs[-1].id if len(rows) > limit else None)

        return self.db.read(work)

    def counts(self, *, batch_id: str | None = None) -> dict[JobStatus, int]:
        """How many jobs are in each state (every state present, zeros included)."""
        query = select(Job.status, func.count()).group_by(Job.status)
        if batch_id is not None:
            query = query.where(Job.batch_id == batch_id)
        rows = self.db.read(lambda conn: conn.execute(query).all())
        counts = dict.fromkeys(JobStatus, 0)
        counts.update({JobStatus(status): n for status, n in rows})
        return counts

    def batch_counts(self, batch_id: str) -> dict[JobStatus, int]:
        counts = self.counts(batch_id=batch_id)
        if not any(counts.values()):
            raise errors.BatchNotFound(f"no batch {batch_id}", batch_id=batch_id)
        return counts

    def stats(self, *, window_s: float = 3600.0, now: datetime | None = None) -> Stats:
        """Queue depth now, and throughput and mean wait/run times over the last window."""
        if window_s <= 0:
            raise errors.InvalidParameters("the window must be positive", field="window")
        now = now or utcnow()
        counts = self.counts()
        recent = self.db.read(
            lambda conn: conn.execute(
                select(Job.status, Job.created_at, Job.started_at, Job.finished_at, Job.spec)
                .where(Job.status.in_(FINISHED))
                .where(Job.finished_at >= now - timedelta(seconds=window_s))
            ).all()
        )
        finished = dict.fromkeys(FINISHED, 0)
        waits: list[float] = []
        runs: list[float] = []
        images = 0
        for status, created, started, ended, spec in recent:
            finished[JobStatus(status)] += 1
            if status == JobStatus.SUCCEEDED and started is not None:
                waits.append((started - created).total_seconds())
                runs.append((ended - started).total_seconds())
                images += int(spec.get("n", 1))

        def mean(values: list[float]) -> float | None:
            return round(sum(values) / len(values), 4) if values else None

        return Stats(window_s, counts, finished, images, mean(waits), mean(runs))

    def wait_for(
        self,
        job_ids: Sequence[str],
        *,
        timeout_s: float | None = None,
        poll_s: float = 0.25,
        on_change: Callable[[list[JobRecord]], None] | None = None,
    ) -> list[JobRecord]:
        """Block until every job has finished; returns the final records. Raises
        `JobTimeout` if `timeout_s` passes first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay = min(0.05, poll_s)
        last: list[JobStatus] | None = None
        while True:
            jobs = self.get_many(job_ids)
            states = [j.status for j in jobs]
            if on_change is not None and states != last:
                on_change(jobs)
            last = states
            if all(j.finished for j in jobs):
                return jobs
            if deadline is not None and time.monotonic() >= deadline:
                pending = sum(not j.finished for j in jobs)
                raise errors.JobTimeout(
                    f"{pending} of {len(jobs)} job(s) still unfinished after {timeout_s:g}s"
                )
            time.sleep(
                delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
            )
            delay = min(delay * 1.5, poll_s)


def _chunks(values: Sequence[T]) -> Iterable[Sequence[T]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]
