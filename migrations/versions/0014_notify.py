"""Wake-ups (DESIGN section 15): on PostgreSQL, triggers send a notification on the
channel `alice_spool` whenever a job is queued (payload `q`) and whenever a job's status
or progress changes (`j:<id>`), and a download's (`d:<id>`), in the transaction that
makes the change: idle runners and waiting requests on every host wake at its commit,
whichever process, version or tool wrote it. SQLite needs none: each process watches the
file's `data_version`.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_FUNCTIONS = {
    "alice_spool_job_changed": """
        BEGIN
            IF NEW.status = 'queued'
               AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM 'queued') THEN
                PERFORM pg_notify('alice_spool', 'q');
            END IF;
            IF TG_OP = 'UPDATE' THEN
                PERFORM pg_notify('alice_spool', 'j:' || NEW.id);
            END IF;
            RETURN NULL;
        END
    """,
    "alice_spool_download_changed": """
        BEGIN
            PERFORM pg_notify('alice_spool', 'd:' || NEW.id);
            RETURN NULL;
        END
    """,
}

_TRIGGERS = {
    # Renewing a lease changes neither: no notification for a heartbeat.
    "jobs": (
        "alice_spool_job_changed",
        "AFTER INSERT OR UPDATE OF status, progress_step, progress_total ON jobs "
        "FOR EACH ROW EXECUTE FUNCTION alice_spool_job_changed()",
    ),
    "downloads": (
        "alice_spool_download_changed",
        "AFTER UPDATE OF status, bytes_done, bytes_total ON downloads "
        "FOR EACH ROW EXECUTE FUNCTION alice_spool_download_changed()",
    ),
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, body in _FUNCTIONS.items():
        op.execute(
            f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $${body}$$"
        )
    for name, definition in _TRIGGERS.values():
        op.execute(f"CREATE TRIGGER {name} {definition}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, (name, _definition) in _TRIGGERS.items():
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
    for name in _FUNCTIONS:
        op.execute(f"DROP FUNCTION IF EXISTS {name}()")
