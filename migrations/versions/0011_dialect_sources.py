"""Dialect sources (DESIGN section 14): a job may come from the AUTOMATIC1111 API, the
AbleRefusal API, the GTX 1060 API or the REST plan's API, and records which as its
`source`. The jobs table's check on `source` is widened.

SQLite cannot change a check: the table is made again under the same name with the
same columns, every row copied, then its indexes made again. The statements are those
of this revision, written out (a batch rebuild from reflection would lose the indexes'
`DESC` and reorder the table's constraints).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None
_BEFORE = ("api", "openai", "inbox", "cli")
_NOW = (*_BEFORE, "a1111", "ablerefusal", "gtx1060", "restplan")

_TABLE = """CREATE TABLE jobs (
    seq INTEGER NOT NULL,
    id VARCHAR(32) NOT NULL,
    idempotency_key VARCHAR(255),
    request_hash VARCHAR(64),
    batch_id VARCHAR(32),
    source VARCHAR(16) NOT NULL,
    client VARCHAR(255),
    status VARCHAR(16) NOT NULL,
    priority INTEGER NOT NULL,
    not_before DATETIME,
    created_at DATETIME NOT NULL,
    started_at DATETIME,
    finished_at DATETIME,
    attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    lease_owner VARCHAR(128),
    lease_expires_at DATETIME,
    cancel_requested BOOLEAN NOT NULL,
    progress_step INTEGER,
    progress_total INTEGER,
    model VARCHAR(255),
    spec JSON NOT NULL,
    result JSON,
    error_code VARCHAR(64),
    error_message TEXT,
    batch_key VARCHAR(32),
    images INTEGER DEFAULT '1' NOT NULL,
    images_expired_at DATETIME,
    owner VARCHAR(80),
    CONSTRAINT pk_jobs PRIMARY KEY (seq),
    CONSTRAINT ck_jobs_status CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    CONSTRAINT ck_jobs_source CHECK ({sources}),
    CONSTRAINT ck_jobs_attempts CHECK (attempts >= 0),
    CONSTRAINT uq_jobs_id UNIQUE (id)
)"""  # noqa: E501  (as SQLite keeps it, and as the models make it)
_INDEXES = (
    "CREATE INDEX ix_jobs_batch_id ON jobs (batch_id) WHERE batch_id IS NOT NULL",
    "CREATE INDEX ix_jobs_fair ON jobs (priority, owner, seq, not_before) WHERE status = 'queued'",
    "CREATE INDEX ix_jobs_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL",
    "CREATE INDEX ix_jobs_compatible ON jobs (batch_key, priority DESC, seq) "
    "WHERE status = 'queued'",
    "CREATE INDEX ix_jobs_claim ON jobs (status, priority DESC, seq)",
    "CREATE INDEX ix_jobs_owner ON jobs (owner, seq) WHERE owner IS NOT NULL",
    "CREATE UNIQUE INDEX uq_jobs_idempotency_key ON jobs (idempotency_key) "
    "WHERE idempotency_key IS NOT NULL",
)


def _sources(values: tuple[str, ...]) -> str:
    return "source IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def _check(values: tuple[str, ...]) -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(op.f("ck_jobs_source"), "jobs", type_="check")
        op.create_check_constraint(op.f("ck_jobs_source"), "jobs", _sources(values))
        return
    op.execute("ALTER TABLE jobs RENAME TO jobs_before_0011")
    op.execute(_TABLE.format(sources=_sources(values)))
    op.execute("INSERT INTO jobs SELECT * FROM jobs_before_0011")
    op.execute("DROP TABLE jobs_before_0011")  # and its indexes, made again below
    for statement in _INDEXES:
        op.execute(statement)


def upgrade() -> None:
    _check(_NOW)


def downgrade() -> None:
    op.execute(
        "UPDATE jobs SET source = 'api' "
        "WHERE source IN ('a1111', 'ablerefusal', 'gtx1060', 'restplan')"
    )
    _check(_BEFORE)
