"""The shapes of the answers several routes give (a job, a download, a list of them),
as models for their contracts. The routes build their answers from records; these
say what those answers hold, and the schemathesis run checks that they do."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from ...states import DownloadStatus, JobStatus, Source


class Fault(BaseModel):
    """Why a job or a download failed."""

    code: str
    message: str


class Progress(BaseModel):
    step: int | None
    total: int | None


class Job(BaseModel):
    """A job as the native API shows it (and the done event of its events)."""

    object: Literal["job"]
    id: str
    status: JobStatus
    batch_id: str | None
    idempotency_key: str | None
    source: Source
    client: str | None
    owner: str | None
    priority: int
    model: str | None
    created_at: str
    not_before: str | None
    started_at: str | None
    finished_at: str | None
    attempts: int
    max_attempts: int
    cancel_requested: bool
    progress: Progress
    lease_owner: str | None
    lease_expires_at: str | None
    spec: dict[str, Any]
    result: dict[str, Any] | None
    error: Fault | None
    images_expired_at: str | None
    image_urls: list[str]


class Download(BaseModel):
    """A model download as the API shows it."""

    id: str
    source: str
    kind: str | None  # null until its source says
    name: str | None
    status: DownloadStatus
    bytes_done: int
    bytes_total: int | None
    speed_bps: float | None
    model: str | None
    error: Fault | None
    created_at: str
    started_at: str | None
    finished_at: str | None


class Success(BaseModel):
    """`{"success": true, ...}`: done (ALICE's answer to a change)."""

    success: bool
