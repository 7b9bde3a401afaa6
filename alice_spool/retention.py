"""Retention: finished jobs' outbox directories older than
`retention.days`, or beyond `retention.max_storage_gb` (oldest first), are deleted, and
their jobs marked `images_expired_at`. A directory of a job that is not finished (queued
again, or running) is never touched; one whose job was purged from the table goes by
the same rules. A job's stored inputs (img2img, inpainting) go with its images; inputs
whose job was never committed (a crash between storing and committing) go after an
hour. A gallery image whose delete was cut short by a crash (its file moved aside, the
change not committed, or committed and the file not yet removed) is finished here, and
at a server's start-up: put back if its job still lists it, removed if not."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from . import inputs
from .errors import SpoolError
from .library.removal import image_aside
from .outbox import RESULT, Outbox
from .store import Store

log = logging.getLogger(__name__)

GB = 1_000_000_000
_JOB_ID_LENGTH = 30
ORPHAN_INPUTS_AFTER = timedelta(hours=1)
LEFTOVERS_AFTER_S = 600.0  # a file moved aside this long ago is no delete in progress


@dataclass(frozen=True)
class Entry:
    job_id: str
    path: Path
    size: int
    finished_at: datetime  # the job's, else when its result.json was written


@dataclass
class RetentionReport:
    by_age: list[str] = field(default_factory=list)
    by_size: list[str] = field(default_factory=list)
    kept_unfinished: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    bytes_kept: int = 0
    orphan_inputs: list[str] = field(default_factory=list)  # no job was ever committed
    images_restored: list[str] = field(default_factory=list)  # a delete that never happened
    leftovers_removed: list[str] = field(default_factory=list)  # a delete that did

    @property
    def deleted(self) -> list[str]:
        return [*self.by_age, *self.by_size]

    def to_dict(self) -> dict[str, object]:
        return {
            "deleted_by_age": self.by_age,
            "deleted_by_size": self.by_size,
            "kept_unfinished": self.kept_unfinished,
            "bytes_freed": self.bytes_freed,
            "bytes_kept": self.bytes_kept,
            "orphan_inputs": self.orphan_inputs,
            "images_restored": self.images_restored,
            "leftovers_removed": self.leftovers_removed,
        }


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def apply_retention(
    store: Store,
    outbox: Outbox,
    *,
    days: float,
    max_storage_gb: float,
    dry_run: bool = False,
    now: datetime | None = None,
    data_dir: Path | None = None,  # where jobs' inputs are stored
) -> RetentionReport:
    """Delete what the limits say must go (0 = no limit); report what was done."""
    now = now or datetime.now(UTC)
    report = RetentionReport()
    if data_dir is not None:
        report.orphan_inputs = _orphan_inputs(store, data_dir, now)
        if not dry_run:
            for job_id in report.orphan_inputs:
                inputs.remove(data_dir, job_id)
    if not outbox.root.is_dir():
        return report
    if not dry_run:
        report.images_restored, report.leftovers_removed = finish_deletions(store, outbox)
    dirs = {
        entry.name: entry
        for entry in outbox.root.iterdir()
        if entry.is_dir() and len(entry.name) == _JOB_ID_LENGTH and not entry.name.startswith(".")
    }
    entries = _finished_entries(store, dirs, report)
    total = _choose(entries, report, days=days, max_storage_gb=max_storage_gb, now=now)
    report.bytes_kept = total + sum(
        _size(dirs[job_id]) for job_id in report.kept_unfinished if dirs[job_id].exists()
    )
    if dry_run or not report.deleted:
        return report
    _delete(store, dirs, report, data_dir=data_dir, now=now)
    return report


def _finished_entries(store: Store, dirs: dict[str, Path], report: RetentionReport) -> list[Entry]:
    """The job directories retention may delete, oldest first; those of jobs not finished
    (running again, or queued for a retry) are noted as kept."""
    jobs = {job.id: job for job in store.jobs.get_many(list(dirs), missing_ok=True)}
    entries: list[Entry] = []
    for job_id, path in dirs.items():
        job = jobs.get(job_id)
        if job is not None and not job.finished:
            report.kept_unfinished.append(job_id)  # running again, or queued for a retry
            continue
        try:
            size = _size(path)
            written = (
                (path / RESULT).stat().st_mtime
                if (path / RESULT).exists()
                else path.stat().st_mtime
            )
        except OSError:
            continue  # gone meanwhile
        finished = job.finished_at if job is not None and job.finished_at else None
        entries.append(Entry(job_id, path, size, finished or datetime.fromtimestamp(written, UTC)))
    entries.sort(key=lambda e: e.finished_at)
    return entries


def _choose(
    entries: list[Entry],
    report: RetentionReport,
    *,
    days: float,
    max_storage_gb: float,
    now: datetime,
) -> int:
    """Note in the report what goes by age, then by size (oldest first); the bytes of
    what is kept."""
    keep: list[Entry] = []
    for entry in entries:
        if days > 0 and entry.finished_at < now - timedelta(days=days):
            report.by_age.append(entry.job_id)
            report.bytes_freed += entry.size
        else:
            keep.append(entry)
    total = sum(e.size for e in keep)
    limit = max_storage_gb * GB
    for entry in keep:  # oldest first
        if limit > 0 and total > limit:
            report.by_size.append(entry.job_id)
            report.bytes_freed += entry.size
            total -= entry.size
    return total


def _delete(
    store: Store,
    dirs: dict[str, Path],
    report: RetentionReport,
    *,
    data_dir: Path | None,
    now: datetime,
) -> None:
    """Delete the chosen job directories (and their stored inputs), then mark their jobs'
    images expired."""
    for job_id in report.deleted:
        shutil.rmtree(dirs[job_id], ignore_errors=True)
        if data_dir is not None:
            inputs.remove(data_dir, job_id)
    store.jobs.mark_images_expired(report.deleted, now=now)
    log.info(
        "retention: deleted %d job director(ies) (%d by age, %d by size), %.1f MB freed",
        len(report.deleted),
        len(report.by_age),
        len(report.by_size),
        report.bytes_freed / 1e6,
    )


def _orphan_inputs(store: Store, data_dir: Path, now: datetime) -> list[str]:
    """Input directories older than an hour whose job is not in the table."""
    root = Path(data_dir) / inputs.INPUTS_DIR
    if not root.is_dir():
        return []
    old = []
    for entry in root.iterdir():
        try:
            changed = datetime.fromtimestamp(entry.stat().st_mtime, UTC)
        except OSError:
            continue
        if entry.is_dir() and changed < now - ORPHAN_INPUTS_AFTER:
            old.append(entry.name)
    known = {job.id for job in store.jobs.get_many(old, missing_ok=True)}
    return [job_id for job_id in old if job_id not in known]


def finish_deletions(
    store: Store,
    outbox: Outbox,
    *,
    older_than_s: float = LEFTOVERS_AFTER_S,
    starting: bool = False,
) -> tuple[list[str], list[str]]:
    """Gallery deletes a crash cut short (removal.delete_image): each file moved aside in
    a job's directory by a process of this host that has ended, or over `older_than_s`
    ago (another host's, or an older version's), goes back where it was if the job
    still lists its image (the delete was never committed), or goes for good if not.
    `starting`: run by a server before it serves (serve, api), which has deleted nothing
    yet. Returns the files restored and removed, as `<job id>/<file>`."""
    restored: list[str] = []
    removed: list[str] = []
    cutoff = time.time() - older_than_s
    if not outbox.root.is_dir():
        return restored, removed
    for directory in outbox.root.iterdir():
        if len(directory.name) != _JOB_ID_LENGTH or not directory.is_dir():
            continue
        leftovers: list[tuple[Path, str]] = []
        try:
            for entry in directory.iterdir():
                found = image_aside(entry.name, starting=starting)
                if found is None:
                    continue
                original, ended = found
                if ended or entry.stat().st_ctime < cutoff:
                    leftovers.append((entry, original))
        except OSError:
            continue  # gone meanwhile
        if not leftovers:
            continue
        job = next(iter(store.jobs.get_many([directory.name], missing_ok=True)), None)
        listed = {
            image["file"]
            for image in ((job.result or {}).get("images") or [] if job is not None else [])
            if "file" in image and not image.get("deleted")
        }
        for entry, original in leftovers:
            where = f"{directory.name}/{original}"
            if original in listed and not (directory / original).exists():
                entry.rename(directory / original)
                restored.append(where)
            else:
                entry.unlink(missing_ok=True)
                removed.append(where)
    if restored or removed:
        log.info(
            "retention: %d image(s) a cut-short delete had moved aside put back, %d removed",
            len(restored),
            len(removed),
        )
    return restored, removed


def finish_deletions_at_start_up(store: Store, outbox_dir: Path) -> None:
    """`finish_deletions` before a server serves (serve, api): an image a crash left
    listed with its file aside (its URL a 404) is whole again from the first request,
    not from the first retention pass ten minutes on. A failure is logged: the server
    starts all the same, and the hourly pass tries again."""
    try:
        finish_deletions(store, Outbox(outbox_dir), starting=True)
    except (SpoolError, OSError) as exc:
        log.error("gallery deletes cut short by a crash: %s", exc)
