"""Counters: totals that only grow (jobs finished by state, images, wait and run time
histograms), for Prometheus.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "counters",
        sa.Column("name", sa.String(length=96), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_counters")),
    )
    # The jobs already finished are counted from the start (their wait and run times
    # are not: the histograms begin now).
    op.execute(
        "INSERT INTO counters (name, value) "
        "SELECT 'jobs_finished:' || status, COUNT(*) FROM jobs "
        "WHERE status IN ('succeeded', 'failed', 'cancelled') GROUP BY status"
    )
    op.execute(
        "INSERT INTO counters (name, value) "
        "SELECT 'images', SUM(images) FROM jobs WHERE status = 'succeeded' HAVING COUNT(*) > 0"
    )


def downgrade() -> None:
    op.drop_table("counters")
