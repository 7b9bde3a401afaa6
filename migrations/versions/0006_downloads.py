"""Downloads: model downloads as durable rows (DESIGN section 11).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "downloads",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("reference", sa.JSON(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("client", sa.String(length=255), nullable=True),
        sa.Column("bytes_done", sa.BigInteger(), nullable=False),
        sa.Column("bytes_total", sa.BigInteger(), nullable=True),
        sa.Column("speed_bps", sa.Float(), nullable=True),
        sa.Column("model", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'downloading', 'verifying', 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_downloads_status"),
        ),
        sa.CheckConstraint(
            "source IN ('huggingface', 'civitai', 'url')", name=op.f("ck_downloads_source")
        ),
        sa.CheckConstraint(
            "kind IS NULL OR kind IN ('diffusers', 'checkpoint', 'lora')",
            name=op.f("ck_downloads_kind"),
        ),
        sa.CheckConstraint("bytes_done >= 0", name=op.f("ck_downloads_bytes_done")),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_downloads")),
        sa.UniqueConstraint("id", name=op.f("uq_downloads_id")),
    )
    op.create_index("ix_downloads_status_seq", "downloads", ["status", "seq"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_downloads_status_seq", table_name="downloads")
    op.drop_table("downloads")
