"""The runner's claim: queued jobs taken atomically, and with a head job the queued jobs
that can share its pipeline call.

Each claim is a single `UPDATE ... RETURNING` whose subquery carries `FOR UPDATE SKIP
LOCKED`: PostgreSQL honours it, and on SQLite the writer lock already serialises claims.
These statements run for every claim, so they are built once, with bound parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Subquery,
    Update,
    and_,
    bindparam,
    func,
    or_,
    select,
    text,
    union_all,
    update,
)

from ..records import JobRecord
from ..spec import JobSpec
from ..states import JobStatus
from ._base import COLUMNS, Repository, utcnow, when
from .fair import fair_head, note_served
from .tables import Job


def _due() -> ColumnElement[bool]:
    """Not held back by `not_before`."""
    return or_(Job.not_before.is_(None), Job.not_before <= when("now"))


def _ready() -> ColumnElement[bool]:
    """Queued and not held back by `not_before`."""
    return (Job.status == JobStatus.QUEUED) & _due()


_TAKE = {
    "status": JobStatus.RUNNING,
    "lease_owner": bindparam("runner"),
    "lease_expires_at": when("until"),
    "started_at": when("now"),
    "attempts": Job.attempts + 1,
    "claims": Job.claims + 1,
    "progress_step": None,
    "progress_total": None,
}


def _claim_statement(*, by_model: bool, one: bool) -> Update:
    candidates = (
        select(Job.seq)
        .where(_ready())
        .order_by(Job.priority.desc(), Job.seq)
        .limit(1 if one else bindparam("limit"))
        .with_for_update(skip_locked=True)
    )
    if by_model:
        candidates = candidates.where(Job.model == bindparam("only_model"))
    # One job: its seq compared, not a list of them built (SQLite makes the list a
    # temporary index: a third of what claiming one job cost).
    taken = Job.seq == candidates.scalar_subquery() if one else Job.seq.in_(candidates)
    return update(Job).where(taken).values(**_TAKE).returning(*COLUMNS)


# By whether the jobs must be of one model, and whether the claim is of one job.
_CLAIM = {
    (by_model, one): _claim_statement(by_model=by_model, one=one)
    for by_model in (False, True)
    for one in (False, True)
}

# The compatible claim: first the head job (the queue's next job, the fair share's, or
# the resident model's next one of the same priority), then it and the jobs that can
# share its pipeline call, in queue order, up to an image budget.
_HEAD = (
    select(Job.seq, Job.batch_key, Job.model, Job.priority, Job.created_at, Job.spec, Job.images)
    .where(_ready())
    .order_by(Job.priority.desc(), Job.seq)
    .limit(1)
)


def _preferred_head(*, default_too: bool) -> Any:
    models: ColumnElement[bool] = Job.model.in_(bindparam("models", expanding=True))
    if default_too:  # jobs that name no model run on the default, which is resident
        models = or_(models, Job.model.is_(None))
    return _HEAD.where(models, Job.priority == bindparam("priority"))


_PREFERRED_HEAD = {flag: _preferred_head(default_too=flag) for flag in (False, True)}


# SQLite, without statistics, reads a batch key's queued jobs by walking ix_jobs_claim
# through the whole queue in order (3 ms past 10,000 jobs of other keys) rather than
# seeking them in ix_jobs_compatible: it is told the index (a text statement, since
# SQLAlchemy renders no SQLite index hint); PostgreSQL's planner finds it itself.
_SQLITE_BATCH_MATES = """
SELECT seq, images, priority FROM jobs INDEXED BY ix_jobs_compatible
WHERE status = 'queued' AND (not_before IS NULL OR not_before <= :now)
AND batch_key = :key AND {mates}
ORDER BY priority DESC, seq LIMIT :limit
"""


def _candidates(dialect: str, *, head_apart: bool) -> Subquery:
    """The queued jobs of batch key `key`, in queue order, up to `limit`, that fit
    `budget` alone: with the head among them (it is a candidate whatever its size: a job
    bigger than a whole batch waits to be a head, and blocks no one behind it), or
    without it (`head_apart`)."""
    if dialect == "sqlite":
        mates = (
            "images <= :budget AND seq != :head"
            if head_apart
            else "(images <= :budget OR seq = :head)"
        )
        statement = text(_SQLITE_BATCH_MATES.format(mates=mates)).bindparams(when("now"))
        return statement.columns(
            seq=Job.seq.type, images=Job.images.type, priority=Job.priority.type
        ).subquery("candidates")
    fits: ColumnElement[bool] = or_(Job.images <= bindparam("budget"), Job.seq == bindparam("head"))
    if head_apart:
        fits = and_(Job.images <= bindparam("budget"), Job.seq != bindparam("head"))
    return (
        select(Job.seq, Job.images, Job.priority)
        # the literal status, which lets a planner match ix_jobs_compatible's WHERE
        .where(text("jobs.status = 'queued'"), _due(), Job.batch_key == bindparam("key"), fits)
        .order_by(Job.priority.desc(), Job.seq)
        .limit(bindparam("limit"))
        .with_for_update(skip_locked=True)
        .subquery("candidates")
    )


def _compatible_statement(dialect: str, *, head_apart: bool) -> Update:
    """Take the queued jobs of batch key `key`, in queue order, while their images fit
    `budget`. With the head among them (`head_apart` false), the head is taken even
    when it alone is over the budget; with it apart, the head (if still ready) and the
    mates after it that fit what the head leaves (`budget`)."""
    candidates = _candidates(dialect, head_apart=head_apart)
    running = select(
        candidates.c.seq,
        func.sum(candidates.c.images)
        .over(order_by=(candidates.c.priority.desc(), candidates.c.seq))
        .label("images_so_far"),
    ).subquery("running")
    fits: ColumnElement[bool] = running.c.images_so_far <= bindparam("budget")
    if not head_apart:
        fits = or_(fits, running.c.seq == bindparam("head"))
    chosen = select(running.c.seq).where(fits)
    if not head_apart:
        return update(Job).where(Job.seq.in_(chosen)).values(**_TAKE).returning(*COLUMNS)
    # The head too, if it is still ready (the mates are: they were just chosen so, and
    # testing them again would let SQLite walk the queue instead of seeking them).
    with_head = union_all(select(bindparam("head", type_=Job.seq.type)), chosen)
    ready_head = or_(Job.seq != bindparam("head"), _ready())
    taken = update(Job).where(Job.seq.in_(with_head), ready_head)
    return taken.values(**_TAKE).returning(*COLUMNS)


# By dialect ("": any but SQLite) and whether the head is taken apart from its mates.
_CLAIM_COMPATIBLE = {
    (dialect, apart): _compatible_statement(dialect, head_apart=apart)
    for dialect in ("sqlite", "")
    for apart in (False, True)
}
# A job without a batch key (queued before keys existed) runs alone.
_CLAIM_ONE = (
    update(Job).where(Job.seq == bindparam("head"), _ready()).values(**_TAKE).returning(*COLUMNS)
)


@dataclass(frozen=True)
class _Preference:
    """What the runner would rather run next: its resident model's jobs (`models`, and
    jobs naming no model when `default`), unless the head was queued before `cutoff`."""

    models: list[str]
    default: bool
    cutoff: datetime | None

    def head(self, conn: Connection, head: Row[Any], params: dict[str, Any]) -> Row[Any]:
        """`head`, or the resident model's first job of its priority in its place."""
        if not self.models and not self.default:
            return head
        resident = head.model in self.models or (self.default and head.model is None)
        patient = self.cutoff is None or head.created_at >= self.cutoff
        if resident or not patient:
            return head
        at = {**params, "models": self.models, "priority": head.priority}
        return conn.execute(_PREFERRED_HEAD[self.default], at).first() or head


