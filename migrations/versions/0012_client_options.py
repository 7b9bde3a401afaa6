"""Client options (DESIGN section 14): a dialect's per-client setting, such as A1111's
`sd_model_checkpoint`, kept in the database instead of one API process's memory.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "client_options",
        sa.Column("owner", sa.String(length=80), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "name", name=op.f("pk_client_options")),
    )


def downgrade() -> None:
    op.drop_table("client_options")
