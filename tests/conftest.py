"""Shared fixtures: real SQLite files, migrated by Alembic, in pytest's tmp directories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from alice_spool import migrate
from alice_spool.database import Database
from alice_spool.spec import JobSpec, parse_spec
from alice_spool.store import Store


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'alice.db'}"


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = Database.open(db_url)
    migrate.upgrade(db)
    yield db
    db.close()


@pytest.fixture
def store(database: Database) -> Store:
    return Store(database, max_queue=10_000, max_attempts=3)


@pytest.fixture
def make_spec() -> Callable[..., JobSpec]:
    def make(prompt: str = "a lighthouse at dusk", **fields: Any) -> JobSpec:
        return parse_spec({"prompt": prompt, **fields})

    return make
