"""The inbox's rules for files, apart from watching them: which names are request files,
when a file is complete enough to read (pure functions of what was seen, tested without
files), and how files are moved aside with names that fit the file system."""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ACCEPTED = "accepted"  # the folder taken files move to
REJECTED = "rejected"  # the folder bad files move to, each with NAME.error.json
SUFFIXES = (".json", ".jsonl")
ERROR_SUFFIX = ".error.json"  # beside a rejected file: why
NAME_MAX = 255  # bytes in a file name (Linux, macOS, most file systems)

# Names that are never requests: hidden files, partial downloads, editor droppings.
_IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp", ".swx", ".bak", "~")


def is_request_name(name: str) -> bool:
    """Whether a file name in the inbox names a request file."""
    if name.startswith((".", "#", "~")) or name.endswith(_IGNORED_SUFFIXES):
        return False
    return name.endswith(SUFFIXES) and name not in SUFFIXES


@dataclass(frozen=True)
class Seen:
    """What is known of a waiting file at one look."""

    complete: bool  # renamed in, or closed after writing, and unchanged since
    written: bool  # seen growing in place (inotify): its close-write should come
    changed_ago_s: float  # since its size or time last changed, by this process's clock
    modified_ago_s: float  # since its modification time, by the wall clock


def settled(seen: Seen, settle_s: float) -> bool:
    """Unchanged for `settle_s`; one seen being written in place, for ten times that,
    as its close-write should come first."""
    settle = settle_s * (10 if seen.written else 1)
    return seen.changed_ago_s >= settle or seen.modified_ago_s >= settle


def worth_reading(seen: Seen, settle_s: float, name: str) -> bool:
    """Read it now: complete, settled, or a `.json` (whose text says whether it is whole:
    no proper prefix of a JSON object is valid JSON)."""
    return seen.complete or settled(seen, settle_s) or name.endswith(".json")


def still_writing(seen: Seen, settle_s: float) -> bool:
    """A `.json` that is not (yet) valid JSON: give its writer ten settle times of quiet
    before rejecting it, unless it is known to be complete."""
    patience = settle_s * 10
    return not seen.complete and seen.changed_ago_s < patience and seen.modified_ago_s < patience


def file_stat(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) of the file, or of the file a link leads to."""
    try:
        info = path.stat()
    except OSError:
        try:
            info = path.lstat()
        except OSError:
            return None
    return (info.st_size, info.st_mtime_ns)


def shown(name: str) -> str:
    """A file name as text that encodes: bytes that are not UTF-8 shown as U+FFFD."""
    return os.fsencode(name).decode("utf-8", "replace")


def fit_name(name: str, tag: str = "", ending: str = "", *, reserve: int = 0) -> str:
    """`stem[tag].ext[ending]` in at most NAME_MAX - `reserve` bytes (the file system's
    limit, less what will be added to it): the stem is shortened, never the request's
    extension, the tag or the ending."""
    extension = next((s for s in SUFFIXES if name.endswith(s)), "")
    stem = name[: len(name) - len(extension)] if extension else name
    while len(os.fsencode(f"{stem}{tag}{extension}{ending}")) > NAME_MAX - reserve and stem:
        stem = stem[:-1]
    return f"{stem or 'file'}{tag}{extension}{ending}"


def move_aside(path: Path, folder: Path, *, reserve: int = 0) -> Path | None:
    """Move a file (or link, or directory) into `folder`, never over another; its name
    there leaves `reserve` bytes for a name of its own beside it (`NAME.error.json`)."""
    folder.mkdir(exist_ok=True)
    target = folder / fit_name(path.name, reserve=reserve)
    if target.exists() or target.is_symlink():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        target = folder / fit_name(path.name, f".{stamp}", reserve=reserve)
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return None
    except OSError:
        shutil.move(str(path), str(target))
    return target


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".writing-{os.getpid()}-{threading.get_ident()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
