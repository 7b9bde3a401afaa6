"""One file fetched into its staging path, resumable: the bytes already there are asked
for no more (`Range` with `If-Range`, the validator the server gave kept beside the
file); a server that answers 200 instead starts the file again from 0. The SHA-256 is
computed as the bytes arrive (the kept bytes first), the disk's room is checked before
and while writing, and the first bytes must not be a web page."""

from __future__ import annotations

import hashlib
import os
import queue
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from .. import urls
from ..errors import DownloadFailed, SpoolError, Unauthorized
from .files import check_first_bytes, check_room, safe_name

CHUNK = 1 << 20
ROOM_EVERY = 64 << 20  # bytes written between free-space checks (and write-back starts)
HASH_BATCH = 4 << 20  # bytes handed to the hashing thread at once
HEAD_BYTES = 64  # what the page check reads of a body
_FILENAME_STAR = re.compile(r"filename\*\s*=\s*(?:UTF-8|utf-8)''([^;]+)")
_FILENAME = re.compile(r'filename\s*=\s*"?([^";]+)"?')
Progress = Callable[[int, int | None], bool]  # (bytes done, total) -> go on?


class Stopped(SpoolError):
    """The transfer was stopped (cancelled)."""

    code = "cancelled"


class Transient(DownloadFailed):
    """The connection failed in a way that a resume may get past."""


@dataclass(frozen=True)
class Fetched:
    path: Path
    size: int
    sha256: str
    name: str  # from Content-Disposition, else the URL's path (one safe component)


class Hashing:
    """SHA-256 of the bytes as they arrive, computed in a thread of its own (hashlib lets
    go of the GIL for large buffers) so that it overlaps the receiving and writing
    instead of adding to them. Batches of chunks are handed over, not each chunk."""

    def __init__(self, digest: Any) -> None:
        self.digest = digest
        self._batch: list[bytes] = []
        self._size = 0
        self._queue: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._failed: BaseException | None = None

    def __enter__(self) -> Hashing:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def add(self, chunk: bytes) -> None:
        self._batch.append(chunk)
        self._size += len(chunk)
        if self._size >= HASH_BATCH:
            self._queue.put(self._batch)
            self._batch, self._size = [], 0

    def hexdigest(self) -> str:
        self._close()
        if self._failed is not None:
            raise self._failed
        return str(self.digest.hexdigest())

    def _close(self) -> None:
        if self._thread.is_alive():
            if self._batch:
                self._queue.put(self._batch)
                self._batch, self._size = [], 0
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            try:
                for chunk in batch:
                    self.digest.update(chunk)
            except BaseException as exc:  # said by hexdigest
                self._failed = exc


