"""The store's common ground: construction, ids, clocks and shared query pieces."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import BindParameter, Connection, bindparam, func, literal_column, select

from .. import errors
from ..database import Database
from ..records import JobRecord
from ..states import JobStatus
from .tables import Job, UTCDateTime

if TYPE_CHECKING:
    from .changes import Changes

T = TypeVar("T")

COLUMNS = tuple(Job.__table__.columns)
_QUEUED = select(func.count()).select_from(Job).where(Job.status == JobStatus.QUEUED)
_BY_ID = select(*COLUMNS).where(Job.id == bindparam("job_id"))
# Whose idempotency keys a job's is among (the admin's jobs have no owner): the very
# expression of the unique index, a literal '' and not a bound parameter, so that a
# lookup searches the index instead of scanning it.
owner_scope = func.coalesce(Job.owner, literal_column("''"))
_CHUNK = 500  # bound parameters per IN (...) list
_COUNT_FOR_S = 1.0  # how long check_room trusts a count of the queue


def utcnow() -> datetime:
    return datetime.now(UTC)


def when(name: str) -> BindParameter[datetime]:
    """A bound parameter holding a timezone-aware UTC time."""
    return bindparam(name, type_=UTCDateTime())


def new_id() -> str:
    """A URL-safe, unguessable id: 120 random bits as 30 lowercase hex digits."""
    return secrets.token_hex(15)


def new_secret() -> str:
    """What a job's image URLs carry: 128 random bits of their own, as 32 hex digits,
    so that knowing a job's id (a log, `/health`, a chosen idempotency key) opens no image."""
    return secrets.token_hex(16)


def chunks(values: Sequence[T]) -> Iterable[Sequence[T]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def get_job(conn: Connection, job_id: str) -> JobRecord:
    row = conn.execute(_BY_ID, {"job_id": job_id}).first()
    if row is None:
        raise errors.JobNotFound(f"no job {job_id}", job_id=job_id)
    return JobRecord.from_row(row)


class StoreBase:
    """What every repository of the store shares: the database, the limits every part
    applies, and the process's watcher of the database."""

    def __init__(self, db: Database, *, max_queue: int = 10_000, max_attempts: int = 3) -> None:
        self.db = db
        self.max_queue = max_queue
        self.max_attempts = max_attempts
        # (queued jobs, when counted, added since): see check_room
        self._queued_estimate: tuple[int, float, int] | None = None
        self._changes: Changes | None = None
        self._changes_lock = threading.Lock()

    @property
    def changes(self) -> Changes:
        """This process's watcher of the database (changes.py), made on first use."""
        from .changes import Changes  # it reads the store's base (chunks): imported here

        with self._changes_lock:
            if self._changes is None:
                self._changes = Changes(self.db)
            return self._changes

    def close(self) -> None:
        if self._changes is not None:
            self._changes.close()
        self.db.close()

    def check_room(self, conn: Connection, adding: int) -> None:
        """Refuse new queued jobs past `max_queue` (`queue_full`).

        Counting the queue costs time in proportion to its length, on every enqueue. So
        the count is kept for up to a second, plus what this store added since, and
        taken afresh whenever that estimate comes within 10% of the limit: the limit is
        exact for this process, and other processes can overshoot it by at most what
        they enqueue within that second.
        """
        now = time.monotonic()
        estimate = self._queued_estimate
        if estimate is not None:
            counted, at, added = estimate
            near = counted + added + adding > self.max_queue * 0.9
            if not near and now - at < _COUNT_FOR_S:
                self._queued_estimate = (counted, at, added + adding)
                return
        queued = conn.scalar(_QUEUED) or 0
        if queued + adding > self.max_queue:
            self._queued_estimate = None
            raise errors.QueueFull(
                f"the queue is full ({queued} queued, limit {self.max_queue}); try again later"
            )
        self._queued_estimate = (queued, now, adding)


class Repository:
    """One concern's operations (jobs, leases, downloads, ...), over the store's shared
    core."""

    def __init__(self, core: StoreBase) -> None:
        self.core = core

    @property
    def db(self) -> Database:
        return self.core.db

    @property
    def max_queue(self) -> int:
        return self.core.max_queue

    @property
    def max_attempts(self) -> int:
        return self.core.max_attempts

    @property
    def changes(self) -> Changes:
        return self.core.changes

    def check_room(self, conn: Connection, adding: int) -> None:
        self.core.check_room(conn, adding)
