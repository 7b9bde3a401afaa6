"""Schema migrations driven from code: upgrade, current revision, drift check.

Alembic runs on a connection from the store's own engine, inside one write transaction
(`BEGIN IMMEDIATE` on SQLite): two processes that upgrade the same fresh database at once
queue on the lock, and the second finds nothing left to do.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect

from . import errors
from .database import Database
from .store.tables import Base, include_in_comparison

log = logging.getLogger(__name__)


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("alice_spool.migrations")))
    return config


@functools.cache
def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise errors.DatabaseError(f"the migrations have {len(heads)} heads; expected one")
    return heads[0]


@dataclass(frozen=True)
class SchemaState:
    current: str | None  # the database's revision; None for a database never migrated
    head: str  # the revision this version of alice-spool expects
    has_tables: bool

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    def to_dict(self) -> dict[str, object]:
        return {"current": self.current, "head": self.head, "up_to_date": self.up_to_date}


def schema_state(db: Database) -> SchemaState:
    def work(conn: Connection) -> SchemaState:
        current = MigrationContext.configure(conn).get_current_revision()
        tables = [t for t in inspect(conn).get_table_names() if t != "alembic_version"]
        return SchemaState(current, head_revision(), bool(tables))

    return db.read(work)


def upgrade(db: Database, revision: str = "head") -> SchemaState:
    """Migrate the database up to `revision` (all of it, or none of it)."""
    _run(db, lambda config: command.upgrade(config, revision))
    return schema_state(db)


def downgrade(db: Database, revision: str) -> SchemaState:
    _run(db, lambda config: command.downgrade(config, revision))
    return schema_state(db)


def _run(db: Database, action: Callable[..., Any]) -> None:
    def work(conn: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = conn
        action(config)

    try:
        db.write(work)
    except errors.SpoolError:
        raise
    except Exception as exc:  # alembic reports unknown revisions and the like this way
        raise errors.DatabaseError(f"migration failed: {exc}") from exc


def schema_drift(db: Database) -> list[str]:
    """Differences between the database's schema and the models (empty when they match)."""

    def work(conn: Connection) -> list[str]:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "target_metadata": Base.metadata,
                "include_object": include_in_comparison,
            },
        )
        # Alembic and SQLAlchemy still warn about the expression indexes they were told
        # to skip (SQLite reflects none of them; the tests compare their SQL instead).
        quiet = logging.getLogger("alembic.ddl.impl")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*expression-based index")
                return [str(diff) for diff in compare_metadata(context, Base.metadata)]
        finally:
            quiet.setLevel(level)

    return db.read(work)


def ensure_current(db: Database, *, create: bool = True) -> SchemaState:
    """Make sure the schema is the one this code expects.

    A brand-new, empty database is created on the spot (when `create`); a database at an
    older revision is left alone and reported, since upgrading is the operator's call.
    """
    state = schema_state(db)
    if state.up_to_date:
        return state
    if state.current is None and not state.has_tables and create:
        log.info("creating the job database at %s", db.url)
        return upgrade(db)
    if state.current is None:
        raise errors.DatabaseNotMigrated(
            f"the database at {db.url} has tables but no migration record; "
            "it was not made by alice-spool"
            if state.has_tables
            else f"the database at {db.url} is empty: run `alice-spool db upgrade`"
        )
    raise errors.DatabaseNotMigrated(
        f"the database at {db.url} is at revision {state.current}, this version expects "
        f"{state.head}: run `alice-spool db upgrade`"
    )