def _take(
    conn: Connection, head: Row[Any], first_seq: int, budget: int, params: dict[str, Any]
) -> Sequence[Row[Any]]:
    """Take `head` and the queued jobs that share its batch key, up to `budget` images."""
    if head.batch_key is None:
        return conn.execute(_CLAIM_ONE, {**params, "head": head.seq}).all()
    dialect = "sqlite" if conn.dialect.name == "sqlite" else ""
    if head.seq != first_seq:
        # Chosen from behind its batch mates (fair share, a resident model): the head
        # first, then the mates that fit what is left.
        left = budget - head.images
        if left <= 0:
            return conn.execute(_CLAIM_ONE, {**params, "head": head.seq}).all()
        mates = {"key": head.batch_key, "head": head.seq, "budget": left, "limit": left}
        return conn.execute(_CLAIM_COMPATIBLE[dialect, True], {**params, **mates}).all()
    batch = {"key": head.batch_key, "head": head.seq, "budget": budget, "limit": max(budget, 1)}
    return conn.execute(_CLAIM_COMPATIBLE[dialect, False], {**params, **batch}).all()


def _in_claim_order(rows: Iterable[Row[Any]]) -> list[JobRecord]:
    # RETURNING gives no order guarantee; hand the jobs out in claim order.
    return [JobRecord.from_row(r) for r in sorted(rows, key=lambda r: (-r.priority, r.seq))]


