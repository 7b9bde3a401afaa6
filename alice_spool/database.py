"""The store's connection setup: engine, SQLite pragmas, and short transactions.

On SQLite the database runs in WAL mode (readers never wait for the writer) with a busy
timeout, and writers take the write lock up front with `BEGIN IMMEDIATE`: two writers then
queue on the lock instead of failing with `database is locked` when one tries to upgrade
a read lock. A transaction that still meets a busy database is retried until a deadline,
then reported as `DatabaseBusy`.

Durability (`[database] synchronous`): with `normal`, SQLite's recommended setting for
WAL, a committed job survives any crash or kill of the process, and the file is never
corrupted; only a power loss or OS crash can take back the last commits before it. With
`full`, every commit waits for the disk (fsync), so not even that is lost, at the price
of one fsync per transaction.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    IntegrityError,
    OperationalError,
    SQLAlchemyError,
)

from . import errors
from .masking import masked_url

log = logging.getLogger(__name__)
T = TypeVar("T")


SYNCHRONOUS = ("normal", "full")


def _sqlite_setup(synchronous: str) -> Callable[[sqlite3.Connection, Any], None]:
    def on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # Take transaction control from the driver: Database.transaction issues BEGIN.
        dbapi_connection.isolation_level = None
        mode = dbapi_connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            log.warning("SQLite refused WAL mode (journal_mode=%s): writers block readers", mode)
        dbapi_connection.execute(f"PRAGMA synchronous={synchronous.upper()}")
        dbapi_connection.execute("PRAGMA foreign_keys=ON")
        # The log is folded into the file by the process's Checkpointer, beside the
        # writers; a writer does it itself only past this many pages.
        dbapi_connection.execute(f"PRAGMA wal_autocheckpoint={WAL_FALLBACK_PAGES}")

    return on_connect


# How many pages the write-ahead log may hold before the writer whose commit passes it
# folds the log into the file itself (SQLite's default is 1,000): only should the
# Checkpointer fall behind.
WAL_FALLBACK_PAGES = 10_000


class Checkpointer:
    """Folds a SQLite database's write-ahead log into its file from a thread of its own.

    SQLite does it by default in the writer whose commit takes the log past 1,000
    pages: that commit then waits for the copy and two fsyncs (about 20 ms on the
    development machine), and so does every writer queued behind it, about once every
    200 commits; under a stream of submissions that was a fifth of the time spent. Here
    a thread does it shortly after writes, beside them: a passive checkpoint takes no
    lock that a writer needs. It stops after a while without writes and starts again
    with the next one.
    """

    GATHER_S = 0.25  # after a write, how long to wait for more before checkpointing
    IDLE_S = 30.0  # without writes for this long, the thread ends

    def __init__(self, path: Path, *, busy_timeout_s: float) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self.passes = 0  # checkpoints run (for tests)
        self._lock = threading.Lock()
        self._pending = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def wrote(self) -> None:
        """A write transaction committed: checkpoint soon."""
        self._pending.set()
        thread = self._thread
        if thread is None or not thread.is_alive() or self._pid != os.getpid():
            self._start()

    def _start(self) -> None:
        with self._lock:
            alive = self._thread is not None and self._thread.is_alive()
            if (alive and self._pid == os.getpid()) or self._stop.is_set():
                return
            self._pid = os.getpid()  # (a forked child has the object, not the thread)
            self._thread = threading.Thread(
                target=self._run, name="alice-spool-checkpoint", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        try:
            connection = sqlite3.connect(
                self.path, timeout=self.busy_timeout_s, isolation_level=None
            )
        except sqlite3.Error as exc:
            log.warning("cannot open the database to checkpoint it: %s", exc)
            return
        try:
            while not self._stop.is_set():
                if not self._pending.wait(self.IDLE_S):
                    with self._lock:
                        if not self._pending.is_set():
                            self._thread = None  # the next write starts another
                            return
                    continue
                if self._stop.wait(self.GATHER_S):  # the writes of the next moments too
                    return
                self._pending.clear()
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.passes += 1
                except sqlite3.Error as exc:  # busy, or the file went away: next time
                    log.debug("checkpoint skipped: %s", exc)
        finally:
            connection.close()

    def close(self) -> None:
        """Stop the thread (it finishes the checkpoint it is running)."""
        self._stop.set()
        self._pending.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)


def create_db_engine(
    url: str, *, busy_timeout_s: float = 30.0, synchronous: str = "normal"
) -> Engine:
    """An engine with the durability and locking settings the daemon uses."""
    if synchronous not in SYNCHRONOUS:
        raise errors.DatabaseError(f"synchronous must be normal or full, got {synchronous!r}")
    try:
        parsed = make_url(url)
    except Exception:  # sqlalchemy raises ArgumentError or ValueError
        # The text as given may carry a password: neither it nor the parser's words
        # (which quote it) are repeated.
        raise errors.DatabaseError(
            f"invalid database URL {masked_url(url)!r}: it is not of the form "
            "dialect+driver://user:password@host/database"
        ) from None
    if parsed.get_backend_name() != "sqlite":
        try:
            return create_engine(parsed, pool_pre_ping=True)
        except (ArgumentError, ImportError) as exc:  # unknown dialect, driver not installed
            hint = " (for PostgreSQL: pip install 'alice-spool[postgres]')"
            raise errors.DatabaseError(
                f"cannot use the database URL {masked_url(parsed.render_as_string())}: {exc}"
                + (hint if parsed.get_backend_name() == "postgresql" else "")
            ) from None
    if not parsed.database or parsed.database == ":memory:":
        raise errors.DatabaseError(
            "an in-memory SQLite database cannot be shared between processes; use a file"
        )
    try:
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise errors.DatabaseError(f"cannot create the database's directory: {exc}") from None
    engine = create_engine(
        parsed,
        connect_args={"timeout": busy_timeout_s, "check_same_thread": False},
        # An API server's thread pool runs up to 40 requests at once; a connection each.
        pool_size=16,
        max_overflow=32,
    )
    # A pool event, not a connection event: connection events would be dispatched on
    # every statement, which costs more than a small statement does.
    event.listen(engine.pool, "connect", _sqlite_setup(synchronous))
    return engine


def is_busy(exc: Exception) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED, raw from the driver or wrapped by SQLAlchemy."""
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "database is locked" in str(orig)


