"""The SQL tables (SQLAlchemy 2 declarative): jobs, runners, counters, downloads, keys,
sessions, invites, the gallery and the dialects' options. Only the store imports them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    desc,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ..states import (
    DOWNLOAD_KINDS,
    DOWNLOAD_SOURCES,
    DownloadStatus,
    JobStatus,
    Source,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite has no time zone type: values are stored as naive UTC text (which sorts and
    compares correctly) and come back tagged as UTC. Naive datetimes are refused.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _partial(name: str, column: str, *, unique: bool = False) -> Index:
    """An index over the rows where `column` is set (rows without it cost nothing)."""
    where = text(f"{column} IS NOT NULL")
    return Index(name, column, unique=unique, sqlite_where=where, postgresql_where=where)


_QUEUED_ONLY = text("status = 'queued'")


def _sql_list(values: Any) -> str:
    return ", ".join(f"'{v.value}'" for v in values)


class Job(Base):
    __tablename__ = "jobs"

    # `seq` gives strict FIFO order within a priority; `id` is what users see.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(32), unique=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    batch_id: Mapped[str | None] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(16))
    client: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    progress_step: Mapped[int | None] = mapped_column(Integer)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    model: Mapped[str | None] = mapped_column(String(255))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # Jobs with equal batch keys can share one pipeline call (JobSpec.batch_digest);
    # `images` is the job's image count, which a batch's size is measured in.
    batch_key: Mapped[str | None] = mapped_column(String(32))
    images: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # When retention deleted the job's outbox directory (its images are gone).
    images_expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Whose job it is: the submitting key's `Principal.owner`; None
    # for the admin's (the inbox's, the CLI's, an open server's).
    owner: Mapped[str | None] = mapped_column(String(80))
    # How many times it was claimed; never decreases (unlike `attempts`): the fence of
    # its outbox directory.
    claims: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The secret its image URLs carry (128 random bits, never derived from the id); None
    # for a job from before it existed, whose links keep their old form.
    image_secret: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        CheckConstraint(f"status IN ({_sql_list(JobStatus)})", name="status"),
        CheckConstraint(f"source IN ({_sql_list(Source)})", name="source"),
        CheckConstraint("attempts >= 0", name="attempts"),
        # The claim reads queued jobs by priority, then arrival.
        # Every insert pays for every index it touches, so there are few, and the ones
        # for optional columns are partial. The claim index also serves counts by status
        # and the orphan scan (status = 'running').
        Index("ix_jobs_claim", "status", desc("priority"), "seq"),
        # The runner's claim of the jobs that can join a batch's head job.
        Index(
            "ix_jobs_compatible",
            "batch_key",
            desc("priority"),
            "seq",
            sqlite_where=_QUEUED_ONLY,
            postgresql_where=_QUEUED_ONLY,
        ),
        # Fair share: the first queued job of each owner at a priority, from the index
        # alone (not_before in it too, for the claim's readiness test).
        Index(
            "ix_jobs_fair",
            "priority",
            "owner",
            "seq",
            "not_before",
            sqlite_where=_QUEUED_ONLY,
            postgresql_where=_QUEUED_ONLY,
        ),
        # An idempotency key is its owner's (the admin's owner is NULL, hence COALESCE).
        Index(
            "uq_jobs_idempotency_key",
            text("COALESCE(owner, '')"),
            "idempotency_key",
            unique=True,
            sqlite_where=text("idempotency_key IS NOT NULL"),
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        _partial("ix_jobs_batch_id", "batch_id"),
        _partial("ix_jobs_finished_at", "finished_at"),
        # A user's own jobs, newest first (an admin's list reads them all).
        Index(
            "ix_jobs_owner",
            "owner",
            "seq",
            sqlite_where=text("owner IS NOT NULL"),
            postgresql_where=text("owner IS NOT NULL"),
        ),
    )


# SQLite cannot reflect an index on an expression (`priority DESC`), so Alembic's
# comparison would always see the claim index as changed. It is left out of the
# comparison; the migration tests compare it through its SQL instead.
UNREFLECTABLE_INDEXES = frozenset(
    {"ix_jobs_claim", "ix_jobs_compatible", "uq_jobs_idempotency_key"}
)


class Runner(Base):
    """What each runner last said about itself (it reports about once a second): what
    `/health`, `/metrics` and the dashboard show of the GPU side."""

    __tablename__ = "runners"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime())
    state: Mapped[str] = mapped_column(String(16))  # idle | busy | stopped
    device: Mapped[str | None] = mapped_column(String(64))
    gpu_available: Mapped[bool] = mapped_column(Boolean, default=False)
    gpu_name: Mapped[str | None] = mapped_column(String(128))
    memory_used: Mapped[int | None] = mapped_column(BigInteger)
    memory_total: Mapped[int | None] = mapped_column(BigInteger)
    model: Mapped[str | None] = mapped_column(String(255))  # resident
    job_id: Mapped[str | None] = mapped_column(String(32))  # the running batch's first job
    step: Mapped[int | None] = mapped_column(Integer)
    total: Mapped[int | None] = mapped_column(Integer)


class Counter(Base):
    """Totals that only grow (for Prometheus' counters and histograms): added to in the
    same transaction that finishes a job, so purging or retrying jobs never lowers them."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(96), primary_key=True)
    value: Mapped[float] = mapped_column(Float, default=0.0)


class Served(Base):
    """When the runners last took a job of each owner (`Job.owner`; "" for the admin's
    jobs: the inbox's, the CLI's, an open server's): the claim serves the
    owner served least recently first, at equal priority."""

    __tablename__ = "served"

    owner: Mapped[str] = mapped_column(String(255), primary_key=True)
    last_served_at: Mapped[datetime] = mapped_column(UTCDateTime())


_DOWNLOAD_QUEUED = text("status = 'queued'")


class Download(Base):
    """A model download: the row is the truth, so a restart resumes
    every unfinished one and two workers never take the same (claimed as jobs are)."""

    __tablename__ = "downloads"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(32), unique=True)
    source: Mapped[str] = mapped_column(String(16))
    # What to fetch: repo and revision (and file), CivitAI ids, or the URL. Never a
    # token: those live in the configuration and travel only in headers.
    reference: Mapped[dict[str, Any]] = mapped_column(JSON)
    kind: Mapped[str | None] = mapped_column(String(16))  # known once resolved
    name: Mapped[str | None] = mapped_column(String(255))  # the target name
    status: Mapped[str] = mapped_column(String(16))
    client: Mapped[str | None] = mapped_column(String(255))
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int | None] = mapped_column(BigInteger)
    speed_bps: Mapped[float | None] = mapped_column(Float)
    model: Mapped[str | None] = mapped_column(String(255))  # sd/<name> or lora/<name>
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    owner: Mapped[str | None] = mapped_column(String(80))  # as a job's

    __table_args__ = (
        CheckConstraint(f"status IN ({_sql_list(DownloadStatus)})", name="status"),
        CheckConstraint(
            "source IN (" + ", ".join(f"'{s}'" for s in DOWNLOAD_SOURCES) + ")", name="source"
        ),
        CheckConstraint(
            "kind IS NULL OR kind IN (" + ", ".join(f"'{k}'" for k in DOWNLOAD_KINDS) + ")",
            name="kind",
        ),
        CheckConstraint("bytes_done >= 0", name="bytes_done"),
        Index("ix_downloads_status_seq", "status", "seq"),
    )


