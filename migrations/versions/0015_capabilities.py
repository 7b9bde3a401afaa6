"""Capabilities (DESIGN sections 7 and 13): an image URL carries a secret of its own, an
idempotency key belongs to its owner, and a web session remembers the key it was made of.

- `jobs.image_secret`: 128 random bits made with each job, never derived from its id, that
  its image URLs carry (`/images/<secret>/<job id>-<i>.png`). Jobs from before this revision
  have none: their links keep the old form, which only the server-made id opens.
- `uq_jobs_idempotency_key` is unique per owner (`COALESCE(owner, '')`, the admin's being
  NULL): another owner's identical key neither conflicts nor tells that it exists.
- `sessions.key_sha256`: the SHA-256 of the key a session was opened with, so every request
  made with the session can check that the key is still the one configured or stored.
  Sessions from before this revision that have no stored key behind them end.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_KEYED = sa.text("idempotency_key IS NOT NULL")


def upgrade() -> None:
    op.add_column("jobs", sa.Column("image_secret", sa.String(length=64), nullable=True))
    op.drop_index("uq_jobs_idempotency_key", table_name="jobs")
    op.create_index(
        "uq_jobs_idempotency_key",
        "jobs",
        [sa.text("COALESCE(owner, '')"), "idempotency_key"],
        unique=True,
        sqlite_where=_KEYED,
        postgresql_where=_KEYED,
    )
    op.add_column("sessions", sa.Column("key_sha256", sa.String(length=64), nullable=True))
    # A configured key's session cannot be checked against a key it did not record.
    op.execute("DELETE FROM sessions WHERE key_id IS NULL")


def downgrade() -> None:
    # Keys that two owners share cannot go back under one unique index: the later jobs'
    # keys are cleared (their jobs stay; only their idempotency is lost).
    op.execute(
        "UPDATE jobs SET idempotency_key = NULL WHERE idempotency_key IS NOT NULL AND seq NOT IN "
        "(SELECT MIN(seq) FROM jobs WHERE idempotency_key IS NOT NULL GROUP BY idempotency_key)"
    )
    op.drop_index("uq_jobs_idempotency_key", table_name="jobs")
    op.create_index(
        "uq_jobs_idempotency_key",
        "jobs",
        ["idempotency_key"],
        unique=True,
        sqlite_where=_KEYED,
        postgresql_where=_KEYED,
    )
    op.execute("ALTER TABLE jobs DROP COLUMN image_secret")
    op.execute("ALTER TABLE sessions DROP COLUMN key_sha256")
