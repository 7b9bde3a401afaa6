"""How much the spool keeps on disk (the web UI's Admin page): the
outbox, the models, the stored image inputs, the inbox and the database, and the free
space of each folder's file system."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from .config import Settings
from .inputs import INPUTS_DIR


def _walk(root: Path) -> tuple[int, int]:
    """Bytes and files under `root` (links not followed; a file gone meanwhile skipped)."""
    size = files = 0
    for directory, _, names in os.walk(root):
        for name in names:
            try:
                info = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            size += info.st_size
            files += 1
    return size, files


def _disk(path: Path) -> dict[str, int] | None:
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return None
    return {"total": usage.total, "used": usage.used, "free": usage.free}


def _sqlite_file(url: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(url[len(prefix) :].split("?")[0]) if url.startswith(prefix) else None


def storage_use(settings: Settings) -> dict[str, Any]:
    """Each folder's path, bytes and files, and its disk; the SQLite file's size (with
    its write-ahead log); walks the folders: call it from a worker thread."""
    paths = settings.paths
    folders = {
        "outbox": Path(paths.outbox),
        "models": Path(paths.models),
        "inputs": Path(paths.data_dir) / INPUTS_DIR,
        "inbox": Path(paths.inbox),
    }
    shown: dict[str, Any] = {}
    for name, folder in folders.items():
        size, files = _walk(folder) if folder.is_dir() else (0, 0)
        shown[name] = {"path": str(folder), "bytes": size, "files": files, "disk": _disk(folder)}
    database = _sqlite_file(paths.database_url)
    if database is not None:
        size = sum(
            p.stat().st_size
            for p in (database, database.with_name(database.name + "-wal"))
            if p.is_file()
        )
        shown["database"] = {"path": str(database), "bytes": size, "disk": _disk(database)}
    else:
        shown["database"] = {"path": None, "bytes": None, "disk": None}  # a server's own
    shown["total_bytes"] = sum(shown[name]["bytes"] for name in folders) + (
        shown["database"]["bytes"] or 0
    )
    return shown
