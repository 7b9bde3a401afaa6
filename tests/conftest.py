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

# The database-touching tests (the modules marked `both_databases`) run twice: on a
# SQLite file, and on a real PostgreSQL server that the tests start themselves
# (tests/support/postgres.py: Debian's postgresql package, initdb into a temporary
# directory, a loopback port), one per test process. ALICE_TEST_DATABASE_URL names another
# PostgreSQL server to use instead (its user may create databases).
EXTERNAL_POSTGRES = os.environ.get("ALICE_TEST_DATABASE_URL")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`db_url` (and `database`, `store` on it) is `sqlite` everywhere, and also
    `postgresql` in the `both_databases` modules, except for tests about SQLite itself."""
    if "db_url" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("both_databases") is None:
        return
    kinds = ["sqlite"]
    if metafunc.definition.get_closest_marker("sqlite_only") is None:
        kinds.append("postgresql")
    metafunc.parametrize("db_url", kinds, indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The files with multi-process tests first, so that the workers (`make test`: one
    # file each at a time, in this order, --no-loadscope-reorder) end on the short ones
    # rather than on a minute-long test while the others wait.
    slow_files = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: otherwise as found
    if any("gpu" in item.keywords for item in items):
        import torch  # only when GPU tests were collected

        if not torch.cuda.is_available():
            skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
            for item in items:
                if "gpu" in item.keywords:
                    item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """The URL of a PostgreSQL server's `postgres` database, started for this process."""
    if EXTERNAL_POSTGRES:
        yield EXTERNAL_POSTGRES
        return
    from tests.support.postgres import binaries, postgres_server

    if binaries() is None:
        pytest.skip("PostgreSQL is not installed (Debian: postgresql); its variants are skipped")
    with postgres_server() as url:
        yield url


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture(scope="session")
def postgres_database(postgres_server_url: str) -> str:
    """This process's database on the server, migrated to head once."""
    from tests.support.postgres import create_database

    url = create_database(postgres_server_url, f"spool_{_worker()}")
    db = Database.open(url)
    try:
        migrate.upgrade(db)
    finally:
        db.close()
    return url


@pytest.fixture
def fresh_postgres(postgres_server_url: str) -> str:
    """A new, empty PostgreSQL database (for tests that migrate it themselves)."""
    from tests.support.postgres import create_database

    return create_database(postgres_server_url, f"spool_{_worker()}_fresh")


def _emptied(url: str) -> str:
    """Every table of the migrated database emptied, as a new database would be."""
    import sqlalchemy as sa

    from alice_spool.store.tables import Base

    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()
    return url


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if getattr(request, "param", "sqlite") == "postgresql":
        return _emptied(request.getfixturevalue("postgres_database"))
    return f"sqlite:///{tmp_path / 'alice.db'}"


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = Database.open(db_url)
    migrate.upgrade(db)
    yield db
    db.close()


@pytest.fixture
def store(database: Database) -> Iterator[Store]:
    store = Store(database, max_queue=10_000, max_attempts=3)
    yield store
    store.close()  # its watcher too


@pytest.fixture
def make_spec() -> Callable[..., JobSpec]:
    def make(prompt: str = "a lighthouse at dusk", **fields: Any) -> JobSpec:
        return parse_spec({"prompt": prompt, **fields})

    return make
