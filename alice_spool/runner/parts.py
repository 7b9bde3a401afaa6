"""The runner's parts: its options, the engine it is handed, the pieces of a batch and
their outcomes, the lock that makes a runner's name unique on a host, and small helpers."""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import re
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from ..config import Settings
from ..errors import (
    ConfigError,
    GenerationFailed,
    RunnerBusy,
    SpoolError,
)
from ..faults import Faults
from ..outbox import Outbox
from ..records import JobRecord
from ..spec import SEED_MAX, JobSpec
from ..store import Store

log = logging.getLogger("alice_spool.runner")

NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
DB_RETRY_S = 1.0
REPORT_S = 1.0  # how often a busy runner reports itself (runners table)
IDLE_REPORT_S = 5.0  # and an idle one, whose report has not changed
HANG_EXIT_CODE = 70  # the process gives up on a stuck device; its supervisor restarts it


class BatchGenerator(Protocol):
    """What the runner needs of the engine (`engine.resident.Engine` is one); the runner
    never imports the engine, so tests can hand it a stand-in."""

    @property
    def resident_model(self) -> str | None: ...

    def default_model_id(self) -> str | None: ...

    def resolve(self, spec: JobSpec) -> JobSpec: ...

    def generate(
        self,
        specs: Sequence[JobSpec],
        *,
        on_step: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        images: Sequence[Mapping[str, Any]] | None = None,  # img2img and inpainting inputs
        max_pixels: int | None = None,  # a hires job's largest target (when set)
    ) -> Any: ...

    def unload(self) -> None: ...

    # Optional: {"device", "gpu_available", "gpu_name", "memory_used", "memory_total"}
    # def device_info(self) -> dict[str, Any]: ...
    # Optional: the images one call may take for this spec (its family, size, memory)
    # def batch_limit(self, spec: JobSpec) -> int: ...
    # Optional: compile and warm up the default model before the first claim
    # def warm_up_default(self) -> None: ...


@dataclass(frozen=True)
class RunnerOptions:
    name: str
    max_batch: int = 8
    lease_s: float = 60.0
    job_timeout_s: float = 300.0
    switch_model_after_s: float = 30.0
    recheck_s: float = 5.0  # an idle runner, woken by changes, claims anyway this often
    progress_s: float = 0.25  # progress and cancel checks while a batch runs
    retry_after_s: float = 30.0  # a job whose outputs could not be written waits this long
    hang_grace_s: float = 60.0  # beyond the job timeout, before a stuck device is given up
    exit_when_idle: bool = False  # drain the queue, then stop (cron, benchmarks)
    parent_pid: int | None = None  # serve's pid: stop when it is gone (serve was killed)
    data_dir: Path | None = None  # where img2img and inpainting jobs' inputs are stored
    # generation.max_pixels, for hires jobs at the model's native size (the doors check
    # the sizes they know); None: the engine's own limit
    max_pixels: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> RunnerOptions:
        runner = settings.runner
        values: dict[str, Any] = {
            "name": runner.name or default_name(),
            "max_batch": runner.max_batch,
            "lease_s": runner.lease_s,
            "job_timeout_s": runner.job_timeout_s,
            "switch_model_after_s": runner.switch_model_after_s,
            "hang_grace_s": max(60.0, runner.lease_s),
            "data_dir": Path(settings.paths.data_dir),
            "max_pixels": settings.generation.max_pixels,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @staticmethod
    def check_name(name: str) -> None:
        if not NAME.fullmatch(name):
            raise ConfigError(
                f"runner name {name!r}: use 1..64 letters, digits, '.', '_' or '-'", key="name"
            )


def default_name() -> str:
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())
    return host[:64] or "runner"


@dataclass(frozen=True)
class Piece:
    """Some or all of one job's images, as a spec the engine can batch."""

    job: JobRecord
    spec: JobSpec
    first: int  # index of the piece's first image in its job

    def split(self) -> tuple[Piece, Piece]:
        half = self.spec.n // 2
        seed = self.spec.seed or 0
        head = replace(self.spec, n=half)
        tail = replace(self.spec, n=self.spec.n - half, seed=(seed + half) % (SEED_MAX + 1))
        return Piece(self.job, head, self.first), Piece(self.job, tail, self.first + half)


