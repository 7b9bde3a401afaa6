"""Ownership and the gallery (DESIGN section 13): every job and download records its
owner (the key that asked for it; NULL for the admin's: the inbox's, the CLI's, an open
server's), fair share groups queued jobs by owner, and each image of a succeeded job is
a gallery row, with its privacy and tags.

Jobs and downloads asked for with a key of the database before this revision get that
key as their owner (by the key's name, which they recorded); the others are the admin's.
The gallery is filled from the succeeded jobs whose images are still kept.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None
_QUEUED_ONLY = sa.text("status = 'queued'")
_OWNED = sa.text("owner IS NOT NULL")
_BY_KEY_NAME = "(SELECT api_keys.id FROM api_keys WHERE api_keys.name = {table}.client)"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("owner", sa.String(length=80), nullable=True))
    op.add_column("downloads", sa.Column("owner", sa.String(length=80), nullable=True))
    op.execute(
        f"UPDATE jobs SET owner = {_BY_KEY_NAME.format(table='jobs')} "
        "WHERE source IN ('api', 'openai') AND client IS NOT NULL"
    )
    op.execute(
        f"UPDATE downloads SET owner = {_BY_KEY_NAME.format(table='downloads')} "
        "WHERE client IS NOT NULL"
    )
    op.drop_index("ix_jobs_fair", table_name="jobs")
    op.create_index(
        "ix_jobs_fair",
        "jobs",
        ["priority", "owner", "seq", "not_before"],
        sqlite_where=_QUEUED_ONLY,
        postgresql_where=_QUEUED_ONLY,
    )
    op.create_index(
        "ix_jobs_owner", "jobs", ["owner", "seq"], sqlite_where=_OWNED, postgresql_where=_OWNED
    )
    op.execute("DELETE FROM served")  # its owners were key names; now they are owners
    gallery = op.create_table(
        "gallery",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("file", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=80), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=True),
        sa.Column("public_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gallery")),
    )
    op.create_index("ix_gallery_seq", "gallery", ["seq", "index"])
    op.create_index("ix_gallery_job_id", "gallery", ["job_id"])
    op.create_index("ix_gallery_owner_seq", "gallery", ["owner", "seq"])
    published = sa.text("public_until IS NOT NULL")
    op.create_index(
        "ix_gallery_public_until",
        "gallery",
        ["public_until"],
        sqlite_where=published,
        postgresql_where=published,
    )
    op.create_table(
        "gallery_tags",
        sa.Column("image_id", sa.String(length=40), nullable=False),
        sa.Column("tag", sa.String(length=50), nullable=False),
        sa.PrimaryKeyConstraint("image_id", "tag", name=op.f("pk_gallery_tags")),
    )
    op.create_index("ix_gallery_tags_tag", "gallery_tags", ["tag"])
    rows = [
        image
        for job in op.get_bind().execute(
            sa.text(
                "SELECT id, seq, owner, finished_at, model, spec, result FROM jobs "
                "WHERE status = 'succeeded' AND images_expired_at IS NULL"
            ).columns(finished_at=sa.DateTime(timezone=True))
        )
        for image in _images(job)
    ]
    if rows:
        op.bulk_insert(gallery, rows)


def _loaded(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _images(job: Any) -> list[dict[str, Any]]:
    spec, result = _loaded(job.spec) or {}, _loaded(job.result) or {}
    files = [
        str(image["file"])
        for image in result.get("images") or []
        if isinstance(image, dict) and "file" in image
    ]
    return [
        {
            "id": file.removesuffix(".png"),
            "seq": job.seq,
            "job_id": job.id,
            "index": int(file.removesuffix(".png").rpartition("-")[2]),
            "file": file,
            "owner": job.owner,
            "created_at": job.finished_at,
            "prompt": str(spec.get("prompt") or ""),
            "model": job.model,
            "public_until": None,
        }
        for file in files
    ]


def downgrade() -> None:
    op.drop_table("gallery_tags")
    op.drop_table("gallery")
    op.drop_index("ix_jobs_owner", table_name="jobs")
    op.drop_index("ix_jobs_fair", table_name="jobs")
    with op.batch_alter_table("downloads") as batch:
        batch.drop_column("owner")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("owner")
    op.create_index(
        "ix_jobs_fair",
        "jobs",
        ["priority", "client", "seq", "not_before"],
        sqlite_where=_QUEUED_ONLY,
        postgresql_where=_QUEUED_ONLY,
    )
