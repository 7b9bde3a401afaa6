"""What a downloaded file must be before it is installed, and installing it: a name
reduced to one safe path component, weights that are safetensors (pickle formats only
with `models.allow_pickle`), never an HTML or JSON page, room on the disk, and a move
into place that never overwrites a model."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from ..durable import fsync_path
from ..errors import DownloadFailed, InsufficientStorage, ModelExists, UnsafeFormat
from ..library.loras import LORAS_DIR
from ..library.safetensors_file import check_safetensors_data, read_safetensors_header

STAGING_DIR = ".downloads"
HEADROOM_BYTES = 1 << 30  # kept free beyond the bytes still to come
_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def safe_name(name: str, *, fallback: str = "model") -> str:
    """`name` as one file name component: the last part of any path in it, only
    letters, digits, `.`, `_` and `-`, no leading dots, at most 128 characters."""
    last = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _UNSAFE_CHARACTERS.sub("_", last).lstrip(".")[:128].strip("_")
    return cleaned or fallback


def staging_dir(models_dir: Path, download_id: str) -> Path:
    return Path(models_dir) / STAGING_DIR / download_id


def check_name_free(models_dir: Path, kind: str | None, name: str) -> None:
    """`model_exists` if a model of `kind` named `name` would meet an installed one: a
    LoRA its `loras/<name>.safetensors`; a checkpoint or a diffusers model the model
    `sd/<name>`, as a folder or a single file alike (either is that id)."""
    models_dir = Path(models_dir)
    if kind == "lora":
        taken = [models_dir / LORAS_DIR / f"{name}.safetensors"]
    else:
        taken = [models_dir / name, models_dir / f"{name}.safetensors"]
    if any(path.exists() for path in taken):
        raise ModelExists(f"a model named {name} is already installed", field="name")


def check_room(directory: Path, still_to_come: int) -> None:
    """`insufficient_storage` unless the bytes still to come fit with 1 GiB to spare."""
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < still_to_come + HEADROOM_BYTES:
        raise InsufficientStorage(
            f"{free} bytes free in {directory}; this download needs {still_to_come} more "
            f"and {HEADROOM_BYTES} kept free"
        )


def check_first_bytes(head: bytes, content_type: str, token_hint: str | None) -> None:
    """Refuse a page where weights were expected (an error or login page, often what a
    missing token gets)."""
    text = head.lstrip()[:16].lower()
    page = content_type.split(";")[0].strip().lower() in ("text/html", "application/json")
    if page or text.startswith((b"<!doctype", b"<html", b"{", b"[")):
        hint = f" ({token_hint})" if token_hint else ""
        raise DownloadFailed(f"the server sent a web page or JSON, not model weights{hint}")


def check_weights(path: Path, *, allow_pickle: bool) -> str:
    """The file's format, `safetensors` (its header read whole, and the data it declares
    all there: a truncated file is `download_failed`) or `pickle` (allowed only with
    `models.allow_pickle`); anything else is refused."""
    try:
        read_safetensors_header(path)
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    else:
        try:
            check_safetensors_data(path)
        except ValueError as exc:
            raise DownloadFailed(
                f"{path.name} is a truncated or damaged safetensors file: {exc}"
            ) from None
        return "safetensors"
    with path.open("rb") as handle:
        head = handle.read(4)
    pickled = head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or head == (
        b"PK\x03\x04"  # torch.save's zip
    )
    if pickled or path.suffix.lower() in PICKLE_SUFFIXES:
        if allow_pickle:
            return "pickle"
        raise UnsafeFormat(
            f"{path.name} is a pickle file, which can run code when loaded: only safetensors "
            "are installed (models.allow_pickle = true allows it)"
        )
    raise DownloadFailed(f"{path.name} is not a safetensors file")


def install(staged: Path, target: Path) -> Path:
    """Move a complete, checked file into place: fsynced, renamed (never over an
    existing model: `model_exists`), its directory fsynced."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fsync_path(staged)
    try:
        os.link(staged, target)  # fails if the target exists: never overwritten
    except FileExistsError:
        raise ModelExists(f"{target.name} is already installed in {target.parent}") from None
    staged.unlink()
    fsync_path(target.parent)
    return target


def same_content(path: Path, sha256: str) -> bool:
    """Whether the file at `path` has exactly this SHA-256."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return False
    return digest.hexdigest() == sha256


def install_folder(staged: Path, target: Path) -> Path:
    """Move a complete, checked model folder into place: every file and folder in it
    fsynced, then renamed (never over an existing model: `model_exists`)."""
    for path in sorted(staged.rglob("*"), reverse=True):  # files before their folders
        fsync_path(path)
    fsync_path(staged)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        raise ModelExists(f"{target.name} is already installed in {target.parent}")
    try:
        os.rename(staged, target)  # an existing non-empty folder is never replaced
    except OSError as exc:
        raise ModelExists(f"{target.name} is already installed in {target.parent}") from exc
    fsync_path(target.parent)
    return target