class ApiKey(Base):
    """An API key: only its SHA-256 is kept; the key itself is shown
    once, when it is made."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # at most per minute
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer)  # None: the server's
    created_by: Mapped[str | None] = mapped_column(String(64))  # an admin, an invite, the CLI

    __table_args__ = (
        CheckConstraint("role IN ('admin', 'user')", name="role"),
        CheckConstraint(
            "rate_limit_per_minute IS NULL OR rate_limit_per_minute >= 0", name="rate_limit"
        ),
    )


class Invite(Base):
    """An invite code for `POST /v1/auth/register` (a user key); kept as its SHA-256."""

    __tablename__ = "invites"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    code_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(8))  # the code's first characters, to tell them apart
    uses_left: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (CheckConstraint("uses_left >= 0", name="uses_left"),)


class WebSession(Base):
    """A web session: its cookie holds a random id, of which only
    the SHA-256 is kept, never the key that opened it."""

    __tablename__ = "sessions"

    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))  # the key's name
    role: Mapped[str] = mapped_column(String(8))
    key_id: Mapped[str | None] = mapped_column(String(32))  # None: a configured key
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())  # the absolute end
    # The key it was opened with (its SHA-256): each use checks the key is still there.
    key_sha256: Mapped[str | None] = mapped_column(String(64))


def include_in_comparison(obj: Any, name: str | None, type_: str, *_: Any) -> bool:
    """Alembic's `include_object` hook for autogenerate and `alembic check`."""
    return not (type_ == "index" and name in UNREFLECTABLE_INDEXES)


class GalleryImage(Base):
    """One image of a succeeded job in the gallery, id
    `<job id>-<index>`: written in the transaction that succeeds the job, gone when the
    image is deleted or retention deletes its job's directory."""

    __tablename__ = "gallery"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)  # its job's: newest job first, then by index
    job_id: Mapped[str] = mapped_column(String(32))
    index: Mapped[int] = mapped_column(Integer)
    file: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    prompt: Mapped[str] = mapped_column(Text)  # for `search`
    model: Mapped[str | None] = mapped_column(String(255))
    public_until: Mapped[datetime | None] = mapped_column(UTCDateTime())  # None: private

    __table_args__ = (
        Index("ix_gallery_seq", "seq", "index"),
        Index("ix_gallery_job_id", "job_id"),
        Index("ix_gallery_owner_seq", "owner", "seq"),
        _partial("ix_gallery_public_until", "public_until"),
    )


class GalleryTag(Base):
    """A tag on a gallery image (lower case, at most 50 characters, 20 an image)."""

    __tablename__ = "gallery_tags"

    image_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tag: Mapped[str] = mapped_column(String(50), primary_key=True)

    __table_args__ = (Index("ix_gallery_tags_tag", "tag"),)


class ClientOption(Base):
    """A client's own setting in a dialect that has them: A1111's
    `sd_model_checkpoint`, per owner ("" for the admin's), kept across restarts and
    shared by every API node."""

    __tablename__ = "client_options"

    owner: Mapped[str] = mapped_column(String(80), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