@dataclass
class Outcome:
    """What became of one job of a batch."""

    job: JobRecord
    spec: JobSpec  # resolved
    images: dict[int, Any] = field(default_factory=dict)  # index -> PIL image
    seeds: dict[int, int] = field(default_factory=dict)
    error: SpoolError | None = None
    retryable: bool = False  # the error may pass: requeue while attempts are left
    seconds: float = 0.0  # pipeline time of the calls that made its images
    batch_images: int = 0  # images in the largest call it was part of
    device: str | None = None
    memory_mode: str | None = None
    loras: list[dict[str, Any]] = field(default_factory=list)  # name, scale, hashes
    vae: dict[str, Any] | None = None  # the VAE in place of the model's: name, file, hash
    schedule: str | None = None  # A1111's schedule type of the (first) pass, if any
    hires_schedule: str | None = None  # and of a hires job's second pass
    first_size: tuple[int, int] | None = None  # a hires job's first pass's (width, height)
    guidance: str = "classifier-free"  # what its guidance_scale was (BatchOutput.guidance)
    cache: str = "none"  # the step cache it ran with (runner.cache)
    inputs: dict[str, Any] = field(default_factory=dict)  # role -> PIL image (img2img)


@dataclass
class Running:
    """The pipeline call in progress, as the monitor and the stop check see it."""

    job_ids: list[str]
    deadline: float  # monotonic
    started: float
    step: int = 0
    total: int = 0
    reported: tuple[int, int] = (0, 0)
    stop_reason: str | None = None  # shutdown | timeout | cancelled


class RunnerLock:
    """An exclusive lock on `<data_dir>/runner-<name>.lock`, held while the runner runs;
    the kernel drops it when the process dies, however it dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.path.read_text().strip() or "another process"
            raise RunnerBusy(
                f"a runner named {self.path.stem.removeprefix('runner-')!r} is already "
                f"running on this host (pid {holder}); give this one another runner.name",
                lock=str(self.path),
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def halves(pieces: list[Piece]) -> list[list[Piece]]:
    """Split a call in two of about equal image counts (a lone job by its images)."""
    if len(pieces) == 1:
        head, tail = pieces[0].split()
        return [[head], [tail]]
    total = sum(p.spec.n for p in pieces)
    count = 0
    for index, piece in enumerate(pieces):
        count += piece.spec.n
        if count * 2 >= total:
            cut = max(1, min(index + 1, len(pieces) - 1))
            return [pieces[:cut], pieces[cut:]]
    return [pieces[:1], pieces[1:]]


def unexpected(exc: Exception | None) -> SpoolError:
    reason = f"{type(exc).__name__}: {exc}" if exc is not None else "see the runner's log"
    return GenerationFailed(f"unexpected error: {reason}"[:500])


def rounded(value: float) -> float:
    return round(value, 3)


def log_transition(job: JobRecord) -> None:
    wait = run = None
    if job.started_at is not None:
        wait = (job.started_at - job.created_at).total_seconds()
        if job.finished_at is not None:
            run = (job.finished_at - job.started_at).total_seconds()
    log.info(
        "job %s %s%s (source %s, model %s, waited %s s, ran %s s)",
        job.id,
        job.status.value,
        f" {job.error_code}" if job.error_code else "",
        job.source.value,
        job.model or "default",
        f"{wait:.2f}" if wait is not None else "-",
        f"{run:.2f}" if run is not None else "-",
        extra={"job_id": job.id, "status": job.status.value},
    )


class RunnerState:
    """What the runner's threads share (set by `Runner.__init__`), declared once for the
    parts of the runner that live in other modules (the writer, the monitor)."""

    store: Store
    outbox: Outbox
    generator: BatchGenerator
    options: RunnerOptions
    faults: Faults
    owner: str
    _on_hang: Callable[[], None]
    _stop: threading.Event
    _done: threading.Event
    _lock: threading.Lock
    _held: dict[str, JobRecord]
    _running: Running | None
    _writes: queue.Queue[Outcome | None]
    _warming: bool
    _started_at: datetime
    _last_report: tuple[str, str | None] | None
