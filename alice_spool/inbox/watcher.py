"""The inbox watcher: finds request files (a scan at start, watchdog's events, a rescan
every `inbox.rescan_interval_s`), keeps them pending until they are complete, and takes
them in a worker thread."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
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

from .. import inputs, urls
from ..config import Settings
from ..errors import SpoolError
from ..faults import NO_FAULTS, Faults
from ..library.registry import ModelRegistry
from ..spec import GenerationDefaults
from ..store import Store
from .files import ACCEPTED, REJECTED, file_stat, is_request_name
from .reading import Pending, Reader, Ready
from .taking import PASSING, InboxStats, Taker

log = logging.getLogger("alice_spool.inbox")

MOVE_PAIRING_S = 0.02
GROUP_SIZE = 200  # single-request files committed per transaction
COALESCE_S = 0.01  # after a wake-up, how long the files of a burst may gather
ACTIVE_WINDOW_S = 5.0  # for this long after a file was taken ...
QUICK_RESCAN_S = 0.5  # ... the directory is rescanned this often


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
        self.reader = Reader(
            self.directory,
            registry,
            defaults=defaults,
            polling=polling,
            settle_s=settle_s,
            max_file_bytes=max_file_bytes,
            default_model=default_model,
            data_dir=data_dir,
            fetch=fetch,
        )
        self.taker = Taker(
            self.directory,
            store,
            after_accept=after_accept,
            faults=faults,
            data_dir=data_dir,
            stats=self.stats,
            forget=self._forget,
        )
        self._pending: dict[Path, Pending] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._observer: BaseObserver | None = None
        self._worker: threading.Thread | None = None

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
        self.reader.root = self.directory.resolve()
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
        self.reader.root = self.directory.resolve()
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
                active = now - self.taker.last_taken < ACTIVE_WINDOW_S
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
        group: list[Ready] = []
        for pending in waiting:
            if self._stop.is_set():
                break
            if pending.stuck_at is not None and pending.stuck_at == file_stat(pending.path):
                continue  # taken, but it could not be moved out: left alone until it changes
            try:
                outcome = self.reader.read(pending)
                if isinstance(outcome, SpoolError):
                    self.taker.reject(pending.path, outcome)
                    outcome = True
                if isinstance(outcome, Ready) and outcome.path.name.endswith(".jsonl"):
                    if self.taker.take_batch(outcome):
                        self._forget(pending)
                    continue
            except PASSING:
                raise  # every file waits until the database is back, or the queue has room
            except Exception as exc:  # whatever else: this file is rejected, and only it
                self.taker.reject_unexpected(pending, exc)
                continue
            if isinstance(outcome, Ready):
                group.append(outcome)
                if len(group) >= GROUP_SIZE:
                    self.taker.take_group(group)
                    group = []
            elif outcome:
                self._forget(pending)
        if group:
            self.taker.take_group(group)

    def _forget(self, pending: Pending) -> None:
        with self._lock:
            if self._pending.get(pending.path) is pending:
                del self._pending[pending.path]


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
