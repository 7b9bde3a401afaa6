"""Reading one inbox file: whether it is complete yet, whether it is a request file at all,
and the requests it holds (validated, their models known, their images decoded)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat as stat_module
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import inputs
from ..errors import InvalidParameters, LoraNotFound, ModelNotFound, SpoolError
from ..library.registry import ModelRegistry
from ..spec import GenerationDefaults, Request, parse_json, parse_jsonl, parse_request
from .files import Seen, is_request_name, settled, shown, still_writing, worth_reading

log = logging.getLogger("alice_spool.inbox")

_IMAGE_FIELDS = ("init_image", "mask_image", "input_images", "input_image_urls")


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
class Ready:
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


class Incomplete(Exception):
    """A .json file whose text is not valid JSON (perhaps not yet)."""

    def __init__(self, error: SpoolError) -> None:
        super().__init__(error.message)
        self.error = error


# What reading a file comes to: its requests; why it is refused (it is to be rejected);
# True when there is nothing left to do (it is gone); False while it is not complete yet.
Outcome = Ready | SpoolError | bool


class Reader:
    """Reads the files of one inbox directory as request files."""

    def __init__(
        self,
        directory: Path,
        registry: ModelRegistry | None,
        *,
        defaults: GenerationDefaults,
        polling: bool,
        settle_s: float,
        max_file_bytes: int,
        default_model: str,
        data_dir: Path | None,
        fetch: inputs.Fetch | None,
    ) -> None:
        self.directory = directory
        self.registry = registry
        self.defaults = defaults
        self.polling = polling
        self.settle_s = settle_s
        self.max_file_bytes = max_file_bytes
        self.default_model = default_model
        self.data_dir = data_dir
        self.fetch = fetch
        self.root = directory.resolve() if directory.exists() else directory

    def read(self, pending: Pending) -> Outcome:
        """The file's requests if it is complete and valid; why it is refused; True when
        it is gone; False while it is not complete yet."""
        path = pending.path
        try:
            info = path.lstat()
        except FileNotFoundError:
            return True  # moved or deleted by someone else
        problem = refuse_name(path.name) or self._refuse_kind(path, info)
        if problem is not None:
            return problem
        if stat_module.S_ISLNK(info.st_mode):  # a link to a file in the inbox: that file
            try:
                info = path.stat()
            except FileNotFoundError:
                return True
        seen = self._look(pending, info)
        if info.st_size > self.max_file_bytes:
            return InvalidParameters(
                f"{path.name} is {info.st_size} bytes; inbox.max_file_bytes is "
                f"{self.max_file_bytes}"
            )
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
        return self._requests(pending, data, seen)

    def _look(self, pending: Pending, info: os.stat_result) -> Seen:
        """What is known of the file now, its size and time noted for the next look."""
        now = time.monotonic()
        stat = (info.st_size, info.st_mtime_ns)
        if stat != pending.stat:
            if pending.stat is not None and not self.polling:
                pending.written = True  # growing in place: its close-write will come
            pending.stat, pending.changed_at = stat, now
        return Seen(
            complete=pending.complete_at == stat,
            written=pending.written,
            changed_ago_s=now - pending.changed_at,
            modified_ago_s=time.time() - info.st_mtime,
        )

    def _requests(self, pending: Pending, data: bytes, seen: Seen) -> Outcome:
        """The requests of a file read whole, or why not (yet)."""
        path = pending.path
        complete, quiet = seen.complete, settled(seen, self.settle_s)
        try:
            text = data.decode("utf-8")
            requests, staged = self.parse(text, path.name)
        except UnicodeDecodeError as exc:
            if not (complete or quiet):
                return False
            return InvalidParameters(
                f"{path.name} is not UTF-8 text (byte {exc.start}: {data[exc.start]:#04x})"
            )
        except Incomplete as exc:
            if still_writing(seen, self.settle_s):  # its writer may only be pausing
                return False
            return exc.error
        except SpoolError as exc:
            if not (complete or quiet):
                return False
            return exc
        if not path.name.endswith(".json") and not (complete or quiet):
            return False
        return Ready(pending, data, requests, staged)

    def _refuse_kind(self, path: Path, info: os.stat_result) -> SpoolError | None:
        """Directories, and links that lead out of the inbox, are not request files."""
        if stat_module.S_ISLNK(info.st_mode):
            target = path.resolve()
            if target.parent != self.root:
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

    def parse(self, text: str, name: str) -> tuple[list[Request], list[inputs.Staged]]:
        """The file's requests, and the images each one names (decoded, checked)."""
        staged: list[inputs.Staged] = []

        def take_images(data: Any) -> Any:
            if not isinstance(data, dict) or not any(
                data.get(k) is not None for k in _IMAGE_FIELDS
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
            requests = [self._parse_one(text, name, take_images)]
        line = name.endswith(".jsonl")
        checked = [
            self._with_model(request, name, number if line else None)
            for number, request in enumerate(requests, start=1)
        ]
        return checked, staged

    def _parse_one(self, text: str, name: str, take_images: Any) -> Request:
        """The request of a `.json` file; `Incomplete` when its text is not valid JSON."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            try:
                parse_json(text, name)
            except InvalidParameters as exc:
                raise Incomplete(exc) from None
            raise
        except (ValueError, RecursionError):  # too deep, or a number too long
            parse_json(text, name)  # raises with the reason
            raise
        try:
            return parse_request(take_images(data), self.defaults)
        except InvalidParameters as exc:
            raise InvalidParameters(f"{name}: {exc.message}", field=exc.field) from None

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


def refuse_name(name: str) -> SpoolError | None:
    """A name that is not valid UTF-8 (it cannot be recorded as the job's client)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return InvalidParameters(
            f"the file name {shown(name)!r} is not valid UTF-8; rename the file"
        )
    return None
