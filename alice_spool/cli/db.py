"""`alice-spool db`: create, upgrade and check the job database."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import migrate
from ..masking import masked_url
from .app import EXIT_JOBS_FAILED, App, SpoolGroup, cli, emit_json, json_option, pass_app


@cli.group(cls=SpoolGroup)
def db() -> None:
    """Create, upgrade and check the job database."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@json_option
@pass_app
def db_upgrade(app: App, revision: str, as_json: bool) -> None:
    """Apply the schema migrations (creates the database if it does not exist)."""
    before = migrate.schema_state(app.database)
    after = migrate.upgrade(app.database, revision)
    where = masked_url(app.database.url)
    if as_json:
        emit_json({"database": where, "from": before.current, **after.to_dict()})
    elif before.current == after.current:
        click.echo(f"{where}: already at revision {after.current}")
    else:
        click.echo(f"{where}: {before.current or 'empty'} -> {after.current}")


@db.command("current")
@json_option
@pass_app
def db_current(app: App, as_json: bool) -> None:
    """Show the database's schema revision and the one this version expects."""
    state = migrate.schema_state(app.database)
    if as_json:
        emit_json({"database": masked_url(app.database.url), **state.to_dict()})
        return
    where = "up to date" if state.up_to_date else f"expected {state.head}"
    click.echo(f"{masked_url(app.database.url)}: revision {state.current or 'none'} ({where})")


@db.command("check")
@json_option
@pass_app
def db_check(app: App, as_json: bool) -> None:
    """Check the revision, the schema against the code, and the file's integrity.

    Exits 1 if anything is off."""
    state = migrate.schema_state(app.database)
    drift = migrate.schema_drift(app.database) if state.current else []
    integrity = app.database.integrity_check()
    checks = {
        "revision": state.up_to_date,
        "schema": state.current is not None and not drift,
        "integrity": integrity == ["ok"],
    }
    if as_json:
        emit_json({**state.to_dict(), "drift": drift, "integrity": integrity, "checks": checks})
    else:
        click.echo(
            f"revision   {'ok' if checks['revision'] else 'FAIL'}  "
            f"({state.current or 'none'}, expected {state.head})"
        )
        click.echo(f"schema     {'ok' if checks['schema'] else 'FAIL'}")
        for diff in drift:
            click.echo(f"           {diff}")
        click.echo(f"integrity  {'ok' if checks['integrity'] else 'FAIL'}")
        if integrity != ["ok"]:
            for line in integrity[:20]:
                click.echo(f"           {line}")
    if not all(checks.values()):
        sys.exit(EXIT_JOBS_FAILED)


@db.command("backup")
@click.argument("target", type=click.Path(dir_okay=False))
@json_option
@pass_app
def db_backup(app: App, target: str, as_json: bool) -> None:
    """Copy the live SQLite database to TARGET (a new file), consistently, while the
    daemon keeps running."""
    size = app.database.backup(Path(target))
    if as_json:
        emit_json({"backup": target, "bytes": size})
    else:
        click.echo(f"{masked_url(app.database.url)} -> {target} ({size} bytes)")


@db.command("checkpoint")
@json_option
@pass_app
def db_checkpoint(app: App, as_json: bool) -> None:
    """Fold SQLite's write-ahead log into the database file and truncate the log."""
    busy, log_pages, done = app.database.checkpoint()
    if as_json:
        emit_json({"busy": bool(busy), "log_pages": log_pages, "checkpointed": done})
    else:
        click.echo(f"checkpointed {done} of {log_pages} log pages" + (" (busy)" if busy else ""))
