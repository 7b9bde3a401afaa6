"""Reading the queue: one job, filtered pages, counts, statistics, waiting."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import Connection, func, select

from .. import errors
from ..records import (
    JobPage,
    JobRecord,
    Stats,
)
from ..states import FINISHED, JobStatus, Source
from ._base import COLUMNS, Repository, chunks, get_job, owner_scope, utcnow
from .changes import WAKE_AT_LEAST_S
from .tables import Job


class Queries(Repository):
    """Read jobs, pages, counts and statistics; wait for jobs to finish."""

    def get(self, job_id: str) -> JobRecord:
        return self.db.read(lambda conn: get_job(conn, job_id))

    def get_by_key(self, owner: str | None, key: str) -> JobRecord:
        """The job an owner queued under an idempotency key it chose (`id`): each
        owner's keys are its own, so another's job of the same key is not found."""
        query = select(*COLUMNS).where(owner_scope == (owner or ""), Job.idempotency_key == key)
        row = self.db.read(lambda conn: conn.execute(query).first())
        if row is None:
            raise errors.JobNotFound(f"no job {key}", job_id=key)
        return JobRecord.from_row(row)

    def get_many(self, job_ids: Iterable[str], *, missing_ok: bool = False) -> list[JobRecord]:
        """The jobs with these ids, in the order asked; a missing one is an error (or,
        with `missing_ok`, left out)."""
        ids = list(job_ids)

        def work(conn: Connection) -> list[JobRecord]:
            found = {
                row.id: JobRecord.from_row(row)
                for chunk in chunks(ids)
                for row in conn.execute(select(*COLUMNS).where(Job.id.in_(chunk)))
            }
            missing = [i for i in ids if i not in found]
            if missing and missing_ok:
                return [found[i] for i in ids if i in found]
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
        owner: str | None = None,
        since: datetime | None = None,
        before: str | None = None,
        limit: int = 50,
        oldest_first: bool = False,
    ) -> JobPage:
        """Jobs matching every given filter, newest first, `limit` at a time. `before` is
        the cursor: the `next_cursor` of the previous page. `owner`: only that owner's
        jobs (a user's list; None: everyone's)."""
        if not 1 <= limit <= 10_000:
            raise errors.InvalidParameters("limit must be between 1 and 10000", field="limit")
        query = select(*COLUMNS)
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
        if owner is not None:
            query = query.where(Job.owner == owner)
        if since is not None:
            query = query.where(Job.created_at >= since)

        def work(conn: Connection) -> JobPage:
            nonlocal query
            if before is not None:
                # Another owner's job is no cursor of this owner's: the same answer as
                # an id that does not exist, so that ids cannot be probed.
                cursor = select(Job.seq).where(Job.id == before)
                if owner is not None:
                    cursor = cursor.where(Job.owner == owner)
                anchor = conn.scalar(cursor)
                if anchor is None:
                    raise errors.JobNotFound(f"no job {before} (the page cursor)", job_id=before)
                query = query.where(Job.seq > anchor if oldest_first else Job.seq < anchor)
            order = Job.seq.asc() if oldest_first else Job.seq.desc()
            rows = conn.execute(query.order_by(order).limit(limit + 1)).all()
            jobs = [JobRecord.from_row(r) for r in rows[:limit]]
            return JobPage(jobs, jobs[-1].id if len(rows) > limit else None)

        return self.db.read(work)

    def counts(
        self, *, batch_id: str | None = None, owner: str | None = None
    ) -> dict[JobStatus, int]:
        """How many jobs are in each state (every state present, zeros included), of a
        batch or an owner if given."""
        query = select(Job.status, func.count()).group_by(Job.status)
        if batch_id is not None:
            query = query.where(Job.batch_id == batch_id)
        if owner is not None:
            query = query.where(Job.owner == owner)
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
                select(Job.status, Job.created_at, Job.started_at, Job.finished_at, Job.images)
                .where(Job.status.in_(FINISHED))
                .where(Job.finished_at >= now - timedelta(seconds=window_s))
            ).all()
        )
        finished = {status: 0 for status in JobStatus if status.finished}
        waits: list[float] = []
        runs: list[float] = []
        images = 0
        for status, created, started, ended, made in recent:
            finished[JobStatus(status)] += 1
            if status == JobStatus.SUCCEEDED and started is not None and ended is not None:
                waits.append((started - created).total_seconds())
                runs.append((ended - started).total_seconds())
                images += made

        def mean(values: list[float]) -> float | None:
            return round(sum(values) / len(values), 4) if values else None

        return Stats(
            window_s, counts, finished, images, mean(waits), mean(runs), tuple(waits), tuple(runs)
        )

    def images_timeline(
        self, *, window_s: float = 3600.0, bucket_s: float = 60.0, now: datetime | None = None
    ) -> list[int]:
        """Images made in each `bucket_s` of the last `window_s`, oldest bucket first
        (what the web UI's throughput chart draws)."""
        if window_s <= 0 or bucket_s <= 0 or window_s / bucket_s > 1440:
            raise errors.InvalidParameters(
                "the window must be positive and at most 1440 buckets", field="window"
            )
        now = now or utcnow()
        start = now - timedelta(seconds=window_s)
        rows = self.db.read(
            lambda conn: conn.execute(
                select(Job.finished_at, Job.images)
                .where(Job.status == JobStatus.SUCCEEDED)
                .where(Job.finished_at >= start, Job.finished_at < now)
            ).all()
        )
        buckets = [0] * round(window_s / bucket_s)
        for finished_at, images in rows:
            if finished_at is None:  # (the query's WHERE rules it out)
                continue
            index = int((finished_at - start).total_seconds() // bucket_s)
            buckets[min(max(index, 0), len(buckets) - 1)] += images or 0
        return buckets

    def batch_job_ids(self, batch_id: str) -> list[str]:
        """The ids of a batch's jobs, in the order they were submitted."""
        ids = self.db.read(
            lambda conn: list(
                conn.execute(
                    select(Job.id).where(Job.batch_id == batch_id).order_by(Job.seq)
                ).scalars()
            )
        )
        if not ids:
            raise errors.BatchNotFound(f"no batch {batch_id}", batch_id=batch_id)
        return ids

    def wait_for(
        self,
        job_ids: Sequence[str],
        *,
        timeout_s: float | None = None,
    ) -> list[JobRecord]:
        """Block until every job has finished; returns the final records in the order
        asked. Raises `JobTimeout` if `timeout_s` passes first. The process's watcher
        (`changes`) says when a job may have finished; only the jobs still unfinished
        are read again then."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        done: dict[str, JobRecord] = {}
        pending = list(dict.fromkeys(job_ids))
        with self.changes.watch(jobs=pending) as changes:
            while True:
                for job in self.get_many(pending):
                    if job.finished:
                        done[job.id] = job
                pending = [job_id for job_id in pending if job_id not in done]
                if not pending:
                    return [done[job_id] for job_id in job_ids]
                left = WAKE_AT_LEAST_S if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise errors.JobTimeout(
                        f"{len(pending)} of {len(done) + len(pending)} job(s) still unfinished "
                        f"after {timeout_s:g}s"
                    )
                changes.wait(min(left, WAKE_AT_LEAST_S))
