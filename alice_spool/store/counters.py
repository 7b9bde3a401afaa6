"""Totals that only grow, kept in the `counters` table: added to in the same transaction
that finishes jobs (so a crash never counts a job twice or not at all), never lowered by
purging or retrying. Prometheus reads them as counters and histograms."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from datetime import datetime
from itertools import chain

from sqlalchemy import Connection, select

from ..records import JobRecord
from ..states import JobStatus
from ._base import Repository, chunks
from .tables import Counter, Job

# Histogram bounds, in seconds (the last, +Inf, is every job).
BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, float("inf"))


def bucket_name(histogram: str, bound: float) -> str:
    """A cumulative bucket, as `counters()` gives it: jobs at or under `bound`."""
    return f"{histogram}:le:{_bound(bound)}"


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else str(bound)


def _slot_name(histogram: str, bound: float) -> str:
    """A stored bucket: jobs over the bound before `bound` and at or under it. A job adds
    one to one slot (a cumulative bucket would take a row for every bound above it);
    `counters()` sums the slots into the cumulative buckets Prometheus reads."""
    return f"{histogram}:in:{_bound(bound)}"


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


# Each histogram's names (`:count`, `:sum`, then its slots in ascending order), made
# once: this runs for every finished job.
_HISTOGRAMS = {
    h: (f"{h}:count", f"{h}:sum", tuple(_slot_name(h, bound) for bound in BUCKETS))
    for h in ("job_wait_seconds", "job_run_seconds")
}


def _tally(facts: Iterable[Facts]) -> dict[str, float]:
    """By state; a succeeded job's images, its wait (queued to started) and its run
    (started to finished), into histogram buckets."""
    tally: dict[str, float] = {}
    for status, created, started, finished, images in facts:
        name = f"jobs_finished:{JobStatus(status).value}"
        tally[name] = tally.get(name, 0.0) + 1
        if status != JobStatus.SUCCEEDED or started is None or finished is None:
            continue
        tally["images"] = tally.get("images", 0.0) + (images or 0)
        for histogram, seconds in (
            ("job_wait_seconds", (started - created).total_seconds()),
            ("job_run_seconds", (finished - started).total_seconds()),
        ):
            count, total, slots = _HISTOGRAMS[histogram]
            tally[count] = tally.get(count, 0.0) + 1
            tally[total] = tally.get(total, 0.0) + seconds
            slot = slots[bisect_left(BUCKETS, seconds)]  # the first bound it is under
            tally[slot] = tally.get(slot, 0.0) + 1
    return tally


def _upsert(rows: int, paramstyle: str) -> str:
    """The upsert of `rows` totals, with positional parameters (name, value, name, ...),
    in the SQL that SQLite and PostgreSQL share."""
    pair = "(?, ?)" if paramstyle == "qmark" else "(%s, %s)"
    return (
        f"INSERT INTO counters (name, value) VALUES {', '.join([pair] * rows)} "
        "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value"
    )


# Built once for each number of totals and driver. This runs in every transaction that
# finishes a job, with 8 totals for a succeeded one: a statement that SQLAlchemy
# builds is compiled afresh each time (it does not cache a multi-row INSERT), and even a
# cached one spent more on its 60 parameters than the database spent on the rows; the
# driver takes them as they are.
_UPSERTS: dict[tuple[int, str], str] = {}


def _add(conn: Connection, amounts: dict[str, float]) -> None:
    if not amounts:
        return
    key = (len(amounts), conn.dialect.paramstyle)
    statement = _UPSERTS.get(key)
    if statement is None:
        statement = _UPSERTS[key] = _upsert(*key)
    # By name: concurrent writers (PostgreSQL) lock the rows in one order, never crosswise.
    conn.exec_driver_sql(statement, tuple(chain.from_iterable(sorted(amounts.items()))))


class Counters(Repository):
    def counters(self) -> dict[str, float]:
        """Every total, by name (`jobs_finished:<state>`, `images`, and for each of
        `job_wait_seconds` and `job_run_seconds` its `:count`, `:sum` and `:le:<bound>`:
        cumulative, summed from the stored slots, plus the cumulative rows written before
        the slots were)."""
        stored = self.db.read(
            lambda conn: {
                name: value for name, value in conn.execute(select(Counter.name, Counter.value))
            }
        )
        totals = {name: value for name, value in stored.items() if ":in:" not in name}
        for histogram, (_count, _sum, slots) in _HISTOGRAMS.items():
            if not any(slot in stored for slot in slots):
                continue
            below = 0.0
            for bound, slot in zip(BUCKETS, slots, strict=True):
                below += stored.get(slot, 0.0)
                name = bucket_name(histogram, bound)
                totals[name] = totals.get(name, 0.0) + below
        return totals
