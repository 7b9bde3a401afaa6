"""Which database errors are the request's fault and which the database's, on a real
SQLite file and PostgreSQL server: a statement too large for the database's limits, or a
value out of its range, is `invalid_parameters` (a 400; the node stays in service); a
database that cannot be written is a `database_error` (the node is degraded)."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from sqlalchemy import Connection

from alice_spool import errors
from alice_spool.database import is_input_error, translate
from alice_spool.store import Store

pytestmark = pytest.mark.both_databases  # SQLite and PostgreSQL (tests/conftest.py)


def test_a_statement_past_the_database_s_limits_is_the_request_s_fault(store: Store) -> None:
    if store.db.engine.dialect.name == "sqlite":
        # What 1,500 tag filters made: past SQLite's expression depth (1,000).
        sql = "SELECT 1 WHERE " + " AND ".join(["1 IN (SELECT 1)"] * 1500)
    else:
        sql = "SELECT 1 / (SELECT count(*) FROM jobs)"  # 22012 division_by_zero, a data error
    with pytest.raises(errors.QueryRefused) as refused:
        store.db.read(lambda conn: conn.exec_driver_sql(sql).all())
    assert refused.value.code == "invalid_parameters"
    assert not isinstance(refused.value, errors.DatabaseError)
    echo = "SELECT ?" if store.db.engine.dialect.name == "sqlite" else "SELECT %s::text"
    for unsendable in ("\ud800", "a\x00b"):  # a lone surrogate; NUL (PostgreSQL's text)
        if unsendable == "a\x00b" and store.db.engine.dialect.name == "sqlite":
            continue  # SQLite stores it

        def send(conn: Connection, value: str = unsendable) -> Any:
            return conn.exec_driver_sql(echo, (value,)).all()

        with pytest.raises(errors.QueryRefused):
            store.db.read(send)


def test_a_database_that_cannot_be_written_is_a_fault(store: Store) -> None:
    def write_read_only(conn: Connection) -> None:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA query_only = ON")  # as a read-only file answers
        else:
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")  # 25006: a read-only server
        conn.exec_driver_sql("DELETE FROM jobs")

    try:
        with pytest.raises(errors.DatabaseError) as fault:
            store.db.write(write_read_only)
    finally:
        store.db.engine.dispose()  # no connection keeps query_only
    assert type(fault.value) is errors.DatabaseError and fault.value.code == "database_error"


class _Driver(Exception):
    """A driver's error as psycopg raises it: its SQLSTATE."""

    def __init__(self, sqlstate: str | None, text: str = "") -> None:
        super().__init__(text)
        self.sqlstate = sqlstate


class _Wrapped(Exception):
    """A driver's error as SQLAlchemy wraps it."""

    def __init__(self, orig: BaseException) -> None:
        super().__init__(str(orig))
        self.orig = orig


def _sqlite(code: int, text: str) -> sqlite3.Error:
    error = sqlite3.OperationalError(text)
    error.sqlite_errorcode = code
    return error


@pytest.mark.parametrize(
    ("error", "input_caused"),
    [
        (_Driver("22003", "integer out of range"), True),
        (_Driver("22021", "invalid byte sequence for encoding"), True),
        (_Driver("54001", "stack depth limit exceeded"), True),
        (_Driver("54023", "cannot pass more than 100 arguments to a function"), True),
        (_Driver("53100", "could not extend file: No space left on device"), False),
        (_Driver("53200", "out of memory"), False),
        (_Driver("08006", "connection failure"), False),
        (_Driver("57P01", "terminating connection due to administrator command"), False),
        (_Driver("XX001", "invalid page in block 4 of relation base/1/2"), False),
        (_Driver("25006", "cannot execute DELETE in a read-only transaction"), False),
        (_Driver("40P01", "deadlock detected"), False),
        (_Driver(None, "connection refused"), False),
        (_sqlite(sqlite3.SQLITE_ERROR, "Expression tree is too large (maximum depth 1000)"), True),
        (_sqlite(sqlite3.SQLITE_ERROR, "too many SQL variables"), True),
        (_sqlite(sqlite3.SQLITE_ERROR, "LIKE or GLOB pattern too complex"), True),
        (_sqlite(sqlite3.SQLITE_TOOBIG, "string or blob too big"), True),
        (_sqlite(sqlite3.SQLITE_FULL, "database or disk is full"), False),
        (_sqlite(sqlite3.SQLITE_READONLY, "attempt to write a readonly database"), False),
        (_sqlite(sqlite3.SQLITE_CORRUPT, "database disk image is malformed"), False),
        (_sqlite(sqlite3.SQLITE_IOERR, "disk I/O error: too many open files"), False),
        (_sqlite(sqlite3.SQLITE_CANTOPEN, "unable to open database file"), False),
        (_sqlite(sqlite3.SQLITE_BUSY, "database is locked"), False),
        (_sqlite(sqlite3.SQLITE_ERROR, "no such table: jobs"), False),
    ],
    ids=lambda value: str(value)[:40] if not isinstance(value, bool) else str(value),
)
def test_each_driver_error_is_the_request_s_or_the_database_s(
    error: Any, input_caused: bool
) -> None:
    assert is_input_error(_Wrapped(error)) is input_caused
    translated = translate(_Wrapped(error))
    assert isinstance(translated, errors.QueryRefused) is input_caused
    assert isinstance(translated, errors.DatabaseError) is not input_caused
