"""Fair share between owners (API keys): which queued job heads the runner's next claim,
and when each owner was last served.

At the queue head's priority, the owner served least recently goes first (owners never
served before all, by name; "" stands for the admin's jobs, which have no owner), and
its first ready job is the head; so one owner's thousand jobs delay another's one by at
most a call. Finding it is one statement: the owners with queued jobs at that priority
by a skip scan of `ix_jobs_fair` (one index seek per owner, which neither SQLite nor
PostgreSQL does by itself), each one's first ready job by one more seek, their last
service from `served`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, TextualSelect, bindparam, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .tables import Job, Served, UTCDateTime

# Written with the literal status, so that SQLite uses the partial index ix_jobs_fair (it
# cannot match a partial index's WHERE to a bound parameter). SQLite, without statistics,
# would rather walk ix_jobs_claim for an owner's first job, as far as the queue is long
# before it (10 ms at 10,000 jobs), and for `owner IS NULL`: it is told the index;
# PostgreSQL's planner finds it. Never-served owners go by name in code point order,
# which PostgreSQL compares so only in the "C" collation.
_FAIR_HEAD = """
WITH RECURSIVE
queue_head AS (
    SELECT seq, priority FROM jobs {claim_hint}
    WHERE status = 'queued' AND (not_before IS NULL OR not_before <= :now)
    ORDER BY priority DESC, seq LIMIT 1
),
owners(owner) AS (
    SELECT min(owner) FROM jobs
    WHERE status = 'queued' AND priority = (SELECT priority FROM queue_head)
    UNION ALL
    SELECT (SELECT min(j.owner) FROM jobs AS j
            WHERE j.status = 'queued' AND j.priority = (SELECT priority FROM queue_head)
            AND j.owner > owners.owner)
    FROM owners WHERE owners.owner IS NOT NULL
),
firsts(owner, seq) AS (
    SELECT owners.owner,
           (SELECT j.seq FROM jobs AS j {fair_hint}
            WHERE j.status = 'queued' AND j.priority = (SELECT priority FROM queue_head)
            AND j.owner = owners.owner
            AND (j.not_before IS NULL OR j.not_before <= :now)
            ORDER BY j.seq LIMIT 1)
    FROM owners WHERE owners.owner IS NOT NULL
    UNION ALL
    SELECT '',
           (SELECT j.seq FROM jobs AS j {fair_hint}
            WHERE j.status = 'queued' AND j.priority = (SELECT priority FROM queue_head)
            AND j.owner IS NULL
            AND (j.not_before IS NULL OR j.not_before <= :now)
            ORDER BY j.seq LIMIT 1)
),
chosen AS (
    SELECT firsts.seq FROM firsts LEFT JOIN served ON served.owner = firsts.owner
    WHERE firsts.seq IS NOT NULL
    ORDER BY served.last_served_at IS NOT NULL, served.last_served_at,
             firsts.owner {by_code_point}
    LIMIT 1
)
SELECT jobs.seq, jobs.batch_key, jobs.model, jobs.priority, jobs.created_at, jobs.spec,
       jobs.images, (SELECT seq FROM queue_head) AS first_seq
FROM jobs WHERE jobs.seq = (SELECT seq FROM chosen)
"""


def _fair_head(dialect: str) -> TextualSelect:
    sqlite = dialect == "sqlite"
    statement = text(
        _FAIR_HEAD.format(
            claim_hint="INDEXED BY ix_jobs_claim" if sqlite else "",
            fair_hint="INDEXED BY ix_jobs_fair" if sqlite else "",
            by_code_point="" if sqlite else 'COLLATE "C"',
        )
    )
    return statement.bindparams(bindparam("now", type_=UTCDateTime())).columns(
        seq=Job.seq.type,
        batch_key=Job.batch_key.type,
        model=Job.model.type,
        priority=Job.priority.type,
        created_at=Job.created_at.type,
        spec=Job.spec.type,
        images=Job.images.type,
        first_seq=Job.seq.type,
    )


_FAIR_HEADS = {"sqlite": _fair_head("sqlite"), "": _fair_head("postgresql")}


def fair_head(conn: Connection, now: datetime) -> Row[Any] | None:
    """The job that heads the next claim under fair share (the columns of the claim's
    head, and `first_seq`: the queue head's, which it is when one owner has the queue
    head's priority to itself); None when no job is ready."""
    statement = _FAIR_HEADS.get(conn.dialect.name, _FAIR_HEADS[""])
    return conn.execute(statement, {"now": now}).first()


_UPSERT_SERVED: dict[str, Any] = {}  # by dialect: built once, then from the cache


def note_served(conn: Connection, rows: Sequence[Row[Any]], now: datetime) -> None:
    """The owners of the jobs just taken were served now (batched along counts too)."""
    owners = sorted({row.owner or "" for row in rows})
    if not owners:
        return
    dialect = conn.dialect.name
    if dialect not in _UPSERT_SERVED:
        insert = sqlite_insert if dialect == "sqlite" else postgresql_insert
        statement = insert(Served).values(
            owner=bindparam("who"), last_served_at=bindparam("at", type_=UTCDateTime())
        )
        _UPSERT_SERVED[dialect] = statement.on_conflict_do_update(
            index_elements=[Served.owner],
            set_={"last_served_at": statement.excluded.last_served_at},
        )
    conn.execute(_UPSERT_SERVED[dialect], [{"who": o, "at": now} for o in owners])
