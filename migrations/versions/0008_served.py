"""Served: when each owner's jobs were last taken, and an index of queued jobs by
priority and owner, for the claim's fair share between owners at equal priority
(DESIGN section 13).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None
_QUEUED_ONLY = sa.text("status = 'queued'")


def upgrade() -> None:
    op.create_table(
        "served",
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("last_served_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner", name=op.f("pk_served")),
    )
    op.create_index(
        "ix_jobs_fair",
        "jobs",
        ["priority", "client", "seq", "not_before"],
        sqlite_where=_QUEUED_ONLY,
        postgresql_where=_QUEUED_ONLY,
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_fair", table_name="jobs")
    op.drop_table("served")
