"""Totals that only grow, kept in the `counters` table: added to in the same transaction
that finishes jobs (so a crash never counts a job twice or not at all), never lowered by
purging or retrying. Prometheus reads them as counters and histograms."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql, sqlite

from ..records import JobRecord
from ..states import JobStatus
from ._base import StoreBase, chunks
from .tables import Counter, Job

# Histogram bounds, in seconds (the last, +Inf, is every job).
BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, float("inf"))


def bucket_name(histogram: str, bound: float) -> str:
    return f"{histogram}:le:{'+Inf' if bound == float('inf') else bound}"


# What the totals need of a finished job: (status, created_at, started_at, finished_at,
# images).
Facts = tuple[str, datetime, datetime | None, datetime | None, int | None]


def count_finished(conn: Connection, job_ids: Iterable[str]) -> None:
    """Add just-finished jobs, by id, to the totals (reading what they need)."""
    facts: list[Facts] = []
    for chunk in chunks(list(job_ids)):
        rows = conn.execute(
            select(Job.status, Job.created_at, Job.started_at, Job.finished_at, Job.images)
            .where(Job.id.in_(list(chunk)))
            .where(Job.status.in_([s for s in JobStatus if s.finished]))
        )
        facts += [
            (status, created, started, finished, n)
            for status, created, started, finished, n in rows
        ]
    _add(conn, _tally(facts))


def count_records(conn: Connection, jobs: Iterable[JobRecord]) -> None:
    """Add just-finished jobs to the totals from their records (no read)."""
    facts: list[Facts] = [
        (j.status, j.created_at, j.started_at, j.finished_at, j.spec.n)
        for j in jobs
        if j.status.finished
    ]
    _add(conn, _tally(facts))


def _tally(facts: Iterable[Facts]) -> dict[str, float]:
    """By state; a succeeded job's images, its wait (queued to started) and its run
    (started to finished), into histogram buckets."""
    tally: Tally[str] = Tally()
    sums: dict[str, float] = {}
    for status, created, started, finished, images in facts:
        tally[f"jobs_finished:{JobStatus(status).value}"] += 1
        if status != JobStatus.SUCCEEDED or started is None or finished is None:
            continue
        tally["images"] += images or 0
        for histogram, seconds in (
            ("job_wait_seconds", (started - created).total_seconds()),
            ("job_run_seconds", (finished - started).total_seconds()),
        ):
            tally[f"{histogram}:count"] += 1
            sums[f"{histogram}:sum"] = sums.get(f"{histogram}:sum", 0.0) + seconds
            for bound in BUCKETS:
                if seconds <= bound:
                    tally[bucket_name(histogram, bound)] += 1
    return {**{k: float(v) for k, v in tally.items()}, **sums}


def _add(conn: Connection, amounts: dict[str, float]) -> None:
    if not amounts:
        return
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    statement = insert(Counter).values([{"name": k, "value": v} for k, v in amounts.items()])
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[Counter.name],
            set_={"value": Counter.value + statement.excluded.value},
        )
    )


class Counters(StoreBase):
    def counters(self) -> dict[str, float]:
        """Every total, by name (`jobs_finished:<state>`, `images`, and for each of
        `job_wait_seconds` and `job_run_seconds` its `:count`, `:sum` and `:le:<bound>`)."""
        return self.db.read(
            lambda conn: {
                name: value for name, value in conn.execute(select(Counter.name, Counter.value))
            }
        )
