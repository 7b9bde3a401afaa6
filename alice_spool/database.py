"""The store's connection setup: engine, SQLite pragmas, and short transactions.

On SQLite the database runs in WAL mode (readers never wait for the writer) with
`synchronous=FULL` and a busy timeout, and writers take the write lock up front with
`BEGIN IMMEDIATE`: two writers then queue on the lock instead of failing with
`database is locked` when one tries to upgrade a read lock. A transaction that still
meets a busy database is retried until a deadline, then reported as `DatabaseBusy`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from . import errors

log = logging.getLogger(__name__)
T = TypeVar("T")

_WRITE = "alice_write"  # execution option: this connection's transaction writes


def _sqlite_on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    # Take transaction control from the driver; the "begin" hook below issues BEGIN.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        mode = cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            log.warning("SQLite refused WAL mode (journal_mode=%s); concurrency will suffer", mode)
        # FULL: a commit is on disk before enqueue returns, so an accepted job survives
        # power loss too, not only a crash of the process.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    write = connection.get_execution_options().get(_WRITE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def create_db_engine(url: str, *, busy_timeout_s: float = 30.0) -> Engine:
    """An engine with the durability and locking settings the daemon uses."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError or ValueError
        raise errors.DatabaseError(f"invalid database URL {url!r}: {exc}") from None
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
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
    )
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def is_busy(exc: OperationalError) -> bool:
    code = getattr(exc.orig, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "database is locked" in str(
        exc.orig
    )


def translate(exc: SQLAlchemyError) -> errors.SpoolError:
    """A driver error as the `SpoolError` a user can act on."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    if "no such table" in text or ("relation" in text and "does not exist" in text):
        return errors.DatabaseNotMigrated(
            f"the database has no job table ({text}): run `alice-spool db upgrade`"
        )
    return errors.DatabaseError(f"database error: {text}")


class Database:
    """An engine plus the one way the store runs its transactions."""

    def __init__(self, engine: Engine, *, busy_deadline_s: float = 60.0) -> None:
        self.engine = engine
        self.busy_deadline_s = busy_deadline_s

    @classmethod
    def open(cls, url: str, *, busy_timeout_s: float = 30.0, busy_deadline_s: float = 60.0):
        return cls(
            create_db_engine(url, busy_timeout_s=busy_timeout_s), busy_deadline_s=busy_deadline_s
        )

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    def transaction(self, work: Callable[[Connection], T], *, write: bool) -> T:
        """Run `work` in one transaction; retry while SQLite reports the database busy."""
        delay = 0.01
        deadline = time.monotonic() + self.busy_deadline_s
        while True:
            try:
                with self.engine.connect() as conn:
                    if write:
                        conn.execution_options(**{_WRITE: True})
                    with conn.begin():
                        return work(conn)
            except OperationalError as exc:
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

    def integrity_check(self) -> list[str]:
        """SQLite's own consistency check: `["ok"]` when the file is sound."""
        if self.engine.dialect.name != "sqlite":
            return ["ok"]
        return self.read(
            lambda conn: [row[0] for row in conn.exec_driver_sql("PRAGMA integrity_check")]
        )

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
