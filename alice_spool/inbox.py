"""The inbox (DESIGN section 5): request files dropped into a directory become jobs,
each file exactly once, even across crashes, bursts and files still being written.

How a file is found: a scan when the watcher starts, then watchdog's events (inotify on
Linux, or a polling observer for network filesystems), then a rescan every
`inbox.rescan_interval_s` for anything an event missed. Found files wait in `pending`
until they are complete:

- renamed into the inbox, or closed after writing (inotify's close-write): at once;
- a `.json` file whose text is one whole JSON value: at once (no proper prefix of a JSON
  object is valid JSON);
- otherwise when its size and modification time have not changed for `inbox.settle_s`;
  a `.json` file that is not valid JSON waits ten times as long before it is rejected,
  in case its writer is only pausing.

How it is taken: its jobs are committed with idempotency keys (the request's `id`, else
a hash of the file's name and content, and the line number in a `.jsonl`), and only then
is the file moved to `inbox/accepted/` (or deleted). A crash between the two leaves the
file in place; taking it again finds the same keys and adds nothing. A bad file moves to
`inbox/rejected/` with `NAME.error.json` beside it saying why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat as stat_module
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
    FileSystemMovedEvent,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from . import inputs, urls
from .config import Settings
from .errors import (
    DatabaseError,
    IdempotencyConflict,
    InvalidParameters,
    LoraNotFound,
    ModelNotFound,
    QueueFull,
    SpoolError,
)
from .faults import NO_FAULTS, Faults
from .inbox_files import (
    ERROR_SUFFIX,
    Seen,
    file_stat,
    fit_name,
    is_request_name,
    move_aside,
    settled,
    shown,
    still_writing,
    worth_reading,
    write_atomically,
)
from .records import NewJob
from .registry import ModelRegistry
from .spec import GenerationDefaults, Request, parse_json, parse_jsonl, parse_request
from .states import Source
from .store import Store, new_id

log = logging.getLogger(__name__)

ACCEPTED = "accepted"
MOVE_PAIRING_S = 0.02
GROUP_SIZE = 200  # single-request files committed per transaction
COALESCE_S = 0.01  # after a wake-up, how long the files of a burst may gather
ACTIVE_WINDOW_S = 5.0  # for this long after a file was taken ...
QUICK_RESCAN_S = 0.5  # ... the directory is rescanned this often
REJECTED = "rejected"
# What makes files wait rather than be rejected: conditions that pass.
PASSING = (DatabaseError, QueueFull)


@dataclass
class Pending:
    """A request file seen but not yet taken."""

    path: Path
    stat: tuple[int, int] | None = None  # (size, mtime_ns) when last looked at
    changed_at: float = field(default_factory=time.monotonic)
    complete_at: tuple[int, int] | None = None  # the stat at a rename-in or close-write
    written: bool = False  # seen growing in place
    stuck_at: tuple[int, int] | None = None  # its stat when it could not be moved aside


@dataclass
class InboxStats:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    observer_restarts: int = 0
    last_scan_at: datetime | None = None


# The events that matter. Natively there is no IN_MODIFY (an event per write call, a
# flood in a burst): a file still growing is seen from its size; the polling observer's
# "modified" is its only sign of a file rewritten in place.
_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileMovedEvent,
    FileClosedEvent,  # inotify's close-write
    DirCreatedEvent,
    DirMovedEvent,
]
_POLLED_EVENTS: list[type[FileSystemEvent]] = [*_EVENTS, FileModifiedEvent]


class _Events(FileSystemEventHandler):
    """Watchdog's thread hands file names to the inbox; nothing slow happens here."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileSystemMovedEvent):  # renamed in: written elsewhere
            self.inbox.notice(Path(os.fsdecode(event.dest_path)), complete=True)
        elif isinstance(event, FileClosedEvent):
            self.inbox.notice(Path(os.fsdecode(event.src_path)), complete=True)
        else:
            self.inbox.notice(Path(os.fsdecode(event.src_path)), complete=False)