# What SQLite says of a statement too big for its limits: the statement's fault, made
# from a request's input (a thousand filters), never the database's.
_SQLITE_INPUT_LIMITS = (
    "too large",  # Expression tree is too large
    "too big",  # string or blob too big
    "too many",  # too many SQL variables / terms in compound SELECT / columns / arguments
    "too complex",  # LIKE or GLOB pattern too complex
    "parser stack overflow",
    "tables in a join",
)
# PostgreSQL's SQLSTATE classes for the same: 22 data exception (a value out of range,
# text it cannot store), 54 program limit exceeded (statement too complex, too many
# arguments). Class 53 (disk full, out of memory) and XX (corruption) are faults.
_POSTGRES_INPUT_CLASSES = ("22", "54")
# What a driver raises, unwrapped, for a value it cannot send: text with a lone
# surrogate, an integer wider than 64 bits.
_UNSENDABLE = (sqlite3.DataError, UnicodeEncodeError, OverflowError)


def is_input_error(exc: BaseException) -> bool:
    """Whether a driver error comes from the statement's input (a 400: the node is
    fine), not from the database (disk full, unreachable, corrupt, locked)."""
    orig = getattr(exc, "orig", None) or exc
    if isinstance(exc, DataError) or isinstance(orig, _UNSENDABLE):
        return True
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(state, str):
        return state[:2] in _POSTGRES_INPUT_CLASSES
    if getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_TOOBIG:
        return True
    if isinstance(orig, sqlite3.Error) and getattr(orig, "sqlite_errorcode", None) in (
        None,
        sqlite3.SQLITE_ERROR,
    ):
        text = str(orig).lower()
        return any(limit in text for limit in _SQLITE_INPUT_LIMITS)
    return False


def translate(exc: Exception) -> errors.SpoolError:
    """A driver error as the `SpoolError` a user can act on."""
    text = " ".join(str(getattr(exc, "orig", None) or exc).split())  # one line
    orig = getattr(exc, "orig", exc)
    if is_input_error(exc):
        return errors.QueryRefused(
            f"the database refused the query these parameters make ({text}): ask for less"
        )
    full = getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    if full or "disk is full" in text or "No space left on device" in text:
        return errors.DatabaseFull(
            f"the job database's disk is full ({text}); new requests are refused until "
            "there is room again"
        )
    if "no such table" in text or ("relation" in text and "does not exist" in text):
        return errors.DatabaseNotMigrated(
            f"the database has no job table ({text}): run `alice-spool db upgrade`"
        )
    return errors.DatabaseError(f"database error: {text}")