class Claiming(Repository):
    """Take queued jobs for a runner: the next ones, or a head job and its batch mates."""

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
            "runner": owner,
            "limit": limit,
        }
        statement = _CLAIM[model is not None, limit == 1]
        if model is not None:
            params["only_model"] = model
        return _in_claim_order(self.db.write(lambda conn: conn.execute(statement, params).all()))

    def claim_compatible(
        self,
        owner: str,
        *,
        max_images: int,
        lease_s: float,
        prefer_models: Iterable[str] = (),
        prefer_default: bool = False,
        switch_for_jobs_queued_before: datetime | None = None,
        images_for: Callable[[JobSpec], int] | None = None,
        fair: bool = True,
        now: datetime | None = None,
    ) -> list[JobRecord]:
        """Atomically take the next job and the queued jobs that can share its pipeline
        call (equal batch keys), in queue order, up to `max_images` images, or fewer when
        `images_for(the next job's spec)` says fewer fit its model and size (a first job
        with more images than that is taken alone).

        The next job is the queue's head, or, when several owners (API keys) have jobs
        at the head's priority, the first job of the owner served least recently (fair
        share: one owner's thousand jobs delay another's one by at most a call); then,
        unless it is for a resident model, when jobs for a resident model
        (`prefer_models`, and jobs naming no model when `prefer_default`) wait at the
        same priority: then one of those, so the runner need not switch models, except
        when the head was queued before `switch_for_jobs_queued_before` (the runner's
        bound on how long another model's jobs may wait). None: never switch while
        the resident model has work at that priority. `fair` off: strict queue order
        (the benchmarks' baseline).
        """
        now = now or utcnow()
        preference = _Preference(list(prefer_models), prefer_default, switch_for_jobs_queued_before)
        params: dict[str, Any] = {
            "now": now,
            "until": now + timedelta(seconds=lease_s),
            "runner": owner,
        }

        def work(conn: Connection) -> Sequence[Row[Any]]:
            head = fair_head(conn, now) if fair else conn.execute(_HEAD, params).first()
            if head is None:
                return []
            first_seq: int = head.first_seq if fair else head.seq  # the queue's head
            head = preference.head(conn, head, params)
            budget = max_images
            if head.batch_key is not None and images_for is not None:
                budget = max(1, min(budget, images_for(JobSpec.from_dict(head.spec))))
            taken = _take(conn, head, first_seq, budget, params)
            note_served(conn, taken, now)
            return taken

        return _in_claim_order(self.db.write(work))