class Inbox:
    """Watches one directory and turns its request files into jobs."""

    def __init__(
        self,
        directory: Path,
        store: Store,
        registry: ModelRegistry | None,
        *,
        defaults: GenerationDefaults,
        polling: bool = False,
        rescan_interval_s: float = 5.0,
        settle_s: float = 0.5,
        max_file_bytes: int = 1_048_576,
        after_accept: str = "move",
        default_model: str = "",
        faults: Faults = NO_FAULTS,
        data_dir: Path | None = None,  # where image inputs are stored; None: no images
        fetch: inputs.Fetch | None = None,  # input_image_urls (urls.py); None: refused
    ) -> None:
        self.directory = Path(directory)
        self.data_dir = data_dir
        self.fetch = fetch
        self.store = store
        self.registry = registry
        self.defaults = defaults
        self.polling = polling
        self.rescan_interval_s = rescan_interval_s
        self.settle_s = settle_s
        self.max_file_bytes = max_file_bytes
        self.after_accept = after_accept
        self.default_model = default_model
        self.faults = faults
        self.stats = InboxStats()
        self._pending: dict[Path, Pending] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._observer: BaseObserver | None = None
        self._worker: threading.Thread | None = None
        self._root = self.directory.resolve() if self.directory.exists() else self.directory
        self._last_taken = float("-inf")  # monotonic time a file was last taken

    @classmethod
    def from_settings(cls, settings: Settings, store: Store, **overrides: Any) -> Inbox:
        options = settings.inbox
        values: dict[str, Any] = {
            "defaults": settings.generation,
            "polling": options.polling,
            "rescan_interval_s": options.rescan_interval_s,
            "settle_s": options.settle_s,
            "max_file_bytes": options.max_file_bytes,
            "after_accept": options.after_accept,
            "default_model": settings.generation.default_model,
            "data_dir": Path(settings.paths.data_dir),
            "fetch": urls.fetcher(
                allow_private=settings.models.allow_private_urls,
                max_bytes=settings.server.max_image_body_bytes,
                timeout_s=settings.models.fetch_timeout_s,
            ),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        registry = ModelRegistry(settings.paths.models)
        return cls(Path(settings.paths.inbox), store, registry, **values)

    # -- running -----------------------------------------------------------------------

    def start(self) -> None:
        """Scan what is there, start watching, and take files in a worker thread."""
        for sub in (self.directory, self.directory / ACCEPTED, self.directory / REJECTED):
            sub.mkdir(parents=True, exist_ok=True)
        self._root = self.directory.resolve()
        self._start_observer()
        self.scan()
        self._worker = threading.Thread(target=self._work, name="inbox", daemon=True)
        self._worker.start()
        log.info(
            "watching %s (%s observer, rescan every %g s)",
            self.directory,
            "polling" if self.polling else "native",
            self.rescan_interval_s,
        )

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)

    def run_once(self) -> None:
        """Take every complete request file there now (no watching), then return."""
        for sub in (self.directory, self.directory / ACCEPTED, self.directory / REJECTED):
            sub.mkdir(parents=True, exist_ok=True)
        self._root = self.directory.resolve()
        self.scan()
        deadline = time.monotonic() + self.settle_s * 10 + 1
        with self.store.db.pinned():
            while self._pending and time.monotonic() < deadline:
                self.process_pending()
                if self._pending:
                    time.sleep(min(0.05, self.settle_s))

    def _start_observer(self) -> None:
        if not self.polling:
            _shorten_inotify_move_wait()
        observer: BaseObserver = PollingObserver(timeout=0.25) if self.polling else Observer()
        events = _POLLED_EVENTS if self.polling else _EVENTS
        observer.schedule(_Events(self), str(self.directory), event_filter=events)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def health(self) -> dict[str, Any]:
        observer = self._observer
        last = self.stats.last_scan_at
        return {
            "directory": str(self.directory),
            "observer": "polling" if self.polling else "native",
            "observer_alive": bool(observer is not None and observer.is_alive()),
            "observer_restarts": self.stats.observer_restarts,
            "last_scan_at": last.isoformat().replace("+00:00", "Z") if last else None,
            "pending": len(self._pending),
            "accepted": self.stats.accepted,
            "duplicates": self.stats.duplicates,
            "rejected": self.stats.rejected,
        }

    def _work(self) -> None:
        next_scan = time.monotonic() + self.rescan_interval_s
        with self.store.db.pinned():
            while not self._stop.is_set():
                now = time.monotonic()
                # While files come in, the kernel may drop events under the load (its
                # inotify queue overflows): rescan often then, rarely when all is quiet.
                active = now - self._last_taken < ACTIVE_WINDOW_S
                if active:
                    next_scan = min(next_scan, now + QUICK_RESCAN_S)
                # Pending files are looked at again soon; the observer each second.
                timeout = 0.05 if self._pending else min(1.0, next_scan - now)
                if self._wake.wait(max(0.0, timeout)):
                    # Let the files of a burst gather, to commit them together.
                    self._stop.wait(COALESCE_S)
                self._wake.clear()
                if self._stop.is_set():
                    return
                try:
                    self._keep_observer_alive()
                    if time.monotonic() >= next_scan:
                        self.scan()
                        next_scan = time.monotonic() + self.rescan_interval_s
                    self.process_pending()
                except SpoolError as exc:  # the database is away: the files wait
                    log.error("inbox: %s; retrying", exc.message)
                    self._stop.wait(1.0)
                except Exception:  # never let the worker die; the rescan retries
                    log.exception("inbox: unexpected error")
                    self._stop.wait(1.0)

    def _keep_observer_alive(self) -> None:
        observer = self._observer
        if observer is not None and not observer.is_alive() and not self._stop.is_set():
            log.error("the inbox observer thread died; starting a new one and rescanning")
            self._start_observer()
            self.stats.observer_restarts += 1
            self.scan()

    # -- finding files -------------------------------------------------------------------

    def notice(self, path: Path, *, complete: bool) -> None:
        """A file appeared or changed (from an event or a scan)."""
        if path.parent != self.directory or not is_request_name(path.name):
            return
        with self._lock:
            pending = self._pending.get(path)
            if pending is None:
                pending = self._pending[path] = Pending(path)
            if complete:
                pending.complete_at = file_stat(path)
        self._wake.set()

    def scan(self) -> None:
        """Every request file in the inbox now (the start-up scan and each rescan)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            self.directory.mkdir(parents=True, exist_ok=True)
            names = []
        for name in names:
            if is_request_name(name):
                self.notice(self.directory / name, complete=False)
        self.stats.last_scan_at = datetime.now(UTC)

    # -- taking files ----------------------------------------------------------------------

    def process_pending(self) -> None:
        """Take every pending file that is complete. Single requests are committed in
        groups, one transaction each, which is what makes a burst fast."""
        with self._lock:
            waiting = list(self._pending.values())
        group: list[_Ready] = []
        for pending in waiting:
            if self._stop.is_set():
                break
            if pending.stuck_at is not None and pending.stuck_at == file_stat(pending.path):
                continue  # taken, but it could not be moved out: left alone until it changes
            try:
                outcome = self._try(pending)
                if isinstance(outcome, _Ready) and outcome.path.name.endswith(".jsonl"):
                    if self._take_batch(outcome):
                        self._forget(pending)
                    continue
            except PASSING:
                raise  # every file waits until the database is back, or the queue has room
            except Exception as exc:  # whatever else: this file is rejected, and only it
                self._reject_unexpected(pending, exc)
                continue
            if isinstance(outcome, _Ready):
                group.append(outcome)
                if len(group) >= GROUP_SIZE:
                    self._take_group(group)
                    group = []
            elif outcome:
                self._forget(pending)
        if group:
            self._take_group(group)

    def _take_group(self, group: list[_Ready]) -> None:
        """Commit the single requests together; if that fails for any reason but the
        database, take them one by one, so that only a file that fails alone is
        rejected."""
        try:
            self._take_singles(group)
        except PASSING:
            raise
        except Exception as exc:
            if len(group) == 1:
                self._reject_unexpected(group[0].pending, exc)
                return
            for ready in group:
                self._take_group([ready])

    def _reject_unexpected(self, pending: Pending, exc: Exception) -> None:
        """A file whose taking failed in a way no rule foresaw: one rejection, logged with
        its traceback, and the inbox goes on."""
        name = shown(pending.path.name)
        log.error("inbox: taking %s failed", name, exc_info=exc)
        reason = InvalidParameters(f"{name} could not be taken: {type(exc).__name__}: {exc}")
        try:
            self._reject(pending.path, reason)
        except OSError as error:  # it cannot even be moved: leave it until it changes
            self._cannot_move(pending, error)
            return
        self._forget(pending)

    def _forget(self, pending: Pending) -> None:
        with self._lock:
            if self._pending.get(pending.path) is pending:
                del self._pending[pending.path]

    def _try(self, pending: Pending) -> _Ready | bool:
        """The file's requests if it is complete and valid; True when it was dealt with
        otherwise (rejected, or gone); False while it is not complete yet."""
        path = pending.path
        try:
            info = path.lstat()
        except FileNotFoundError:
            return True  # moved or deleted by someone else
        problem = self._refuse_name(path.name) or self._refuse_kind(path, info)
        if problem is not None:
            self._reject(path, problem)
            return True
        if stat_module.S_ISLNK(info.st_mode):  # a link to a file in the inbox: that file
            try:
                info = path.stat()
            except FileNotFoundError:
                return True
        now = time.monotonic()
        stat = (info.st_size, info.st_mtime_ns)
        if stat != pending.stat:
            if pending.stat is not None and not self.polling:
                pending.written = True  # growing in place: its close-write will come
            pending.stat, pending.changed_at = stat, now
        seen = Seen(
            complete=pending.complete_at == stat,
            written=pending.written,
            changed_ago_s=now - pending.changed_at,
            modified_ago_s=time.time() - info.st_mtime,
        )
        complete, quiet = seen.complete, settled(seen, self.settle_s)

        if info.st_size > self.max_file_bytes:
            self._reject(
                path,
                InvalidParameters(
                    f"{path.name} is {info.st_size} bytes; inbox.max_file_bytes is "
                    f"{self.max_file_bytes}"
                ),
            )
            return True
        is_json = path.name.endswith(".json")
        if not worth_reading(seen, self.settle_s, path.name):
            return False
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return True
        except OSError as exc:
            log.warning("cannot read %s yet: %s", path.name, exc.strerror)
            return False
        if len(data) != info.st_size:
            return False  # it changed while we read it: look again
        try:
            text = data.decode("utf-8")
            requests, staged = self._parse(text, path.name)
        except UnicodeDecodeError as exc:
            if not (complete or quiet):
                return False
            self._reject(
                path,
                InvalidParameters(
                    f"{path.name} is not UTF-8 text (byte {exc.start}: {data[exc.start]:#04x})"
                ),
            )
            return True
        except _Incomplete as exc:
            if still_writing(seen, self.settle_s):  # its writer may only be pausing
                return False
            self._reject(path, exc.error)
            return True
        except SpoolError as exc:
            if not (complete or quiet):
                return False
            self._reject(path, exc)
            return True
        if not is_json and not (complete or quiet):
            return False
        return _Ready(pending, data, requests, staged)

    @staticmethod
    def _refuse_name(name: str) -> SpoolError | None:
        """A name that is not valid UTF-8 (it cannot be recorded as the job's client)."""
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            return InvalidParameters(
                f"the file name {shown(name)!r} is not valid UTF-8; rename the file"
            )
        return None

    def _refuse_kind(self, path: Path, info: os.stat_result) -> SpoolError | None:
        """Directories, and links that lead out of the inbox, are not request files."""
        if stat_module.S_ISLNK(info.st_mode):
            target = path.resolve()
            if target.parent != self._root:
                return InvalidParameters(
                    f"{path.name} is a symbolic link to {target}, outside the inbox"
                )
            if not target.is_file():
                return InvalidParameters(f"{path.name} is a symbolic link to no regular file")
            if is_request_name(target.name):  # that file is taken itself: not twice
                return InvalidParameters(
                    f"{path.name} is a symbolic link to {target.name}, a request file of its own"
                )
            return None
        if stat_module.S_ISDIR(info.st_mode):
            return InvalidParameters(f"{path.name} is a directory, not a request file")
        if not stat_module.S_ISREG(info.st_mode):
            return InvalidParameters(f"{path.name} is not a regular file")
        return None

    def _parse(self, text: str, name: str) -> tuple[list[Request], list[inputs.Staged]]:
        """The file's requests, and the images each one names (decoded, checked)."""
        staged: list[inputs.Staged] = []

        def take_images(data: Any) -> Any:
            if not isinstance(data, dict) or not any(
                data.get(k) is not None
                for k in ("init_image", "mask_image", "input_images", "input_image_urls")
            ):
                staged.append(inputs.Staged())
                return data
            if self.data_dir is None:
                raise InvalidParameters("this inbox takes no image inputs", field="init_image")
            pixels = getattr(self.defaults, "max_input_pixels", inputs.MAX_INPUT_PIXELS)
            data, images = inputs.take(data, pixels, inbox=self.directory, fetch=self.fetch)
            staged.append(images)
            return data

        if name.endswith(".jsonl"):
            requests = parse_jsonl(text, name, self.defaults, prepare=take_images)
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                try:
                    parse_json(text, name)
                except InvalidParameters as exc:
                    raise _Incomplete(exc) from None
                raise
            except (ValueError, RecursionError):  # too deep, or a number too long
                parse_json(text, name)  # raises with the reason
                raise
            try:
                requests = [parse_request(take_images(data), self.defaults)]
            except InvalidParameters as exc:
                raise InvalidParameters(f"{name}: {exc.message}", field=exc.field) from None
        line = name.endswith(".jsonl")
        checked = [
            self._with_model(request, name, number if line else None)
            for number, request in enumerate(requests, start=1)
        ]
        return checked, staged

    def _with_model(self, request: Request, name: str, line: int | None) -> Request:
        """An unknown model is refused now, as the API refuses it, not at run time; a
        request that names none gets the default model's name, as at every door."""
        if self.registry is None:
            return request
        try:
            spec = self.registry.with_model(request.spec, self.default_model)
        except (ModelNotFound, LoraNotFound, InvalidParameters) as exc:
            where = f"{name} line {line}" if line else name
            raise type(exc)(f"{where}: {exc.message}", **{**exc.details, "line": line}) from None
        return replace(request, spec=spec)

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

    def _take_singles(self, group: list[_Ready]) -> None:
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
            answers = self.store.enqueue_keyed(items, source=Source.INBOX)
        except BaseException:
            self._drop_inputs(job_ids, set())
            raise
        made = {a.job.id for a in answers if not isinstance(a, IdempotencyConflict) and a.created}
        self._drop_inputs(job_ids, made)
        self.faults.crash_point("inbox_committed")
        for ready, answer in zip(group, answers, strict=True):
            try:
                if isinstance(answer, IdempotencyConflict):
                    self._reject(ready.path, answer)
                else:
                    self._accepted(ready.path, answer.created, f"job {answer.job.id}")
            except OSError as exc:  # committed, but it cannot be moved out
                self._cannot_move(ready.pending, exc)
                continue
            self._forget(ready.pending)

    def _cannot_move(self, pending: Pending, exc: OSError) -> None:
        """The file cannot be moved or deleted (its jobs, if any, are committed: taking it
        again adds nothing): left where it is, not looked at again until it changes."""
        log.error("inbox: cannot move %s out of the inbox: %s", shown(pending.path.name), exc)
        pending.stuck_at = file_stat(pending.path)

    def _take_batch(self, ready: _Ready) -> bool:
        """Commit a JSONL file's jobs as one batch; False if the file stays (stuck)."""
        job_ids = [self._store_inputs(staged) for staged in ready.staged]
        items = [
            NewJob(r.spec, r.idempotency_key or f"{ready.key}:{i}", ready.path.name, job_id)
            for i, (r, job_id) in enumerate(zip(ready.requests, job_ids, strict=True), start=1)
        ]
        try:
            batch = self.store.enqueue_batch(items, source=Source.INBOX)
        except (InvalidParameters, IdempotencyConflict) as exc:
            self._drop_inputs(job_ids, set())
            self._reject(ready.path, exc)
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
            self._cannot_move(ready.pending, exc)
            return False
        return True

    def _accepted(self, path: Path, created: bool, what: str) -> None:
        """The file's jobs are committed: move it out of the way (or delete it)."""
        name = path.name
        if self.after_accept == "delete":
            path.unlink(missing_ok=True)
        else:
            move_aside(path, self.directory / ACCEPTED)
        self._last_taken = time.monotonic()
        if created:
            self.stats.accepted += 1
            log.info("took %s as %s", name, what, extra={"file": name})
        else:
            self.stats.duplicates += 1
            log.info("%s was taken before, as %s; nothing new queued", name, what)

    def _reject(self, path: Path, error: SpoolError) -> None:
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


@dataclass
class _Ready:
    """A complete, valid request file, about to be taken."""

    pending: Pending
    data: bytes
    requests: list[Request]
    staged: list[inputs.Staged]  # each request's images, stored with its job

    @property
    def path(self) -> Path:
        return self.pending.path

    @property
    def key(self) -> str:
        """The idempotency key of a request without an `id`: the file's name and content."""
        digest = hashlib.sha256(self.path.name.encode() + b"\0" + self.data).hexdigest()
        return f"inbox:{digest[:40]}"


class _Incomplete(Exception):
    """A .json file whose text is not valid JSON (perhaps not yet)."""

    def __init__(self, error: SpoolError) -> None:
        super().__init__(error.message)
        self.error = error


def _shorten_inotify_move_wait() -> bool:
    """Watchdog's inotify emitter holds each IN_MOVED_FROM for half a second, hoping for
    its IN_MOVED_TO, and its reader sleeps that half second even when the pair arrives
    at once; every file this inbox moves to accepted/ is such an unpaired event, so all
    events would lag by half a second. The kernel writes both halves of a rename
    together, so a few milliseconds still pair them.

    This sets a class attribute of watchdog's that is not public API (pyproject.toml pins
    the versions that have it, and a test checks it); a watchdog without it is said in
    the log, once, rather than silently lagging. True when the wait was shortened."""
    if not sys.platform.startswith("linux"):
        return False  # no inotify: another emitter, no such wait
    try:
        from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper
    except ImportError:
        grouper = None
    else:
        grouper = InotifyMoveEventGrouper
    delay = getattr(grouper, "delay", None)
    if grouper is None or not isinstance(delay, int | float):
        log.warning(
            "this watchdog has no InotifyMoveEventGrouper.delay: inbox events may lag by "
            "half a second (the polling observer, inbox.polling = true, does not)"
        )
        return False
    grouper.delay = min(delay, MOVE_PAIRING_S)
    return True
