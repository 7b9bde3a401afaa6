"""Alembic environment for the job database. It imports only the models' metadata.

`alice-spool db upgrade` hands over an open connection (with the store's SQLite settings
and its write lock taken). Run by hand, `alembic` needs the URL:
`alembic -x db_url=sqlite:///var/alice.db upgrade head`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from alice_spool.store.tables import Base, include_in_comparison

config = context.config
target_metadata = Base.metadata
OPTIONS = {
    "target_metadata": target_metadata,
    "render_as_batch": True,  # SQLite alters tables by copying them
    "compare_type": True,
    "include_object": include_in_comparison,
    "transactional_ddl": True,  # SQLite runs DDL in transactions: all or nothing
}


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("db_url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit(
            "no database URL: use `alice-spool db upgrade`, or `alembic -x db_url=URL ...`"
        )
    return url


def _run(connection: Connection) -> None:
    context.configure(connection=connection, **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    context.configure(url=_url(), literal_binds=True, **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)


if context.is_offline_mode():
    run_offline()
else:
    run_online()
