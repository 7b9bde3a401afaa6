"""Wake-ups: one watcher per process tells every waiter there (an idle
runner, a request waiting for its job, an event stream, `alice-spool wait`) when what it
waits for may have changed, so that none of them polls the database on its own.

- On PostgreSQL the watcher LISTENs on `alice_spool` with a connection of its own; the
  triggers of migration 0014 send `q` when a job is queued and `j:<id>` / `d:<id>` when a
  job's or a download's status or progress changes, at the commit, from any host.
- On SQLite it reads the file's `PRAGMA data_version` (a counter, no table read) every
  `poll_s` on a connection of its own, which sees every other connection's commits.

When something changed (SQLite), and as the safety net every `safety_s` (PostgreSQL:
a notification lost while the connection was down), it reads the states of the watched
jobs and downloads in one query and wakes only the waiters whose state changed.
Waiters for the queue (idle runners) are woken by `q`, or on SQLite when the queue's
signature (count and ids of the queued jobs) changed; they still claim every
`runner.recheck_s` on their own (scheduled jobs, a dead listener).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import Connection, func, select

from ..database import Database
from ..states import JobStatus
from ._base import chunks
from .tables import Download, Job

log = logging.getLogger(__name__)

CHANNEL = "alice_spool"
# A waiter looks again at least this often, woken or not: the last resort, should the
# watcher itself be stuck (the safety net proper is the watcher's own `safety_s`).
WAKE_AT_LEAST_S = 15.0
_UNKNOWN = object()  # a state not read yet: the next reading wakes its waiters
_NOTIFIED = object()  # its waiters were woken by a notification: the next reading is kept
_QUEUE = select(func.count(), func.coalesce(func.sum(Job.seq), 0)).where(
    Job.status == JobStatus.QUEUED
)


class Subscription:
    """What one waiter watches; `wait` (a thread) or `wait_async` (a coroutine) returns
    when it may have changed, or after the timeout. A wake-up that came while the waiter
    was busy is kept for its next wait."""

    def __init__(
        self,
        changes: Changes,
        *,
        jobs: frozenset[str],
        downloads: frozenset[str],
        queue: bool,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self._changes = changes
        self.jobs, self.downloads, self.queue = jobs, downloads, queue
        self._event = threading.Event()
        self._loop = loop
        self._async_event = asyncio.Event() if loop is not None else None

    def wake(self) -> None:
        """Wake the waiter (also safe from a signal handler: it only sets flags)."""
        self._event.set()
        if self._loop is not None and self._async_event is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                self._loop.call_soon_threadsafe(self._async_event.set)

    def wait(self, timeout_s: float) -> bool:
        """Block until woken or `timeout_s` passes; whether it was woken."""
        woken = self._event.wait(max(0.0, timeout_s))
        self._event.clear()
        return woken

    async def wait_async(self, timeout_s: float) -> bool:
        assert self._async_event is not None, "subscribed without an event loop"
        try:
            await asyncio.wait_for(self._async_event.wait(), max(0.0, timeout_s))
            return True
        except TimeoutError:
            return False
        finally:
            self._async_event.clear()
            self._event.clear()

    def close(self) -> None:
        self._changes._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class Changes:
    """The process's watcher over one database (`Store.changes`); its thread starts with
    the first subscription and stops at `close`."""

    def __init__(self, db: Database, *, poll_s: float = 0.05, safety_s: float = 1.0) -> None:
        self.db = db
        self.poll_s = poll_s
        self.safety_s = safety_s
        self._lock = threading.Lock()
        self._subscriptions: set[Subscription] = set()
        self._states: dict[tuple[str, str], object] = {}  # ("job"|"download", id) -> state
        self._queue_state: object = _UNKNOWN
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.wakeups = 0  # how many times a waiter was woken (for tests and benchmarks)

    # -- waiters -----------------------------------------------------------------------

    def watch(
        self,
        *,
        jobs: Iterable[str] = (),
        downloads: Iterable[str] = (),
        queue: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Subscription:
        """Subscribe before reading what is waited for, then wait: a change between the
        two still wakes the waiter. In a coroutine, pass its running loop."""
        subscription = Subscription(
            self, jobs=frozenset(jobs), downloads=frozenset(downloads), queue=queue, loop=loop
        )
        with self._lock:
            self._subscriptions.add(subscription)
            for key in self._keys(subscription):
                self._states.setdefault(key, self._fresh)
            self._start()
        return subscription

    @staticmethod
    def _keys(subscription: Subscription) -> Iterator[tuple[str, str]]:
        yield from (("job", job_id) for job_id in subscription.jobs)
        yield from (("download", download_id) for download_id in subscription.downloads)

    def _remove(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions.discard(subscription)
            wanted = {key for s in self._subscriptions for key in self._keys(s)}
            for key in list(self._states):
                if key not in wanted:
                    del self._states[key]

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    # -- waking ------------------------------------------------------------------------

    def _wake(
        self, *, jobs: Iterable[str] = (), downloads: Iterable[str] = (), queue: bool = False
    ) -> None:
        job_ids, download_ids = set(jobs), set(downloads)
        with self._lock:
            chosen = [
                s
                for s in self._subscriptions
                if (queue and s.queue) or s.jobs & job_ids or s.downloads & download_ids
            ]
        for subscription in chosen:
            subscription.wake()
        self.wakeups += len(chosen)

    @property
    def _fresh(self) -> object:
        """A new waiter's state: on PostgreSQL every change after it subscribed is
        notified, so the first reading is only recorded; on SQLite a change between its
        subscribing and that reading is seen only there, so the reading wakes it."""
        return _NOTIFIED if self._dialect == "postgresql" else _UNKNOWN

    def _wake_all(self) -> None:
        with self._lock:
            chosen = list(self._subscriptions)
            for key in self._states:
                self._states[key] = self._fresh
        for subscription in chosen:
            subscription.wake()
        self.wakeups += len(chosen)

    def _compare(self, conn: Connection, *, queue: bool) -> None:
        """Read the watched states (one query per kind and 500 ids) and the queue's
        signature; wake the waiters of whatever differs from the last reading."""
        with self._lock:
            wanted = list(self._states)
            queue_watched = any(s.queue for s in self._subscriptions)
        found: dict[tuple[str, str], object] = {}
        for kind, table, columns in (
            ("job", Job, (Job.id, Job.status, Job.progress_step, Job.progress_total)),
            ("download", Download, (Download.id, Download.status, Download.bytes_done)),
        ):
            ids = [key[1] for key in wanted if key[0] == kind]
            for chunk in chunks(ids):
                rows = conn.execute(select(*columns).where(table.id.in_(list(chunk))))
                found.update(((kind, row[0]), tuple(row[1:])) for row in rows)
        changed_jobs: list[str] = []
        changed_downloads: list[str] = []
        with self._lock:
            for key in wanted:
                if key not in self._states:
                    continue  # no longer watched
                state = found.get(key)  # None: gone (purged, deleted)
                known = self._states[key]
                self._states[key] = state
                if known is _NOTIFIED:
                    continue
                if known is _UNKNOWN or known != state:
                    (changed_jobs if key[0] == "job" else changed_downloads).append(key[1])
        queue_changed = False
        if queue and queue_watched:
            signature = tuple(conn.execute(_QUEUE).one())
            queue_changed = signature != self._queue_state
            self._queue_state = signature
        if changed_jobs or changed_downloads or queue_changed:
            self._wake(jobs=changed_jobs, downloads=changed_downloads, queue=queue_changed)

    # -- the thread --------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is not None or self._stop.is_set():
            return
        target = self._watch_postgres if self._dialect == "postgresql" else self._watch_sqlite
        self._thread = threading.Thread(
            target=self._run, args=(target,), name="changes", daemon=True
        )
        self._thread.start()

    @property
    def _dialect(self) -> str:
        return self.db.engine.dialect.name

    def _run(self, target: Any) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                with self.db.pinned():
                    target()
                return
            except Exception as exc:  # the database went away: wake everyone, retry
                log.warning("watching the database for changes: %s; retrying in %g s", exc, delay)
                self._wake_all()
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, 10.0)

    def _watch_sqlite(self) -> None:
        path = self.db.engine.url.database or ""  # a file: Database refuses :memory:
        watcher = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            last = watcher.execute("PRAGMA data_version").fetchone()[0]
            self._compare_now(queue=True)
            while not self._stop.wait(self.poll_s):
                version = watcher.execute("PRAGMA data_version").fetchone()[0]
                with self._lock:
                    unknown = any(v is _UNKNOWN for v in self._states.values())
                if version != last or unknown:
                    last = version
                    self._compare_now(queue=True)
        finally:
            watcher.close()

    def _compare_now(self, *, queue: bool) -> None:
        with self._lock:
            idle = not self._states and not (queue and any(s.queue for s in self._subscriptions))
        if idle:
            return
        self.db.read(lambda conn: self._compare(conn, queue=queue))

    def _watch_postgres(self) -> None:
        import psycopg  # the PostgreSQL driver (the `postgres` extra), only here

        url = self.db.engine.url.set(drivername="postgresql")
        with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self._wake_all()  # anything missed before listening (or while reconnecting)
            last_safety = time.monotonic()
            while not self._stop.is_set():
                # each notification wakes its waiters as it comes; the loop turns at
                # least twice a second for the stop flag and the safety check
                for note in conn.notifies(timeout=min(self.safety_s, 0.5)):
                    self._notified(note.payload)
                if time.monotonic() - last_safety >= self.safety_s:
                    last_safety = time.monotonic()
                    self._safety_check()

    def _notified(self, payload: str) -> None:
        kind, _, key = payload.partition(":")
        if kind == "q":
            self._wake(queue=True)
            return
        watched = ("job" if kind == "j" else "download", key)
        with self._lock:
            if watched not in self._states:
                return  # nobody here waits for it
            self._states[watched] = _NOTIFIED  # the safety check's next reading is kept
        if kind == "j":
            self._wake(jobs=[key])
        elif kind == "d":
            self._wake(downloads=[key])

    def _safety_check(self) -> None:
        """The slow poll: the watched jobs' and downloads' states, read once for all of
        this process's waiters (nothing when none is waiting)."""
        with self._lock:
            if not self._states:
                return
        self.db.read(lambda conn: self._compare(conn, queue=False))
