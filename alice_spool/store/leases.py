"""The runner's side: the atomic claim, leases and heartbeats, finishing jobs, and
rescuing the jobs of runners that died.

The claim is a single `UPDATE ... RETURNING` whose subquery carries `FOR UPDATE SKIP
LOCKED`: PostgreSQL honours it, and on SQLite the writer lock already serialises claims.
These statements run for every job, so they are built once, with bound parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Update,
    bindparam,
    case,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .. import errors
from ..records import Heartbeat, JobRecord, OrphanReport
from ..spec import JobSpec
from ..states import JobStatus
from ._base import COLUMNS, StoreBase, chunks, get_job, utcnow
from .counters import count_finished, count_records
from .gallery import add_images
from .tables import Job, Served, UTCDateTime

log = logging.getLogger(__name__)


def _when(name: str) -> Any:
    return bindparam(name, type_=UTCDateTime())


def _ready() -> ColumnElement[bool]:
    """Queued and not held back by `not_before`."""
    return (Job.status == JobStatus.QUEUED) & or_(
        Job.not_before.is_(None), Job.not_before <= _when("now")
    )


_TAKE = {
    "status": JobStatus.RUNNING,
    "lease_owner": bindparam("runner"),
    "lease_expires_at": _when("until"),
    "started_at": _when("now"),
    "attempts": Job.attempts + 1,
    "claims": Job.claims + 1,
    "progress_step": None,
    "progress_total": None,
}


def _claim_statement(*, by_model: bool) -> Update:
    candidates = (
        select(Job.seq)
        .where(_ready())
        .order_by(Job.priority.desc(), Job.seq)
        .limit(bindparam("limit"))
        .with_for_update(skip_locked=True)
    )
    if by_model:
        candidates = candidates.where(Job.model == bindparam("only_model"))
    return update(Job).where(Job.seq.in_(candidates)).values(**_TAKE).returning(*COLUMNS)


_CLAIM = _claim_statement(by_model=False)
_CLAIM_MODEL = _claim_statement(by_model=True)

# The compatible claim: first the head job (the queue's next job, or the resident
# model's next one of the same priority), then it and the jobs that can share its
# pipeline call, in queue order, up to an image budget.
_HEAD = (
    select(Job.seq, Job.batch_key, Job.model, Job.priority, Job.created_at, Job.spec, Job.images)
    .where(_ready())
    .order_by(Job.priority.desc(), Job.seq)
    .limit(1)
)


# Fair share: the owners with ready jobs at the head's priority, each with its first
# job; the owner served least recently goes first (one never served, before all).
# The owners with queued jobs at a priority, one index seek each (a skip scan of
# ix_jobs_fair, which SQLite and PostgreSQL do not do by themselves): cheap however
# many jobs each owner has queued.
_OWNERS_AT = text(
    """
    WITH RECURSIVE owners(owner) AS (
        SELECT min(owner) FROM jobs WHERE status = 'queued' AND priority = :priority
        UNION ALL
        SELECT (SELECT min(j.owner) FROM jobs AS j
                WHERE j.status = 'queued' AND j.priority = :priority
                AND j.owner > owners.owner)
        FROM owners WHERE owners.owner IS NOT NULL
    )
    SELECT owner FROM owners WHERE owner IS NOT NULL
    """
)
# Written with the literal status, so that SQLite uses the partial index ix_jobs_fair
# (it cannot match a partial index's WHERE to a bound parameter).
_QUEUED_LITERAL = text("jobs.status = 'queued'")
_DUE = or_(Job.not_before.is_(None), Job.not_before <= _when("now"))
# Jobs of no key (the inbox's, the CLI's, an open server's) are one owner's. SQLite,
# without statistics, would walk ix_jobs_claim for an IS NULL (3 ms at 10,000 queued
# jobs) instead of seeking in ix_jobs_fair: it is told; PostgreSQL's planner finds it.
_KEYLESS = (
    "SELECT seq FROM jobs {hint} WHERE status = 'queued' AND priority = :priority "
    "AND owner IS NULL LIMIT 1"
)
_KEYLESS_AT = {
    "sqlite": text(_KEYLESS.format(hint="INDEXED BY ix_jobs_fair")),
    "": text(_KEYLESS.format(hint="")),
}
_SERVED = select(Served.owner, Served.last_served_at).where(
    Served.owner.in_(bindparam("owners", expanding=True))
)


_FIRST_AT = (
    select(*_HEAD.selected_columns)
    .where(_QUEUED_LITERAL, _DUE, Job.priority == bindparam("priority"))
    .order_by(Job.seq)
    .limit(1)
)
_FIRST_OF_KEYLESS = _FIRST_AT.where(Job.owner.is_(None))
_FIRST_OF_OWNER = _FIRST_AT.where(Job.owner == bindparam("whose"))


def _fair_head(conn: Connection, head: Row[Any], params: dict[str, Any]) -> Row[Any]:
    """The first ready job of the owner served least recently among those with queued
    jobs at `head`'s priority (those never served before all); `head` itself when its
    owner is alone there."""
    at = {**params, "priority": head.priority}
    owners = [row.owner for row in conn.execute(_OWNERS_AT, at)]
    keyless = _KEYLESS_AT.get(conn.dialect.name, _KEYLESS_AT[""])
    if conn.execute(keyless, at).first() is not None:
        owners.append("")
    if len(owners) < 2:
        return head
    served = dict(conn.execute(_SERVED, {"owners": owners}).all())

    def first(owner: str) -> Row[Any] | None:
        if owner == "":
            return conn.execute(_FIRST_OF_KEYLESS, at).first()
        return conn.execute(_FIRST_OF_OWNER, {**at, "whose": owner}).first()

    never = sorted(o for o in owners if o not in served)  # new owners: before all, by name
    for owner in never + sorted(set(owners) - set(never), key=lambda o: served[o]):
        found = first(owner)  # None: its jobs are not due yet (not_before)
        if found is not None:
            return found
    return head


_UPSERT_SERVED: dict[str, Any] = {}  # by dialect: built once, then from the cache


def _note_served(conn: Connection, rows: list[Row[Any]], now: datetime) -> None:
    """The owners of the jobs just taken were served now (batched along counts too)."""
    owners = sorted({row.owner or "" for row in rows})
    if not owners:
        return
    dialect = conn.dialect.name
    if dialect not in _UPSERT_SERVED:
        insert = sqlite_insert if dialect == "sqlite" else postgresql_insert
        statement = insert(Served).values(owner=bindparam("who"), last_served_at=_when("at"))
        _UPSERT_SERVED[dialect] = statement.on_conflict_do_update(
            index_elements=[Served.owner],
            set_={"last_served_at": statement.excluded.last_served_at},
        )
    conn.execute(_UPSERT_SERVED[dialect], [{"who": o, "at": now} for o in owners])


def _preferred_head(*, default_too: bool) -> Any:
    models: ColumnElement[bool] = Job.model.in_(bindparam("models", expanding=True))
    if default_too:  # jobs that name no model run on the default, which is resident
        models = or_(models, Job.model.is_(None))
    return _HEAD.where(models, Job.priority == bindparam("priority"))


_PREFERRED_HEAD = {flag: _preferred_head(default_too=flag) for flag in (False, True)}


def _compatible_statement() -> Update:
    candidates = (
        select(Job.seq, Job.images, Job.priority)
        .where(_ready(), Job.batch_key == bindparam("key"))
        # a job bigger than a whole batch waits to be a head; it blocks no one behind it
        .where(or_(Job.images <= bindparam("budget"), Job.seq == bindparam("head")))
        .order_by(Job.priority.desc(), Job.seq)
        .limit(bindparam("limit"))
        .with_for_update(skip_locked=True)
        .subquery("candidates")
    )
    running = select(
        candidates.c.seq,
        func.sum(candidates.c.images)
        .over(order_by=(candidates.c.priority.desc(), candidates.c.seq))
        .label("images_so_far"),
    ).subquery("running")
    chosen = select(running.c.seq).where(
        or_(running.c.images_so_far <= bindparam("budget"), running.c.seq == bindparam("head"))
    )
    return update(Job).where(Job.seq.in_(chosen)).values(**_TAKE).returning(*COLUMNS)


_CLAIM_COMPATIBLE = _compatible_statement()
# A job without a batch key (queued before keys existed) runs alone.
_CLAIM_ONE = (
    update(Job).where(Job.seq == bindparam("head"), _ready()).values(**_TAKE).returning(*COLUMNS)
)

# The jobs (of a list) that this runner holds.
_HELD = (
    update(Job)
    .where(Job.id.in_(bindparam("ids", expanding=True)))
    .where(Job.status == JobStatus.RUNNING, Job.lease_owner == bindparam("runner"))
)
_HEARTBEAT = _HELD.values(lease_expires_at=_when("until")).returning(Job.id, Job.cancel_requested)
_PROGRESS = _HELD.values(
    progress_step=bindparam("step"), progress_total=bindparam("total")
).returning(Job.id, Job.cancel_requested)
_LEASE_CLEARED = {"lease_owner": None, "lease_expires_at": None}
_RELEASE_CANCELLED = (
    _HELD.where(Job.cancel_requested.is_(True))
    .values(status=JobStatus.CANCELLED, finished_at=_when("now"), **_LEASE_CLEARED)
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
        finished_at=_when("now"),
        progress_step=Job.progress_total,
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
        not_before=case((_AGAIN, _when("retry_at")), else_=Job.not_before),
        progress_step=None,
        progress_total=None,
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
            "runner": owner,
            "limit": limit,
        }
        statement = _CLAIM if model is None else _CLAIM_MODEL
        if model is not None:
            params["only_model"] = model
        rows = list(self.db.write(lambda conn: conn.execute(statement, params).all()))
        # RETURNING gives no order guarantee; hand the jobs out in claim order.
        rows.sort(key=lambda r: (-r.priority, r.seq))
        return [JobRecord.from_row(r) for r in rows]

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
        the resident model has work at that priority.
        """
        now = now or utcnow()
        models = list(prefer_models)
        params: dict[str, Any] = {
            "now": now,
            "until": now + timedelta(seconds=lease_s),
            "runner": owner,
        }

        def work(conn: Connection) -> list[Row[Any]]:
            head = conn.execute(_HEAD, params).first()
            if head is None:
                return []
            first = head
            if fair:  # (off: strict queue order, the benchmarks' baseline)
                head = _fair_head(conn, head, params)
            resident = head.model in models or (prefer_default and head.model is None)
            patient = (
                switch_for_jobs_queued_before is None
                or head.created_at >= switch_for_jobs_queued_before
            )
            if (models or prefer_default) and not resident and patient:
                preferred = conn.execute(
                    _PREFERRED_HEAD[prefer_default],
                    {**params, "models": models, "priority": head.priority},
                ).first()
                head = preferred or head
            budget = max_images
            if head.batch_key is not None and images_for is not None:
                budget = max(1, min(budget, images_for(JobSpec.from_dict(head.spec))))
            if head.batch_key is None or head.seq != first.seq:
                # Alone, or chosen from behind its batch mates (fair share, a resident
                # model): the head first, then the mates that fit what is left.
                taken = list(conn.execute(_CLAIM_ONE, {**params, "head": head.seq}))
                left = budget - head.images
                if head.batch_key is not None and left > 0:
                    mates = {"key": head.batch_key, "head": -1, "budget": left, "limit": left}
                    taken += conn.execute(_CLAIM_COMPATIBLE, {**params, **mates}).all()
            else:
                taken = list(
                    conn.execute(
                        _CLAIM_COMPATIBLE,
                        {
                            **params,
                            "key": head.batch_key,
                            "head": head.seq,
                            "budget": budget,
                            "limit": max(budget, 1),
                        },
                    )
                )
            _note_served(conn, taken, now)
            return taken

        rows = self.db.write(work)
        rows.sort(key=lambda r: (-r.priority, r.seq))
        return [JobRecord.from_row(r) for r in rows]

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
        orphaned = Job.lease_expires_at < now
        if held_by is not None:
            orphaned = or_(orphaned, Job.lease_owner.startswith(held_by, autoescape=True))
        expired = update(Job).where(Job.status == JobStatus.RUNNING).where(orphaned)

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
            count_finished(conn, [*cancelled, *exhausted])
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
