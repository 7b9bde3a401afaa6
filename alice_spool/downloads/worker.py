"""The download worker: claims queued downloads from the store (one worker per row) and
runs each to its end: fetched into `<models>/.downloads/<id>/` (resumed after a dropped
connection or a restart), verified (size, SHA-256 where the source gives one, the
safetensors header), installed without overwriting anything, and finished in its row.
Cancel and failure remove the partial files.

What a download fetches is its plan (plan.py), asked of its source (sources.py) once and
kept in the row: a URL's one file, a Hugging Face repository's pipeline files at one
commit, or a CivitAI file. Each file is fetched and verified on its own, so a restart
asks only for the bytes still missing of the file it was in."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..errors import DownloadFailed, DownloadNotFound, LeaseLost, ModelExists, SpoolError
from ..library.loras import LORAS_DIR, lora_family
from ..library.registry import ModelRegistry
from ..library.safetensors_file import read_safetensors_header
from ..records import DownloadRecord
from ..spec import MODEL_PREFIX
from ..states import DownloadStatus
from ..store import Store
from . import files
from .plan import SINGLE as PART
from .plan import Access, Plan, RemoteFile
from .sources import SourceSettings
from .transfer import Fetched, Stopped, Transient, fetch_to_file

log = logging.getLogger(__name__)
MODEL = "model"  # a diffusers model's files, under the staging folder
META = "meta"  # what the transfers keep about each file (validator, verified)
T = TypeVar("T")


def staged(staging: Path, path: str) -> tuple[Path, Path, Path]:
    """Where a file of a download is staged, where its server's validator is kept (for
    the resume), and where it is marked fetched and verified."""
    meta = staging / META / path.replace("/", "__")
    landing = staging / path if path == PART else staging / MODEL / path
    return landing, meta.with_name(meta.name + ".validator"), meta.with_name(meta.name + ".ok")


def _verified_before(verified: Path, path: Path) -> Fetched | None:
    """The file as it was verified before a restart, if its mark says so and the file
    still has that size; None (fetch it again) for anything else."""
    try:
        kept = json.loads(verified.read_text())
        if path.stat().st_size == kept["size"]:
            return Fetched(path, int(kept["size"]), str(kept["sha256"]), str(kept["name"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


class Released(Exception):
    """The worker is stopping: the download goes back in the queue, its bytes kept."""


@dataclass(frozen=True)
class WorkerOptions:
    owner: str  # the lease owner's name: a host and process
    lease_s: float = 60.0
    retries: int = 3  # tries per claim after a dropped connection, each resumed
    retry_wait_s: float = 1.0
    progress_every_s: float = 0.25  # at most 4 row writes a second
    poll_s: float = 1.0


class DownloadWorker:
    def __init__(
        self,
        store: Store,
        models_dir: Path,
        options: WorkerOptions,
        sources: SourceSettings,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.models_dir = Path(models_dir)
        self.options = options
        self.sources = sources
        self.sleep = sleep
        self._stop: threading.Event | None = None  # set: hand the download back

    def start(self) -> list[str]:
        """What this worker held when it last stopped goes back in the queue (its bytes
        kept); the staging files of downloads that ended meanwhile (cancelled while
        their worker was down, say) are removed. Returns the ids put back."""
        back = self.store.downloads.requeue_download_orphans(owner=self.options.owner)
        staging = self.models_dir / files.STAGING_DIR
        for entry in sorted(staging.iterdir()) if staging.is_dir() else []:
            try:
                ended = self.store.downloads.get_download(entry.name).status.finished
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
                self.store.downloads.requeue_download_orphans()
                stop.wait(self.options.poll_s)

    def run_once(self) -> DownloadRecord | None:
        """Claim one queued download and run it to its end; None if none was queued."""
        claimed = self.store.downloads.claim_download(
            self.options.owner, lease_s=self.options.lease_s
        )
        if claimed is None:
            return None
        return self.run_download(claimed)

    def run_download(
        self, download: DownloadRecord, *, stop: threading.Event | None = None
    ) -> DownloadRecord:
        """Run a download this worker holds to its end (success, failure or cancel);
        `stop` set hands it back to the queue at its next report, bytes kept."""
        if stop is not None:
            self._stop = stop
        log.info("download %s started (%s)", download.id, download.source)
        try:
            return self._run(download)
        except LeaseLost:
            log.warning("download %s was taken over; leaving it", download.id)
            return self.store.downloads.get_download(download.id)

    # -- one download ----------------------------------------------------------------------

    def _run(self, download: DownloadRecord) -> DownloadRecord:
        staging = files.staging_dir(self.models_dir, download.id)
        try:
            plan = self._retrying(download, lambda: self._plan(download))
            access = self.sources.access(download.source)
            installed = self._installed_already(plan)
            if installed is None:
                if plan.name and plan.kind:  # refused before anything is fetched
                    files.check_name_free(self.models_dir, plan.kind, plan.name)
                fetched = self._retrying(
                    download, lambda: self._fetch_all(download, plan, access, staging)
                )
                done = sum(f.size for f in fetched)
                if self._report(
                    download, done, done, None, DownloadStatus.VERIFYING
                ).cancel_requested:
                    raise Stopped("the download was cancelled")  # asked before it was installed
                installed = self._install(download, plan, fetched, staging)
        except Released:
            log.info("download %s handed back on stop; it resumes later", download.id)
            self.store.downloads.requeue_download_orphans(owner=self.options.owner)
            return self.store.downloads.get_download(download.id)
        except Stopped:
            shutil.rmtree(staging, ignore_errors=True)
            log.info("download %s cancelled", download.id)
            return self._finish(download, DownloadStatus.CANCELLED)
        except LeaseLost:
            raise
        except SpoolError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            log.warning("download %s failed (%s): %s", download.id, exc.code, exc.message)
            return self._finish(download, DownloadStatus.FAILED, error=exc)
        except Exception as exc:  # a bug or the disk: the row must still end
            shutil.rmtree(staging, ignore_errors=True)
            log.exception("download %s failed", download.id)
            error = DownloadFailed(f"the download failed: {type(exc).__name__}: {exc}")
            return self._finish(download, DownloadStatus.FAILED, error=error)
        shutil.rmtree(staging, ignore_errors=True)
        log.info("download %s installed %s", download.id, installed)
        self._take_as_default(download, installed)
        return self._finish(download, DownloadStatus.SUCCEEDED, model=installed)

    def _take_as_default(self, download: DownloadRecord, model_id: str) -> None:
        """Only an admin moves the default model. The one case a download does: while
        the default pinned is the smoke-test model (random weights: its images are
        noise), the first real model an admin installs (an admin's key, the CLI, an
        open server) takes its place, as the admin would choose at once anyway. A
        user's download never moves it."""
        registry = ModelRegistry(self.models_dir)
        chosen = registry.chosen_default()
        if chosen is None or not model_id.startswith(MODEL_PREFIX) or not self._admins(download):
            return
        try:
            if not registry.get(chosen).smoke_test or not registry.get(model_id).ok:
                return
            registry.set_default(model_id)
        except SpoolError as exc:  # the model is unusable after all: the default stays
            log.warning("%s did not become the default model: %s", model_id, exc.message)
            return
        log.info("default model: %s (in place of the smoke-test model %s)", model_id, chosen)

    def _admins(self, download: DownloadRecord) -> bool:
        """Whether an admin asked for the download: no owner (the CLI, the inbox's
        admin, an open server), a configured key (all admins), or a stored admin key."""
        owner = download.owner
        if owner is None or owner.startswith("config:"):
            return True
        try:
            key = self.store.keys.get_key(owner)
        except SpoolError:
            return False  # the key is gone: nobody vouches for it
        return key.id == owner and key.role == "admin"

    def _retrying(self, download: DownloadRecord, step: Callable[[], T]) -> T:
        """`step()`, tried again (resuming) after a dropped connection or a source that
        answered 5xx, `retries` times in all."""
        for attempt in range(1, self.options.retries + 1):
            try:
                return step()
            except Transient as exc:
                if attempt == self.options.retries:
                    raise DownloadFailed(f"{exc.message} ({attempt} tries)") from None
                log.info("download %s: %s; trying again", download.id, exc.message)
                self.sleep(self.options.retry_wait_s * attempt)
        raise AssertionError("unreachable")

    def _plan(self, download: DownloadRecord) -> Plan:
        """The plan kept in the row (a resumed download fetches what it began), else the
        source's, kept now."""
        kept = download.reference.get("plan")
        if kept is not None:
            return Plan.from_dict(kept)
        reference = {k: v for k, v in download.reference.items() if k != "plan"}
        plan = self.sources.plan(download.source, reference, download.kind, download.name)
        self.store.downloads.plan_download(
            download.id,
            self.options.owner,
            plan.to_dict(),
            kind=plan.kind or download.kind,
            name=plan.name or download.name,
            bytes_total=plan.total,
        )
        return plan

    def _fetch_all(
        self, download: DownloadRecord, plan: Plan, access: Access, staging: Path
    ) -> list[Fetched]:
        """Each file of the plan in the staging folder, verified; a file fetched and
        verified before (a resumed download) is not asked for again."""
        fetched: list[Fetched] = []
        total = plan.total
        for remote in plan.files:
            before = sum(f.size for f in fetched)
            fetched.append(self._fetch_one(download, remote, access, staging, before, total))
        return fetched

    def _fetch_one(
        self,
        download: DownloadRecord,
        remote: RemoteFile,
        access: Access,
        staging: Path,
        before: int,
        total: int | None,
    ) -> Fetched:
        path, validator, verified = staged(staging, remote.path)
        kept = _verified_before(verified, path)  # fetched and verified before a restart
        if kept is not None:
            return kept
        reported = [time.monotonic(), before + (path.stat().st_size if path.exists() else 0)]

        def progress(done: int, size: int | None) -> bool:
            if self._stop is not None and self._stop.is_set():
                raise Released
            now = time.monotonic()
            elapsed = now - reported[0]
            if elapsed < self.options.progress_every_s:
                return True
            speed = (before + done - reported[1]) / elapsed if elapsed > 0 else None
            reported[:] = [now, before + done]
            whole = total if total is not None else (before + size if size is not None else None)
            return not self._report(download, before + done, whole, speed).cancel_requested

        got = fetch_to_file(
            remote.url,
            path,
            access.rules,
            on_progress=progress,
            token_hint=access.token_hint,
            secret_headers=access.secret_headers,
            weights=remote.weights,
            validator_file=validator,
        )
        try:
            self._verify(remote, got)
        except DownloadFailed:
            path.unlink(missing_ok=True)  # not these bytes again
            raise
        verified.parent.mkdir(parents=True, exist_ok=True)
        marking = verified.with_name(verified.name + ".tmp")  # whole or not at all
        marking.write_text(json.dumps({"name": got.name, "size": got.size, "sha256": got.sha256}))
        os.replace(marking, verified)
        return got

    @staticmethod
    def _verify(remote: RemoteFile, got: Fetched) -> None:
        shown = remote.path if remote.path != PART else got.name
        if remote.size is not None and got.size != remote.size:
            raise DownloadFailed(
                f"{shown} is {got.size} bytes, not the {remote.size} the source gave"
            )
        if remote.sha256 and remote.sha256.lower() != got.sha256:
            raise DownloadFailed(
                f"{shown}'s SHA-256 is {got.sha256}, not the {remote.sha256.lower()} the "
                "source gave"
            )
        if remote.git_blob:
            digest = hashlib.sha1(b"blob %d\0" % got.size)
            with got.path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
            if digest.hexdigest() != remote.git_blob:
                raise DownloadFailed(f"{shown} is not the file the repository lists")

    def _target(self, kind: str, name: str, suffix: str) -> tuple[Path, str]:
        if kind == "lora":
            return self.models_dir / LORAS_DIR / f"{name}{suffix}", f"lora/{name}"
        if kind == "checkpoint":
            return self.models_dir / f"{name}{suffix}", f"sd/{name}"
        return self.models_dir / name, f"sd/{name}"

    def _installed_already(self, plan: Plan) -> str | None:
        """The model id if this plan's model is installed with exactly its files (an
        earlier attempt of this download did it, and died before its row said so)."""
        if not plan.name or not plan.kind or not all(f.sha256 for f in plan.files if f.weights):
            return None
        if plan.kind == "diffusers":
            target, model = self._target("diffusers", plan.name, "")
            complete = target.is_dir() and all(
                (target / f.path).is_file()
                and (f.size is None or (target / f.path).stat().st_size == f.size)
                and (not f.sha256 or files.same_content(target / f.path, f.sha256))
                for f in plan.files
            )
            return model if complete else None
        target, model = self._target(plan.kind, plan.name, ".safetensors")
        sha = plan.files[0].sha256
        return model if sha and target.is_file() and files.same_content(target, sha) else None

    def _install(
        self, download: DownloadRecord, plan: Plan, fetched: list[Fetched], staging: Path
    ) -> str:
        if plan.kind == "diffusers":
            return self._install_folder(plan, staging / MODEL)
        got = fetched[0]
        form = files.check_weights(got.path, allow_pickle=self.sources.allow_pickle)
        kind = plan.kind or self._kind_of(got.path, form)
        stem = files.safe_name(plan.name or got.name.rsplit(".", 1)[0])
        suffix = ".safetensors" if form == "safetensors" else ".ckpt"
        if kind not in ("lora", "checkpoint"):
            raise DownloadFailed(f"one file is not a {kind} model")
        target, model = self._target(kind, stem, suffix)
        if kind == "checkpoint" and (self.models_dir / stem).is_dir():
            raise ModelExists(f"a model named {stem} is already installed")  # sd/<stem> too
        try:
            files.install(got.path, target)
        except ModelExists:
            # The same bytes there already: an earlier attempt of this download installed
            # them and died before its row said so. Anything else is never overwritten.
            if not files.same_content(target, got.sha256):
                raise
            got.path.unlink()
        return model

    def _install_folder(self, plan: Plan, folder: Path) -> str:
        """A diffusers model: every weights file's header checked, each file and
        folder fsynced, the folder renamed into place (never over an existing one)."""
        for remote in plan.files:
            if remote.path.endswith(".safetensors"):
                files.check_weights(folder / remote.path, allow_pickle=False)
        if not (folder / "model_index.json").is_file():
            raise DownloadFailed("the repository gave no model_index.json")
        target, model = self._target("diffusers", plan.name, "")
        files.check_name_free(self.models_dir, "diffusers", plan.name)  # a file is sd/<name> too
        files.install_folder(folder, target)
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
        return self.store.downloads.download_progress(
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
        return self.store.downloads.finish_download(
            download.id, self.options.owner, status, model=model, error=error
        )


LOCKS_DIR = ".download-workers"
MAX_SLOTS = 64


def take_names(lock_dir: Path, host: str, count: int) -> tuple[list[str], list[int]]:
    """`count` worker names `<host>:download-<i>`, the lowest no other live process
    holds, each held by an flock on `<lock_dir>/<name>.lock` (the kernel drops it when
    the process dies, however it dies). Stable names let a restarted worker take back
    at once what it held; the locks keep two processes on one host from sharing one.
    Returns the names and the open lock files (closed to let them go)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    held: list[int] = []
    for i in range(MAX_SLOTS):
        if len(names) == count:
            break
        name = f"{host}:download-{i}"
        fd = os.open(lock_dir / f"{files.safe_name(name)}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        names.append(name)
        held.append(fd)
    if len(names) < count:
        for fd in held:
            os.close(fd)
        raise DownloadFailed(f"more than {MAX_SLOTS} download workers on {host}")
    return names, held


class WorkerPool:
    """`count` download workers in threads of this process (inside `serve`, `api` and
    `downloader`), named `<host>:download-<i>` with the lowest slots free on this host
    (`take_names`), so that a restart takes back at once what they held."""

    def __init__(
        self, store: Store, models_dir: Path, sources: SourceSettings, *, host: str, count: int
    ) -> None:
        names, self._locks = take_names(Path(models_dir) / LOCKS_DIR, host, count)
        self.workers = [
            DownloadWorker(store, models_dir, WorkerOptions(owner=name), sources) for name in names
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
        for fd in self._locks:
            os.close(fd)
        self._locks = []
