"""Frozen snapshots the store hands out: `JobRecord` and the results of its operations."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, cast

from sqlalchemy.engine import Row

from .spec import JobSpec
from .states import DownloadStatus, JobStatus, Source


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


@dataclass(frozen=True)
class JobRecord:
    """A snapshot of one job, detached from any database session."""

    id: str
    idempotency_key: str | None
    batch_id: str | None
    source: Source
    client: str | None
    status: JobStatus
    priority: int
    not_before: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    max_attempts: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    cancel_requested: bool
    progress_step: int | None
    progress_total: int | None
    model: str | None
    spec: JobSpec
    result: dict[str, Any] | None
    error_code: str | None
    error_message: str | None
    images_expired_at: datetime | None = None
    owner: str | None = None  # the key that asked for it; None: the admin's
    claims: int = 0  # how many times it was claimed: the outbox's fence
    # What its image URLs carry (never shown in `to_dict`); None: a job from before it.
    image_secret: str | None = field(default=None, repr=False)

    @classmethod
    def from_row(cls, row: Row[Any]) -> JobRecord:
        return cls.from_mapping(cast(Mapping[str, Any], row._mapping))

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> JobRecord:
        return cls(
            id=m["id"],
            idempotency_key=m["idempotency_key"],
            batch_id=m["batch_id"],
            source=Source(m["source"]),
            client=m["client"],
            status=JobStatus(m["status"]),
            priority=m["priority"],
            not_before=m["not_before"],
            created_at=m["created_at"],
            started_at=m["started_at"],
            finished_at=m["finished_at"],
            attempts=m["attempts"],
            max_attempts=m["max_attempts"],
            lease_owner=m["lease_owner"],
            lease_expires_at=m["lease_expires_at"],
            cancel_requested=bool(m["cancel_requested"]),
            progress_step=m["progress_step"],
            progress_total=m["progress_total"],
            model=m["model"],
            # The priority column is the live value (it can be changed while queued).
            spec=JobSpec.from_dict({**m["spec"], "priority": m["priority"]}),
            result=m["result"],
            error_code=m["error_code"],
            error_message=m["error_message"],
            images_expired_at=m.get("images_expired_at"),
            owner=m.get("owner"),
            claims=m.get("claims") or 0,
            image_secret=m.get("image_secret"),
        )

    @property
    def finished(self) -> bool:
        return self.status.finished

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (ISO 8601 UTC timestamps) for `--json` output and the API."""
        return {
            "id": self.id,
            "status": self.status.value,
            "batch_id": self.batch_id,
            "idempotency_key": self.idempotency_key,
            "source": self.source.value,
            "client": self.client,
            "owner": self.owner,
            "priority": self.priority,
            "model": self.model,
            "created_at": _iso(self.created_at),
            "not_before": _iso(self.not_before),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "cancel_requested": self.cancel_requested,
            "progress": {"step": self.progress_step, "total": self.progress_total},
            "lease_owner": self.lease_owner,
            "lease_expires_at": _iso(self.lease_expires_at),
            "spec": self.spec.to_dict(),
            "result": self.result,
            "error": (
                {"code": self.error_code, "message": self.error_message}
                if self.error_code
                else None
            ),
            # retention deleted the job's images (and its outbox directory) then
            "images_expired_at": _iso(self.images_expired_at),
        }


@dataclass(frozen=True)
class NewJob:
    """One job of a batch to enqueue."""

    spec: JobSpec
    idempotency_key: str | None = None
    client: str | None = None
    job_id: str | None = None  # given when its inputs were stored under it first
    owner: str | None = None  # the key that asked for it (`Principal.owner`)


@dataclass(frozen=True)
class Enqueued:
    job: JobRecord
    created: bool  # False: the idempotency key matched an earlier, identical request


@dataclass(frozen=True)
class BatchEnqueued:
    batch_id: str
    job_ids: list[str]  # in the order of the requests
    created: bool  # False: an exact repeat of an earlier batch, which is returned


@dataclass(frozen=True)
class Heartbeat:
    owned: frozenset[str]  # jobs whose lease was renewed
    cancel_requested: frozenset[str]  # of those, the ones a user asked to cancel

    def lost(self, job_ids: Iterable[str]) -> set[str]:
        return set(job_ids) - self.owned


@dataclass(frozen=True)
class OrphanReport:
    requeued: list[str] = field(default_factory=list)
    exhausted: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BatchCancelReport:
    cancelled: int  # queued jobs, cancelled at once
    requested: int  # running jobs, flagged for the runner
    untouched: int  # already finished


@dataclass(frozen=True)
class JobPage:
    jobs: list[JobRecord]
    next_cursor: str | None  # pass as `before` for the next (older) page


@dataclass(frozen=True)
class Stats:
    window_s: float
    counts: dict[JobStatus, int]
    finished: dict[JobStatus, int]  # jobs that finished within the window, by status
    images: int  # images made by jobs that succeeded within the window
    mean_wait_s: float | None  # created -> started, succeeded jobs in the window
    mean_run_s: float | None  # started -> finished, succeeded jobs in the window
    waits: tuple[float, ...] = ()  # each succeeded job's wait, in the window
    runs: tuple[float, ...] = ()  # and its run

    @property
    def jobs_per_minute(self) -> float:
        return self.finished[JobStatus.SUCCEEDED] * 60.0 / self.window_s

    @property
    def images_per_minute(self) -> float:
        return self.images * 60.0 / self.window_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_s": self.window_s,
            "depth": {s.value: n for s, n in self.counts.items()},
            "finished_in_window": {s.value: n for s, n in self.finished.items()},
            "images_in_window": self.images,
            "jobs_per_minute": round(self.jobs_per_minute, 3),
            "images_per_minute": round(self.images_per_minute, 3),
            "mean_wait_s": self.mean_wait_s,
            "mean_run_s": self.mean_run_s,
        }