class Database:
    """An engine plus the one way the store runs its transactions.

    Each transaction checks a connection out of the pool and back, which costs about as
    much as a small transaction itself. A worker loop that runs many of them (the
    runner, the inbox watcher) wraps itself in `pinned()` to keep one connection for its
    thread instead.
    """

    def __init__(self, engine: Engine, *, busy_deadline_s: float = 60.0) -> None:
        self.engine = engine
        self.busy_deadline_s = busy_deadline_s
        self._sqlite = engine.dialect.name == "sqlite"
        self._local = threading.local()
        # SQLite has one writer at a time. Threads of this process queue for it here,
        # waking the moment it is free, rather than in SQLite's busy handler, which
        # sleeps in growing steps (the API's p99 under concurrent submissions).
        self._write_lock = threading.Lock()
        self._checkpointer: Checkpointer | None = None
        if self._sqlite and engine.url.database:
            self._checkpointer = Checkpointer(
                Path(engine.url.database).expanduser(),
                busy_timeout_s=min(busy_deadline_s, 5.0),
            )

    @classmethod
    def open(
        cls,
        url: str,
        *,
        synchronous: str = "normal",
        busy_timeout_s: float = 30.0,
        busy_deadline_s: float = 60.0,
    ) -> Database:
        engine = create_db_engine(url, busy_timeout_s=busy_timeout_s, synchronous=synchronous)
        return cls(engine, busy_deadline_s=busy_deadline_s)

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        self.engine.dispose()

    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        """Keep one connection for this thread while the block runs; closed at its end."""
        if getattr(self._local, "connection", None) is not None:
            yield  # already pinned further up
            return
        self._local.connection = self.engine.connect()
        try:
            yield
        finally:
            connection, self._local.connection = self._local.connection, None
            connection.close()

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Connection]:
        pinned: Connection | None = getattr(self._local, "connection", None)
        if pinned is None:
            with self.engine.connect() as conn:
                yield conn
            return
        if pinned.invalidated:  # the server or the file went away: reconnect
            pinned.close()
            pinned = self._local.connection = self.engine.connect()
        yield pinned

    def transaction(self, work: Callable[[Connection], T], *, write: bool) -> T:
        """Run `work` in one transaction; retry while SQLite reports the database busy."""
        delay = 0.01
        deadline = time.monotonic() + self.busy_deadline_s
        queue_here = self._write_lock if self._sqlite and write else contextlib.nullcontext()
        while True:
            try:
                with queue_here, self._connection() as conn, conn.begin():
                    if self._sqlite:
                        # SQLAlchemy leaves BEGIN to the driver, which was told not to.
                        # A writer takes the write lock now, not at its first write.
                        driver = conn.connection.driver_connection
                        assert driver is not None  # a live connection from the pool
                        driver.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                    result = work(conn)
                if write and self._checkpointer is not None:
                    self._checkpointer.wrote()
                return result
            # BEGIN goes to the driver directly, so its errors come unwrapped.
            except (OperationalError, sqlite3.OperationalError) as exc:
                if not is_busy(exc):
                    raise translate(exc) from exc
                if time.monotonic() >= deadline:
                    raise errors.DatabaseBusy() from exc
                log.debug("database busy; retrying in %.3fs", delay)
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
            except IntegrityError:
                raise  # the caller decides (see write_once_more_on_conflict)
            except SQLAlchemyError as exc:
                raise translate(exc) from exc
            except _UNSENDABLE as exc:  # raised by the driver as it is, not wrapped
                raise translate(exc) from exc

    def integrity_check(self) -> list[str]:
        """SQLite's own consistency check: `["ok"]` when the file is sound."""
        if self.engine.dialect.name != "sqlite":
            return ["ok"]
        return self.read(
            lambda conn: [row[0] for row in conn.exec_driver_sql("PRAGMA integrity_check")]
        )

    def _sqlite_path(self, what: str) -> Path:
        if not self._sqlite:
            raise errors.DatabaseError(
                f"{what} works on SQLite; for PostgreSQL use its own tools (pg_dump, ...)"
            )
        return Path(str(self.engine.url.database)).expanduser()

    def backup(self, target: Path) -> int:
        """A consistent copy of the live database at `target` (SQLite's online backup:
        writers go on meanwhile), written under a temporary name and renamed into place.
        Returns its size in bytes."""
        source_path = self._sqlite_path("backup")
        target = Path(target)
        if target.exists():
            raise errors.DatabaseError(f"{target} exists already; choose a new name")
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.unlink(missing_ok=True)
        source = sqlite3.connect(source_path, timeout=self.busy_deadline_s)
        try:
            copy = sqlite3.connect(temporary)
            try:
                source.backup(copy, pages=1024)
                copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            finally:
                copy.close()
        except sqlite3.Error as exc:
            temporary.unlink(missing_ok=True)
            raise errors.DatabaseError(f"backup to {target} failed: {exc}") from None
        finally:
            source.close()
        os.replace(temporary, target)
        return target.stat().st_size

    def checkpoint(self) -> tuple[int, int, int]:
        """Fold the write-ahead log into the database file and truncate it:
        (busy, log pages, pages checkpointed), as SQLite reports them."""
        self._sqlite_path("checkpoint")
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
        return (int(row[0]), int(row[1]), int(row[2]))

    def write(self, work: Callable[[Connection], T]) -> T:
        return self.transaction(work, write=True)

    def read(self, work: Callable[[Connection], T]) -> T:
        return self.transaction(work, write=False)

    def write_once_more_on_conflict(self, work: Callable[[Connection], T]) -> T:
        """For inserts with a unique key: if a concurrent writer (PostgreSQL, where writers
        do not queue on one lock) committed the same key first, run again to see theirs."""
        try:
            return self.write(work)
        except IntegrityError:
            try:
                return self.write(work)
            except IntegrityError as exc:
                raise translate(exc) from exc
