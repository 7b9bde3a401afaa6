"""Deleting an installed model or LoRA (the API's DELETE routes and `models rm`): the
jobs still queued for a model fail `model_not_found` first, so none starts on it; the
files are moved aside in one rename (a runner never loads half a model) and then
removed. A runner that has the model loaded unloads it when it is next idle.

Deleting a gallery image the same way: its file moved aside (its URL 404s at once), its
row forgotten, then the file removed; a refused or failed forget puts the file back. The
name it has aside says which process moved it, so that a delete a crash cut short is told
from one in progress (retention.finish_deletions, at start-up and hourly)."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
from pathlib import Path

from ..errors import LoraNotFound, ModelNotFound
from ..records import GalleryItem
from ..spec import MODEL_PREFIX
from ..store import Store
from .loras import LoraInfo
from .registry import ModelInfo, ModelRegistry

ASIDE = ".deleting-"  # a dot-name: no registry lists it
# A gallery image aside: `.deleting-<host>.<pid>.<hex>-<name>` (before the deleter was
# named: `.deleting-<hex>-<name>`).
_IMAGE_ASIDE = re.compile(
    rf"{re.escape(ASIDE)}(?:(?P<host>[A-Za-z0-9-]+)\.(?P<pid>[0-9]+)\.)?[0-9a-f]+-(?P<name>.+)"
)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def find_model(registry: ModelRegistry, model_id: str) -> ModelInfo:
    """An installed model by id (`sd/` optional), usable or broken."""
    wanted = model_id if model_id.startswith(MODEL_PREFIX) else MODEL_PREFIX + model_id
    for model in registry.scan(force=True):
        if model.id == wanted:
            return model
    raise ModelNotFound(f"model {wanted} is not installed", model=wanted)


def _move_aside(path: Path) -> Path:
    aside = path.with_name(f"{ASIDE}{secrets.token_hex(4)}-{path.name}")
    os.rename(path, aside)  # gone from the registry at once, whole
    return aside


def _remove(aside: Path) -> None:
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def delete_model(
    registry: ModelRegistry, store: Store, model_id: str
) -> tuple[ModelInfo, list[str]]:
    """Delete an installed model; returns it and the ids of the queued jobs that failed.
    The files go first: a failed rename fails no job, and a crash after it leaves jobs
    that fail `model_not_found` when a runner takes them, as for any missing model."""
    model = find_model(registry, model_id)
    aside = _move_aside(model.path)
    error = ModelNotFound(f"model {model.id} was deleted", model=model.id)
    failed = store.jobs.fail_queued_for_model(model.id, error)
    _remove(aside)
    if registry.chosen_default() == model.id:
        registry.default_file.unlink(missing_ok=True)
    registry.scan(force=True)
    return model, failed


def delete_lora(registry: ModelRegistry, lora_id: str) -> LoraInfo:
    """Delete an installed LoRA (`lora/` optional), usable or broken."""
    wanted = lora_id if lora_id.startswith("lora/") else f"lora/{lora_id}"
    for lora in registry.loras.scan():
        if lora.id == wanted:
            _remove(_move_aside(lora.path))
            return lora
    raise LoraNotFound(f"LoRA {wanted} is not installed", lora=wanted)


def image_aside(name: str, *, starting: bool = False) -> tuple[str, bool] | None:
    """For a file name a gallery delete gave an image it moved aside: the image's own
    name, and whether that delete is over for sure (its process, of this host, has
    ended; `starting`: this process has deleted nothing yet, so one under its own pid
    was an earlier process's, as pids repeat in a container). None for any other name."""
    found = _IMAGE_ASIDE.fullmatch(name)
    if found is None:
        return None
    ended = False
    if found["pid"] is not None and found["host"] == _host():
        pid = int(found["pid"])
        ended = (starting and pid == os.getpid()) or not _running(pid)
    return found["name"], ended


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: running
        return True
    return True


def delete_image(store: Store, outbox: Path, image_id: str, *, scope: str | None) -> GalleryItem:
    """Delete a gallery image that `scope` may change: its file, its row and tags, and
    its place in its job's `image_urls`."""
    item = store.gallery.check_changeable(image_id, scope=scope)
    path = outbox / item.job_id / item.file
    aside = None
    if path.is_file() and not path.is_symlink():
        aside = path.with_name(f"{ASIDE}{_host()}.{os.getpid()}.{secrets.token_hex(4)}-{path.name}")
        os.rename(path, aside)  # its URL 404s at once
    try:
        gone = store.gallery.delete_image(image_id, scope=scope)
    except BaseException:
        if aside is not None:
            os.rename(aside, path)
        raise
    if aside is not None:
        _remove(aside)
    return gone