@dataclass(frozen=True)
class RunnerReport:
    """What a runner says about itself, about once a second."""

    name: str
    owner: str
    started_at: datetime
    heartbeat_at: datetime
    state: str  # idle | busy | stopped
    device: str | None = None
    gpu_available: bool = False
    gpu_name: str | None = None
    memory_used: int | None = None
    memory_total: int | None = None
    model: str | None = None
    job_id: str | None = None
    step: int | None = None
    total: int | None = None

    @classmethod
    def from_row(cls, row: Row[Any]) -> RunnerReport:
        return cls(**{f.name: row._mapping[f.name] for f in fields(cls)})

    def age_s(self, now: datetime) -> float:
        return max(0.0, (now - self.heartbeat_at).total_seconds())


@dataclass(frozen=True)
class DownloadRecord:
    """A snapshot of one model download."""

    id: str
    source: str
    reference: dict[str, Any]
    kind: str | None
    name: str | None
    status: DownloadStatus
    client: str | None
    bytes_done: int
    bytes_total: int | None
    speed_bps: float | None
    model: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    cancel_requested: bool
    error_code: str | None
    error_message: str | None
    owner: str | None = None  # as a job's

    @classmethod
    def from_row(cls, row: Row[Any]) -> DownloadRecord:
        values = {f.name: row._mapping[f.name] for f in fields(cls)}
        values["status"] = DownloadStatus(values["status"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """As the API shows a download."""
        error = (
            {"code": self.error_code, "message": self.error_message} if self.error_code else None
        )
        return {
            "id": self.id,
            "source": self.source,
            "kind": self.kind,
            "name": self.name,
            "status": self.status.value,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "speed_bps": self.speed_bps,
            "model": self.model,
            "error": error,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }


@dataclass(frozen=True)
class KeyRecord:
    """An API key as the store keeps it: never the key itself."""

    id: str
    name: str
    role: str  # admin | user
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    rate_limit_per_minute: int | None
    created_by: str | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> KeyRecord:
        return cls(**{f.name: row._mapping[f.name] for f in fields(cls)})

    @property
    def enabled(self) -> bool:
        return self.revoked_at is None

    def to_dict(self) -> dict[str, Any]:
        """As ALICE's key routes show it (`info`), plus the role and limit."""
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "isAdmin": self.role == "admin",
            "enabled": self.enabled,
            "createdAt": _iso(self.created_at),
            "lastUsed": _iso(self.last_used_at),
            "revokedAt": _iso(self.revoked_at),
            "rateLimitPerMinute": self.rate_limit_per_minute,
        }


@dataclass(frozen=True)
class InviteRecord:
    id: str
    hint: str
    uses_left: int
    expires_at: datetime | None
    created_at: datetime
    created_by: str | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> InviteRecord:
        return cls(**{f.name: row._mapping[f.name] for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "hint": self.hint,
            "uses_remaining": self.uses_left,
            "expires_at": _iso(self.expires_at),
            "created_at": _iso(self.created_at),
        }


@dataclass(frozen=True)
class GalleryItem:
    """One gallery image, with what its job asked and made."""

    id: str  # <job id>-<index>
    job_id: str
    index: int
    file: str
    owner: str | None
    created_at: datetime
    prompt: str
    model: str | None
    public_until: datetime | None
    public: bool  # shared now (public_until is still ahead)
    spec: dict[str, Any]
    result: dict[str, Any]
    tags: tuple[str, ...]
    image_secret: str | None = field(default=None, repr=False)  # its job's (JobRecord)

    @classmethod
    def from_row(cls, row: Row[Any], tags: Iterable[str], now: datetime) -> GalleryItem:
        m = row._mapping
        return cls(
            id=m["id"],
            job_id=m["job_id"],
            index=m["index"],
            file=m["file"],
            owner=m["owner"],
            created_at=m["created_at"],
            prompt=m["prompt"],
            model=m["model"],
            public_until=m["public_until"],
            public=m["public_until"] is not None and m["public_until"] > now,
            spec=dict(m["spec"] or {}),
            result=dict(m["result"] or {}),
            tags=tuple(tags),
            image_secret=m.get("image_secret"),
        )

    def to_alice(self, url: str, *, is_owner: bool) -> dict[str, Any]:
        """ALICE's gallery item (camelCase)."""
        spec, result = self.spec, self.result
        images: list[dict[str, Any]] = result.get("images") or []
        made = next((i for i in images if i.get("file") == self.file), {})
        loras = spec.get("loras") or []
        return {
            "id": self.id,
            "filename": self.file,
            "url": url,
            "isPublic": self.public,
            "createdAt": _iso(self.created_at),
            "expiresAt": _iso(self.public_until) if self.public else None,
            "isOwner": is_owner,
            "prompt": self.prompt,
            "negativePrompt": spec.get("negative_prompt"),
            "model": self.model,
            "steps": spec.get("steps"),
            "guidanceScale": spec.get("guidance_scale"),
            "width": made.get("width", spec.get("width")),
            "height": made.get("height", spec.get("height")),
            "seed": made.get("seed", spec.get("seed")),
            "scheduler": spec.get("scheduler"),
            "generationTime": (result.get("timings") or {}).get("generate_s"),
            "loras": [lora.get("name") if isinstance(lora, dict) else lora for lora in loras],
            "loraScales": [
                lora.get("scale", 1.0) if isinstance(lora, dict) else 1.0 for lora in loras
            ],
            "tags": list(self.tags),
            "jobId": self.job_id,
        }


@dataclass(frozen=True)
class GalleryPage:
    items: list[GalleryItem]
    total: int  # every match, not only this page's
