"""The download worker: claims queued downloads from the store (one worker per row) and
runs each to its end: fetched into `<models>/.downloads/<id>/` (resumed after a dropped
connection or a restart), verified (size, SHA-256 where the source gives one, the
safetensors header), installed without overwriting anything, and finished in its row.
Cancel and failure remove the partial files. Today it runs `url` downloads; the other
sources fail clearly until they are built."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import urls
from ..errors import DownloadFailed, DownloadNotFound, LeaseLost, ModelExists, SpoolError
from ..loras import LORAS_DIR, lora_family
from ..models import DownloadStatus
from ..records import DownloadRecord
from ..safetensors_file import read_safetensors_header
from ..store import Store
from . import files
from .transfer import Fetched, Stopped, Transient, fetch_to_file

log = logging.getLogger(__name__)
PART = "file.part"


class Released(Exception):
    """The worker is stopping: the download goes back in the queue, its bytes kept."""


@dataclass(frozen=True)
class WorkerOptions:
    owner: str  # the lease owner's name: a host and process
    allow_private_urls: bool = False
    allow_pickle: bool = False
    lease_s: float = 60.0
    retries: int = 3  # transfers per claim after a dropped connection, each resumed
    retry_wait_s: float = 1.0
    progress_every_s: float = 0.25  # at most 4 row writes a second
    poll_s: float = 1.0


class DownloadWorker:
    def __init__(
        self,
        store: Store,
        models_dir: Path,
        options: WorkerOptions,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.models_dir = Path(models_dir)
        self.options = options
        self.rules = urls.UrlRules(allow_private=options.allow_private_urls)
        self.sleep = sleep
        self._stop: threading.Event | None = None  # set: hand the download back

    def start(self) -> list[str]:
        """What this worker held when it last stopped goes back in the queue (its bytes
        kept); the staging files of downloads that ended meanwhile (cancelled while
        their worker was down, say) are removed. Returns the ids put back."""
        back = self.store.requeue_download_orphans(owner=self.options.owner)
        staging = self.models_dir / files.STAGING_DIR
        for entry in sorted(staging.iterdir()) if staging.is_dir() else []:
            try:
                ended = self.store.get_download(entry.name).status.finished
            except DownloadNotFound:
                ended = True
            if ended:
                shutil.rmtree(entry, ignore_errors=True)
        return back

    def run(self, stop: threading.Event) -> None:
        """Take downloads until `stop` is set (one in progress goes back in the queue
        at its next report, its bytes kept for the resume); idle, look again every
        `poll_s` (and rescue downloads whose workers died)."""
        self._stop = stop
        self.start()
        while not stop.is_set():
            if self.run_once() is None:
                self.store.requeue_download_orphans()
                stop.wait(self.options.poll_s)

    def run_once(self) -> DownloadRecord | None:
        """Claim one queued download and run it to its end; None if none was queued."""
        claimed = self.store.claim_download(self.options.owner, lease_s=self.options.lease_s)
        if claimed is None:
            return None
        return self.run_download(claimed)

    def run_download(self, download: DownloadRecord) -> DownloadRecord:
        """Run a download this worker holds to its end (success, failure or cancel)."""
        log.info("download %s started (%s)", download.id, download.source)
        try:
            return self._run(download)
        except LeaseLost:
            log.warning("download %s was taken over; leaving it", download.id)
            return self.store.get_download(download.id)

    # -- one download ----------------------------------------------------------------------

    def _run(self, download: DownloadRecord) -> DownloadRecord:
        staging = files.staging_dir(self.models_dir, download.id)
        try:
            if download.source != "url":
                raise DownloadFailed(f"{download.source} downloads are not available yet")
            if download.kind == "diffusers":  # refused before a byte is fetched
                raise DownloadFailed("a URL gives one file; a diffusers model is a folder")
            fetched = self._fetch(download, staging / PART)
            self._report(download, fetched.size, fetched.size, None, DownloadStatus.VERIFYING)
            model = self._install(download, fetched)
        except Released:
            log.info("download %s handed back on stop; it resumes later", download.id)
            self.store.requeue_download_orphans(owner=self.options.owner)
            return self.store.get_download(download.id)
        except Stopped:
            shutil.rmtree(staging, ignore_errors=True)
            log.info("download %s cancelled", download.id)
            return self._finish(download, DownloadStatus.CANCELLED)
        except LeaseLost:
            raise
        except SpoolError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            log.warning("download %s failed: %s", download.id, exc.message)
            return self._finish(download, DownloadStatus.FAILED, error=exc)
        except Exception as exc:  # a bug or the disk: the row must still end
            shutil.rmtree(staging, ignore_errors=True)
            log.exception("download %s failed", download.id)
            error = DownloadFailed(f"the download failed: {type(exc).__name__}: {exc}")
            return self._finish(download, DownloadStatus.FAILED, error=error)
        shutil.rmtree(staging, ignore_errors=True)
        log.info("download %s installed %s", download.id, model)
        return self._finish(download, DownloadStatus.SUCCEEDED, model=model)

    def _fetch(self, download: DownloadRecord, part: Path) -> Fetched:
        url = str(download.reference.get("url", ""))
        reported = [time.monotonic(), download.bytes_done]

        def progress(done: int, total: int | None) -> bool:
            if self._stop is not None and self._stop.is_set():
                raise Released
            now = time.monotonic()
            elapsed = now - reported[0]
            if elapsed < self.options.progress_every_s:
                return True
            speed = (done - reported[1]) / elapsed if elapsed > 0 else None
            reported[:] = [now, done]
            return not self._report(download, done, total, speed).cancel_requested

        for attempt in range(1, self.options.retries + 1):
            try:
                return fetch_to_file(url, part, self.rules, on_progress=progress)
            except Transient as exc:
                if attempt == self.options.retries:
                    raise DownloadFailed(f"{exc.message} ({attempt} tries)") from None
                log.info("download %s: %s; resuming", download.id, exc.message)
                self.sleep(self.options.retry_wait_s * attempt)
        raise AssertionError("unreachable")

    def _install(self, download: DownloadRecord, fetched: Fetched) -> str:
        expected = download.reference.get("sha256")
        if expected and str(expected).lower() != fetched.sha256:
            raise DownloadFailed(
                f"the file's SHA-256 is {fetched.sha256}, not the {expected} the source gave"
            )
        form = files.check_weights(fetched.path, allow_pickle=self.options.allow_pickle)
        kind = download.kind or self._kind_of(fetched.path, form)
        stem = files.safe_name(download.name or fetched.name.rsplit(".", 1)[0])
        suffix = ".safetensors" if form == "safetensors" else ".ckpt"
        if kind == "lora":
            target, model = self.models_dir / LORAS_DIR / f"{stem}{suffix}", f"lora/{stem}"
        elif kind == "checkpoint":
            target, model = self.models_dir / f"{stem}{suffix}", f"sd/{stem}"
        else:
            raise DownloadFailed(f"a URL gives one file, not a {kind} model")
        if (self.models_dir / stem).exists() and kind == "checkpoint":
            raise ModelExists(f"a model named {stem} is already installed")
        try:
            files.install(fetched.path, target)
        except ModelExists:
            # The same bytes there already: an earlier attempt of this download installed
            # them and died before its row said so. Anything else is never overwritten.
            if not files.same_content(target, fetched.sha256):
                raise
            fetched.path.unlink()
        return model

    @staticmethod
    def _kind_of(path: Path, form: str) -> str:
        if form != "safetensors":
            return "checkpoint"
        return "lora" if lora_family(read_safetensors_header(path)) is not None else "checkpoint"

    def _report(
        self,
        download: DownloadRecord,
        done: int,
        total: int | None,
        speed: float | None,
        status: DownloadStatus = DownloadStatus.DOWNLOADING,
    ) -> DownloadRecord:
        return self.store.download_progress(
            download.id,
            self.options.owner,
            bytes_done=done,
            bytes_total=total,
            speed_bps=speed,
            lease_s=self.options.lease_s,
            status=status,
        )

    def _finish(
        self,
        download: DownloadRecord,
        status: DownloadStatus,
        *,
        model: str | None = None,
        error: SpoolError | None = None,
    ) -> DownloadRecord:
        return self.store.finish_download(
            download.id, self.options.owner, status, model=model, error=error
        )


class WorkerPool:
    """`count` download workers in threads of this process (inside `serve` and `api`),
    named `<host>:download-<i>` so that a restart takes back at once what they held."""

    def __init__(
        self,
        store: Store,
        models_dir: Path,
        *,
        host: str,
        count: int,
        allow_private_urls: bool,
        allow_pickle: bool,
    ) -> None:
        self.workers = [
            DownloadWorker(
                store,
                models_dir,
                WorkerOptions(
                    owner=f"{host}:download-{i}",
                    allow_private_urls=allow_private_urls,
                    allow_pickle=allow_pickle,
                ),
            )
            for i in range(count)
        ]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for worker in self.workers:
            thread = threading.Thread(
                target=worker.run, args=(self._stop,), name=worker.options.owner, daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop taking downloads; one in progress goes back in the queue at its next
        progress report (its bytes kept), or, if it does not come to one in time, when
        the workers start again."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout_s)
