"""Enqueueing: one job, or a batch all or nothing, with idempotency keys."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, exists, insert, select

from .. import errors
from ..records import (
    BatchEnqueued,
    Enqueued,
    JobRecord,
    NewJob,
)
from ..spec import JobSpec
from ..states import JobStatus, Source
from ._base import COLUMNS, Repository, chunks, new_id, new_secret, owner_scope, utcnow
from .tables import Job

log = logging.getLogger(__name__)

_UNSET = dict.fromkeys(
    [
        "started_at",
        "finished_at",
        "lease_owner",
        "lease_expires_at",
        "progress_step",
        "progress_total",
        "result",
        "error_code",
        "error_message",
        "images_expired_at",
    ]
)
_INSERT = insert(Job)
# An idempotency key is its owner's: the same words from another owner are another key.
# (COALESCE, as in the unique index: the admin's jobs have no owner.)
_BY_KEY = select(*COLUMNS).where(
    owner_scope == bindparam("scope"), Job.idempotency_key == bindparam("key")
)
_KEYS = select(Job.idempotency_key, Job.id, Job.batch_id, Job.request_hash, Job.owner).where(
    owner_scope == bindparam("scope"), Job.idempotency_key.in_(bindparam("keys", expanding=True))
)


# Insert a job unless its idempotency key is taken (RETURNING tells which happened).
_NEW_COLUMNS = (
    "id", "idempotency_key", "request_hash", "batch_id", "source", "client", "status",
    "priority", "not_before", "created_at", "attempts", "max_attempts", "cancel_requested",
    "model", "spec", "batch_key", "images", "owner", "claims", "image_secret",
)  # fmt: skip
_INSERT_NEW_KEY = (
    insert(Job)
    .from_select(
        _NEW_COLUMNS,
        select(*(bindparam(f"new_{c}", type_=Job.__table__.c[c].type) for c in _NEW_COLUMNS)).where(
            ~exists().where(
                owner_scope == bindparam("new_scope", type_=Job.owner.type),
                Job.idempotency_key == bindparam("new_idempotency_key"),
            )
        ),
    )
    .returning(Job.seq)
)


def _earlier(conn: Connection, key: str, row: dict[str, Any]) -> Enqueued | None:
    """The job an earlier request of the same owner made under `key`, if any; an error
    if that request was a different one."""
    existing = conn.execute(_BY_KEY, {"scope": row["owner"] or "", "key": key}).first()
    if existing is None:
        return None
    if existing.request_hash != row["request_hash"]:
        raise errors.IdempotencyConflict(
            f"idempotency key {key!r} was already used for a different request (job {existing.id})",
            job_id=existing.id,
        )
    return Enqueued(JobRecord.from_row(existing), created=False)


def _one_scope(rows: Sequence[dict[str, Any]]) -> str:
    """The owner whose idempotency keys several rows are looked up among: one call
    queues one owner's jobs (a batch, the inbox's files)."""
    owners = {row["owner"] for row in rows}
    if len(owners) > 1:
        raise ValueError("one call queues the jobs of one owner")
    return next(iter(owners), None) or ""


def _log_queued(
    job_id: str, source: str, client: str | None, model: str | None, batch_id: str | None
) -> None:
    log.info(
        "job %s queued (source %s, client %s, model %s%s)",
        job_id,
        source,
        client or "-",
        model or "default",
        f", batch {batch_id}" if batch_id else "",
        extra={"job_id": job_id, "status": "queued", "source": source},
    )


def _logged(done: Enqueued) -> Enqueued:
    """One log line per job transition: this one, queued."""
    if done.created:
        job = done.job
        _log_queued(job.id, job.source.value, job.client, job.model, job.batch_id)
    return done


class Enqueueing(Repository):
    """Queue jobs: one, or a batch all or nothing."""

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
        job_id: str | None = None,
        owner: str | None = None,
    ) -> dict[str, Any]:
        """The columns a new job sets; the others start out NULL (see `_UNSET`)."""
        # The request as asked, before any random seed, so that a repeat matches it; only
        # a job with an idempotency key is ever compared.
        fingerprint = spec.fingerprint() if key is not None else None
        stored = spec.with_seed().to_dict()  # the seed drawn once, recorded: reruns match
        del stored["priority"]  # the column is the live value
        return {
            "id": job_id or new_id(),
            "idempotency_key": key,
            "request_hash": fingerprint,
            "batch_id": batch_id,
            "source": Source(source).value,
            "client": client,
            "status": JobStatus.QUEUED.value,
            "priority": spec.priority,
            "not_before": not_before,
            "created_at": now,
            "attempts": 0,
            "max_attempts": max_attempts or self.max_attempts,
            "cancel_requested": False,
            "model": spec.model,
            "spec": stored,
            "batch_key": spec.batch_digest(),
            "images": spec.n,
            "owner": owner,
            "claims": 0,
            "image_secret": new_secret(),
        }

    def _rows(
        self,
        items: Sequence[NewJob],
        *,
        source: Source | str,
        batch_id: str | None,
        max_attempts: int | None,
        now: datetime | None,
    ) -> list[dict[str, Any]]:
        """The rows of several new jobs, made at one moment."""
        now = now or utcnow()
        return [
            self._row(
                item.spec,
                source=Source(source),
                client=item.client,
                key=item.idempotency_key,
                batch_id=batch_id,
                max_attempts=max_attempts,
                not_before=None,
                now=now,
                job_id=item.job_id,
                owner=item.owner,
            )
            for item in items
        ]

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
        job_id: str | None = None,
        owner: str | None = None,
    ) -> Enqueued:
        """Queue one job. With an idempotency key, a repeat of the same request returns
        the job made the first time; the same key with a different request is an error.
        `job_id`: the id to give it (one made by `new_job_id`, whose inputs were stored
        under it first); a new one otherwise. `owner`: the key asking (None: the
        admin's); another owner's key is a conflict that tells nothing of its job."""
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
            job_id=job_id,
            owner=owner,
        )

        if idempotency_key is None:
            # Made before the transaction: writers queue for SQLite's one write lock,
            # and whatever is done while holding it, every other writer waits for.
            made = Enqueued(JobRecord.from_mapping({**_UNSET, **row}), created=True)

            def work(conn: Connection) -> Enqueued:
                self.check_room(conn, 1)
                conn.execute(_INSERT, row)
                return made

            return _logged(self.db.write(work))

        key = idempotency_key
        return _logged(
            self.db.write_once_more_on_conflict(lambda conn: self._insert_keyed(conn, key, row))
        )

    def _insert_keyed(self, conn: Connection, key: str, row: dict[str, Any]) -> Enqueued:
        """Queue `row` under idempotency key `key`, or answer the job an earlier request
        of the same owner made under it (an error if that request was a different one)."""
        try:
            self.check_room(conn, 1)
        except errors.QueueFull:
            # A request accepted before is still accepted, full queue or not.
            earlier = _earlier(conn, key, row)
            if earlier is None:
                raise
            return earlier
        params = {f"new_{name}": value for name, value in row.items()}
        params["new_scope"] = row["owner"] or ""
        # One statement in the usual case, a new key; otherwise this is a repeat.
        if conn.execute(_INSERT_NEW_KEY, params).first() is not None:
            return Enqueued(JobRecord.from_mapping({**_UNSET, **row}), created=True)
        earlier = _earlier(conn, key, row)
        if earlier is None:
            raise errors.DatabaseError(f"job {row['id']} was neither inserted nor found")
        return earlier

    def enqueue_keyed(
        self,
        items: Sequence[NewJob],
        *,
        source: Source | str,
        now: datetime | None = None,
    ) -> list[Enqueued | errors.IdempotencyConflict]:
        """Queue several independent jobs, each with its own idempotency key, in one
        transaction (the inbox taking many files at once). Each item is answered as
        `enqueue` would answer it alone: a new job, the earlier job of a repeat, or the
        conflict of a key used for another request (which queues nothing for that item
        and does not stop the others). A full queue refuses them all."""
        if any(item.idempotency_key is None for item in items):
            raise ValueError("enqueue_keyed needs an idempotency key on every item")
        rows = self._rows(items, source=source, batch_id=None, max_attempts=None, now=now)

        def work(conn: Connection) -> list[Enqueued | errors.IdempotencyConflict]:
            self.check_room(conn, len(rows))
            keys = [row["idempotency_key"] for row in rows]
            scope = _one_scope(rows)
            taken = {
                r.idempotency_key: r.request_hash
                for chunk in chunks(keys)
                for r in conn.execute(_KEYS, {"scope": scope, "keys": list(chunk)})
            }
            fresh: dict[str, dict[str, Any]] = {}  # new in this call, by key
            for row in rows:
                key = row["idempotency_key"]
                if key not in taken and key not in fresh:
                    fresh[key] = row
            if fresh:
                # One statement for all of them. (On PostgreSQL a concurrent writer may
                # commit one of these keys first: the unique index then raises, and
                # write_once_more_on_conflict runs this again, finding it taken.)
                conn.execute(_INSERT, list(fresh.values()))
            answers: list[Enqueued | errors.IdempotencyConflict] = []
            for row in rows:
                key = row["idempotency_key"]
                if fresh.get(key) is row:
                    answers.append(Enqueued(JobRecord.from_mapping({**_UNSET, **row}), True))
                    continue
                try:  # a repeat: of an earlier job, or of a row above
                    earlier = _earlier(conn, key, row)
                except errors.IdempotencyConflict as conflict:
                    answers.append(conflict)
                    continue
                if earlier is None:
                    raise errors.DatabaseError(f"job {row['id']} was neither inserted nor found")
                answers.append(earlier)
            return answers

        answers = self.db.write_once_more_on_conflict(work) if rows else []
        for answer in answers:
            if isinstance(answer, Enqueued):
                _logged(answer)
        return answers

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
        if len(items) > self.max_queue:  # it could never fit: waiting would not help
            raise errors.BatchTooLarge(
                f"the batch has {len(items)} requests and the queue holds at most "
                f"{self.max_queue} (generation.max_queue): split it into smaller batches"
            )
        keys = [item.idempotency_key for item in items if item.idempotency_key is not None]
        if len(set(keys)) != len(keys):
            duplicate = Counter(keys).most_common(1)[0][0]
            raise errors.InvalidParameters(
                f"the batch uses the id {duplicate!r} more than once", field="id"
            )
        batch_id = new_id()
        rows = self._rows(
            items, source=source, batch_id=batch_id, max_attempts=max_attempts, now=now
        )

        scope = _one_scope(rows)

        def work(conn: Connection) -> BatchEnqueued:
            existing = {
                r.idempotency_key: r
                for chunk in chunks(keys)
                for r in conn.execute(_KEYS, {"scope": scope, "keys": list(chunk)})
            }
            if existing:
                return self._repeated_batch(conn, rows, existing)
            self.check_room(conn, len(rows))
            conn.execute(_INSERT, rows)
            return BatchEnqueued(batch_id, [r["id"] for r in rows], True)

        batch = self.db.write_once_more_on_conflict(work)
        if batch.created:
            for row in rows:
                _log_queued(row["id"], row["source"], row["client"], row["model"], batch_id)
        return batch

    def _repeated_batch(
        self, conn: Connection, rows: list[dict[str, Any]], existing: dict[str, Any]
    ) -> BatchEnqueued:
        first = next(iter(existing.values()))
        earlier = (
            conn.execute(select(Job.id).where(Job.batch_id == first.batch_id).order_by(Job.seq))
            .scalars()
            .all()
        )
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
        return BatchEnqueued(first.batch_id, list(earlier), False)
