"""Taking inbox files: a ready file's jobs are committed with idempotency keys, and only
then is the file moved to `accepted/` (or deleted); a bad file moves to `rejected/` with
`NAME.error.json` beside it saying why."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .. import inputs
from ..errors import DatabaseError, IdempotencyConflict, InvalidParameters, QueueFull, SpoolError
from ..faults import Faults
from ..records import NewJob
from ..states import Source
from ..store import Store, new_id
from .files import (
    ACCEPTED,
    ERROR_SUFFIX,
    REJECTED,
    file_stat,
    fit_name,
    move_aside,
    shown,
    write_atomically,
)
from .reading import Pending, Ready

log = logging.getLogger("alice_spool.inbox")

# What makes files wait rather than be rejected: conditions that pass.
PASSING = (DatabaseError, QueueFull)


@dataclass
class InboxStats:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    observer_restarts: int = 0
    last_scan_at: datetime | None = None


class Taker:
    """Commits the jobs of ready files and moves the files out of the inbox."""

    def __init__(
        self,
        directory: Path,
        store: Store,
        *,
        after_accept: str,
        faults: Faults,
        data_dir: Path | None,
        stats: InboxStats,
        forget: Callable[[Pending], None],  # the file is dealt with: no longer pending
    ) -> None:
        self.directory = directory
        self.store = store
        self.after_accept = after_accept
        self.faults = faults
        self.data_dir = data_dir
        self.stats = stats
        self.forget = forget
        self.last_taken = float("-inf")  # monotonic time a file was last taken

    def take_group(self, group: list[Ready]) -> None:
        """Commit the single requests together; if that fails for any reason but the
        database, take them one by one, so that only a file that fails alone is
        rejected."""
        try:
            self._take_singles(group)
        except PASSING:
            raise
        except Exception as exc:
            if len(group) == 1:
                self.reject_unexpected(group[0].pending, exc)
                return
            for ready in group:
                self.take_group([ready])

    def _take_singles(self, group: list[Ready]) -> None:
        """Commit the single requests of `group` in one transaction, then move each out."""
        job_ids = [self._store_inputs(ready.staged[0]) for ready in group]
        items = [
            NewJob(
                ready.requests[0].spec,
                ready.requests[0].idempotency_key or ready.key,
                ready.path.name,
                job_id,
            )
            for ready, job_id in zip(group, job_ids, strict=True)
        ]
        try:
            answers = self.store.jobs.enqueue_keyed(items, source=Source.INBOX)
        except BaseException:
            self._drop_inputs(job_ids, set())
            raise
        made = {a.job.id for a in answers if not isinstance(a, IdempotencyConflict) and a.created}
        self._drop_inputs(job_ids, made)
        self.faults.crash_point("inbox_committed")
        for ready, answer in zip(group, answers, strict=True):
            try:
                if isinstance(answer, IdempotencyConflict):
                    self.reject(ready.path, answer)
                else:
                    self._accepted(ready.path, answer.created, f"job {answer.job.id}")
            except OSError as exc:  # committed, but it cannot be moved out
                self.cannot_move(ready.pending, exc)
                continue
            self.forget(ready.pending)

    def take_batch(self, ready: Ready) -> bool:
        """Commit a JSONL file's jobs as one batch; False if the file stays (stuck)."""
        job_ids = [self._store_inputs(staged) for staged in ready.staged]
        items = [
            NewJob(r.spec, r.idempotency_key or f"{ready.key}:{i}", ready.path.name, job_id)
            for i, (r, job_id) in enumerate(zip(ready.requests, job_ids, strict=True), start=1)
        ]
        try:
            batch = self.store.jobs.enqueue_batch(items, source=Source.INBOX)
        except (InvalidParameters, IdempotencyConflict) as exc:
            self._drop_inputs(job_ids, set())
            self.reject(ready.path, exc)
            return True
        except BaseException:
            self._drop_inputs(job_ids, set())
            raise
        self._drop_inputs(job_ids, set(batch.job_ids) if batch.created else set())
        self.faults.crash_point("inbox_committed")
        what = f"batch {batch.batch_id} ({len(items)} jobs)"
        try:
            self._accepted(ready.path, batch.created, what)
        except OSError as exc:
            self.cannot_move(ready.pending, exc)
            return False
        return True

    def _store_inputs(self, staged: inputs.Staged) -> str | None:
        """A new job id with the request's images stored under it (None: no images)."""
        if not staged or self.data_dir is None:
            return None
        job_id = new_id()
        inputs.store(self.data_dir, job_id, staged)
        return job_id

    def _drop_inputs(self, job_ids: list[str | None], kept: set[str]) -> None:
        """Inputs stored for jobs that were not made (refused, or repeats of earlier ones)."""
        for job_id in job_ids:
            if job_id is not None and job_id not in kept and self.data_dir is not None:
                inputs.remove(self.data_dir, job_id)

    def _accepted(self, path: Path, created: bool, what: str) -> None:
        """The file's jobs are committed: move it out of the way (or delete it)."""
        name = path.name
        if self.after_accept == "delete":
            path.unlink(missing_ok=True)
        else:
            move_aside(path, self.directory / ACCEPTED)
        self.last_taken = time.monotonic()
        if created:
            self.stats.accepted += 1
            log.info("took %s as %s", name, what, extra={"file": name})
        else:
            self.stats.duplicates += 1
            log.info("%s was taken before, as %s; nothing new queued", name, what)

    def reject(self, path: Path, error: SpoolError) -> None:
        """Move a bad file to `rejected/`, with `NAME.error.json` beside it saying why."""
        name = shown(path.name)
        log.warning("rejected %s: %s", name, error.message, extra={"file": name})
        target = move_aside(path, self.directory / REJECTED, reserve=len(ERROR_SUFFIX))
        report = {
            "file": name,
            "rejected_as": shown(target.name) if target else None,
            "rejected_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "error": error.to_dict(),
        }
        why = fit_name(target.name if target else path.name, ending=ERROR_SUFFIX)
        write_atomically(self.directory / REJECTED / why, json.dumps(report, indent=2))
        self.stats.rejected += 1

    def reject_unexpected(self, pending: Pending, exc: Exception) -> None:
        """A file whose taking failed in a way no rule foresaw: one rejection, logged with
        its traceback, and the inbox goes on."""
        name = shown(pending.path.name)
        log.error("inbox: taking %s failed", name, exc_info=exc)
        reason = InvalidParameters(f"{name} could not be taken: {type(exc).__name__}: {exc}")
        try:
            self.reject(pending.path, reason)
        except OSError as error:  # it cannot even be moved: leave it until it changes
            self.cannot_move(pending, error)
            return
        self.forget(pending)

    def cannot_move(self, pending: Pending, exc: OSError) -> None:
        """The file cannot be moved or deleted (its jobs, if any, are committed: taking it
        again adds nothing): left where it is, not looked at again until it changes."""
        log.error("inbox: cannot move %s out of the inbox: %s", shown(pending.path.name), exc)
        pending.stuck_at = file_stat(pending.path)
