"""Batchable jobs: `batch_key` and `images` columns and the index the runner's claim uses.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

Jobs queued before this revision get no batch key: each runs alone, as it would have.
Their image count is read from their stored request.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_QUEUED_ONLY = sa.text("status = 'queued'")


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch_key", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("images", sa.Integer(), server_default="1", nullable=False))
        batch_op.create_index(
            "ix_jobs_compatible",
            ["batch_key", sa.text("priority DESC"), "seq"],
            sqlite_where=_QUEUED_ONLY,
            postgresql_where=_QUEUED_ONLY,
        )
    connection = op.get_bind()
    jobs = sa.table(
        "jobs", sa.column("seq", sa.Integer), sa.column("spec"), sa.column("images", sa.Integer)
    )
    counts: dict[int, int] = {}
    for seq, spec in connection.execute(sa.select(jobs.c.seq, jobs.c.spec)):
        stored = json.loads(spec) if isinstance(spec, str) else spec
        n = int((stored or {}).get("n") or 1)
        if n != 1:
            counts[seq] = n
    for seq, n in counts.items():
        connection.execute(sa.update(jobs).where(jobs.c.seq == seq).values(images=n))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_compatible")
        batch_op.drop_column("images")
        batch_op.drop_column("batch_key")
