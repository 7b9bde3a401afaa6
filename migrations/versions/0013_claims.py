"""Claims (DESIGN section 15): how many times a job was claimed, a number that only grows.

A job's `attempts` is not one: a graceful release gives an attempt back and a retry starts
again from zero. `claims` fences the outbox: a runner's files carry its claim, and a
directory written under a later claim is never replaced or removed by an earlier one (a
runner whose lease lapsed while another took the job over).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("claims", sa.Integer(), nullable=False, server_default="0"))
    # Every attempt counted so far was a claim: a lower bound, which is all a fence needs.
    op.execute("UPDATE jobs SET claims = attempts")


def downgrade() -> None:
    # Both databases drop a plain column in place (SQLite since 3.35); a batch rebuild
    # would lose the indexes' sort order (see 0011).
    op.execute("ALTER TABLE jobs DROP COLUMN claims")
