"""Shared fixtures: real SQLite files, migrated by Alembic, in pytest's tmp directories."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from alice_spool import migrate
from alice_spool.database import Database
from alice_spool.spec import JobSpec, parse_spec
from alice_spool.store import Store

# Tests never reach the network: the Hugging Face Hub client stays offline.
os.environ["HF_HUB_OFFLINE"] = "1"

# Several workers on few cores (`make test` runs two on two): torch keeps to one thread
# in each test process and in every server and runner the tests start (they inherit
# this), or OpenMP's spinning threads oversubscribe the cores and slow all of them
# several times over. Set before anything imports torch.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# Set ALICE_TEST_DATABASE_URL (e.g. postgresql+psycopg://user@127.0.0.1/spool) to run the
# store's tests on another database server; each test starts from an empty schema there.
OTHER_DATABASE = os.environ.get("ALICE_TEST_DATABASE_URL")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if any("gpu" in item.keywords for item in items):
        import torch  # only when GPU tests were collected

        if not torch.cuda.is_available():
            skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
            for item in items:
                if "gpu" in item.keywords:
                    item.add_marker(skip_gpu)
    if OTHER_DATABASE:
        skip = pytest.mark.skip(reason="SQLite-specific, and ALICE_TEST_DATABASE_URL is set")
        for item in items:
            if "sqlite_only" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return OTHER_DATABASE or f"sqlite:///{tmp_path / 'alice.db'}"


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = Database.open(db_url)
    if OTHER_DATABASE:
        migrate.downgrade(db, "base")
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