def write_back(fd: int) -> None:
    """Start writing what is written so far to the disk, without waiting (so the fsync
    at the end has little left to do); the pages need not stay cached."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def name_from(answer: httpx.Response, url: str) -> str:
    disposition = answer.headers.get("content-disposition", "")
    if found := _FILENAME_STAR.search(disposition):
        return safe_name(unquote(found.group(1)))
    if found := _FILENAME.search(disposition):
        return safe_name(found.group(1))
    return safe_name(unquote(urlsplit(url).path))


def _validator(answer: httpx.Response) -> str | None:
    etag = answer.headers.get("etag")
    if etag and not etag.startswith("W/"):  # a weak one cannot vouch for bytes
        return etag
    return answer.headers.get("last-modified")


def fetch_to_file(
    url: str,
    path: Path,
    rules: urls.UrlRules,
    *,
    on_progress: Progress,
    token_hint: str | None = None,
    secret_headers: dict[str, str] | None = None,
    weights: bool = True,
    validator_file: Path | None = None,
    timeout_s: float = urls.TIMEOUT_S,
) -> Fetched:
    """Fetch `url` into `path`, resuming what is there. `on_progress` is called after
    each chunk; when it says stop, `Stopped` is raised (the file is left for the caller
    to remove). `secret_headers` (a token) go only to the URL's own origin; `weights`:
    the body must not be a web page or JSON (off for a repository's config files). The
    server's validator is kept in `validator_file` (beside the file by default)."""
    validator_file = validator_file or path.with_name(path.name + ".validator")
    have = path.stat().st_size if path.exists() else 0
    validator = validator_file.read_text() if have and validator_file.exists() else None
    headers = {"Accept": "*/*"}
    if validator:
        headers.update({"Range": f"bytes={have}-", "If-Range": validator})
    try:
        with urls.client(timeout_s) as http:
            answer, last = urls.open_stream(
                http, url, rules, field="url", headers=headers, secret_headers=secret_headers
            )
            try:
                return _receive(
                    answer, last, path, validator_file, have, on_progress,
                    token_hint, check_page=weights,
                )  # fmt: skip
            finally:
                answer.close()
    except httpx.HTTPError as exc:
        raise Transient(f"fetching {urls.shown(url)} failed: {type(exc).__name__}") from None


def _receive(
    answer: httpx.Response,
    url: str,
    path: Path,
    validator_file: Path,
    have: int,
    on_progress: Progress,
    token_hint: str | None,
    *,
    check_page: bool,
) -> Fetched:
    status = answer.status_code
    _check_status(status, url, token_hint)
    resumed = status == 206 and answer.headers.get("content-range", "").startswith(f"bytes {have}-")
    digest = hashlib.sha256()
    if resumed:
        _hash_kept(path, digest)
    else:
        have = 0  # a 200 (or a range we did not ask for): the file from the start
    length = answer.headers.get("content-length", "")
    total = have + int(length) if length.isdigit() else None
    check_room(path.parent, (total or 0) - have)
    _keep_validator(answer, path, validator_file)
    content_type = answer.headers.get("content-type", "")
    # The body's first bytes, until they are checked.
    head = b"" if check_page and not resumed else None
    done, since_room_check = have, 0
    # Unbuffered: each chunk is one write, in the file the moment it arrived (a process
    # killed now keeps every byte it received, and the resume asks for none again).
    hashing = Hashing(digest)
    with hashing, path.open("ab" if resumed else "wb", buffering=0) as out:
        for chunk in answer.iter_bytes():  # as they come: a hang-up loses none of them
            if head is not None:
                head += chunk[:HEAD_BYTES]
                if len(head) >= HEAD_BYTES:
                    check_first_bytes(head, content_type, token_hint)
                    head = None
            out.write(chunk)
            hashing.add(chunk)
            done += len(chunk)
            since_room_check += len(chunk)
            if since_room_check >= ROOM_EVERY:
                check_room(path.parent, (total or done) - done)
                write_back(out.fileno())
                since_room_check = 0
            if not on_progress(done, total):
                raise Stopped("the download was cancelled")
    sha256 = hashing.hexdigest()
    if head is not None:  # a body shorter than HEAD_BYTES
        check_first_bytes(head, content_type, token_hint)
    if total is not None and done != total:
        raise Transient(f"{urls.shown(url)} ended after {done} of {total} bytes")
    validator_file.unlink(missing_ok=True)
    return Fetched(path, done, sha256, name_from(answer, url))


def _check_status(status: int, url: str, token_hint: str | None) -> None:
    """A 200 or a 206 goes on; anything else fails, as a transient failure (a resume may
    get past it) or not."""
    if status in (401, 403):
        hint = f": {token_hint}" if token_hint else ": not allowed without a token"
        raise Unauthorized(f"{urls.shown(url)} answered {status}{hint}")
    if status >= 500 or status == 429:
        raise Transient(f"{urls.shown(url)} answered {status}")
    if status not in (200, 206):
        raise DownloadFailed(f"{urls.shown(url)} answered {status}")


def _hash_kept(path: Path, digest: Any) -> None:
    """The bytes already there, hashed first (the resume adds to them)."""
    with path.open("rb") as kept:
        while chunk := kept.read(CHUNK):
            digest.update(chunk)


def _keep_validator(answer: httpx.Response, path: Path, validator_file: Path) -> None:
    """The server's validator kept for a later resume (none: any kept one removed)."""
    validator = _validator(answer)
    path.parent.mkdir(parents=True, exist_ok=True)
    validator_file.parent.mkdir(parents=True, exist_ok=True)
    if validator:
        validator_file.write_text(validator)
    else:
        validator_file.unlink(missing_ok=True)
