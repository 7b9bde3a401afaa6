"""VAEs chosen per request: the entries of `<models>/vae/`, listed as `vae/<name>`, read
from their configs and headers alone (stdlib only: the API and CLI list and check VAEs
without torch).

Two layouts are read:
- a diffusers `AutoencoderKL` folder: `config.json` and `diffusion_pytorch_model.safetensors`
  (the name is the folder's);
- a single `.safetensors` file in the original (LDM) layout, as AUTOMATIC1111's users have
  them (`encoder.conv_in.weight`, ..., with or without a `first_stage_model.` prefix; the
  name is the file's, less `.safetensors`). A1111 lists it by its file name, kept as
  `file_name`.

The latent channels are read too (the config's `latent_channels`, or the width of the
decoder's first convolution), so the engine can refuse a VAE that does not fit a model.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidParameters, VaeNotFound
from ..spec import VAE_PREFIX, normalise_vae_id
from .safetensors_file import read_safetensors_header

VAES_DIR = "vae"
WEIGHTS = "diffusion_pytorch_model.safetensors"  # a diffusers folder's weights
_LDM_DECODER_IN = "decoder.conv_in.weight"  # [channels, latent channels, 3, 3]


@dataclass(frozen=True)
class VaeInfo:
    id: str  # vae/<name>
    name: str
    file_name: str  # as A1111 lists it: the file's name, or the folder's
    path: Path  # the file, or the folder
    format: str  # "diffusers" | "single_file"
    size_bytes: int
    latent_channels: int | None
    broken: str | None = None  # why it cannot be used
    modified: int = 0  # the weights file's mtime, in whole seconds

    @property
    def ok(self) -> bool:
        return self.broken is None

    @property
    def weights(self) -> Path:
        """The file that holds the weights (hashed for the records)."""
        return self.path / WEIGHTS if self.format == "diffusers" else self.path

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "file_name": self.file_name,
            "path": str(self.path),
            "format": self.format,
            "size_bytes": self.size_bytes,
            "latent_channels": self.latent_channels,
            "status": "ok" if self.ok else "broken",
            **({"reason": self.broken} if self.broken else {}),
        }


def ldm_latent_channels(header: dict[str, Any]) -> int | None:
    """The latent channels of an original-layout VAE's tensors; None if they are no
    VAE's (a full checkpoint's VAE, under `first_stage_model.`, counts)."""
    for prefix in ("", "first_stage_model.", "vae."):
        entry = header.get(prefix + _LDM_DECODER_IN)
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if isinstance(shape, list) and len(shape) == 4 and isinstance(shape[1], int):
            return shape[1]
    return None


def _stamp(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_size, int(info.st_mtime)


def _folder(path: Path, name: str) -> VaeInfo:
    def broken(reason: str, size: int = 0, modified: int = 0) -> VaeInfo:
        return VaeInfo(
            VAE_PREFIX + name, name, path.name, path, "diffusers", size, None, reason, modified
        )

    try:
        size, modified = _stamp(path / WEIGHTS)
    except OSError:
        return broken(f"missing {WEIGHTS}")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return broken("missing config.json", size, modified)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return broken(f"unreadable config: {exc}", size, modified)
    if not isinstance(config, dict) or config.get("_class_name") != "AutoencoderKL":
        return broken("not an AutoencoderKL (its config.json names another class)", size, modified)
    channels = config.get("latent_channels", 4)
    return VaeInfo(
        VAE_PREFIX + name,
        name,
        path.name,
        path,
        "diffusers",
        size,
        channels if isinstance(channels, int) else None,
        None,
        modified,
    )


def _single_file(path: Path, name: str) -> VaeInfo:
    size, modified = _stamp(path)

    def made(channels: int | None, broken: str | None) -> VaeInfo:
        return VaeInfo(
            VAE_PREFIX + name, name, path.name, path, "single_file",
            size, channels, broken, modified,
        )  # fmt: skip

    try:
        header = read_safetensors_header(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return made(None, str(exc))
    channels = ldm_latent_channels(header)
    if channels is None:
        return made(None, f"no VAE decoder tensors in it (no {_LDM_DECODER_IN})")
    return made(channels, None)


class VaeRegistry:
    """The VAEs of `<models>/vae/`, rescanned when the directory changes."""

    def __init__(self, models_dir: Path | str) -> None:
        self.directory = Path(models_dir) / VAES_DIR
        self._lock = threading.Lock()
        self._signature: tuple[Any, ...] | None = None
        self._vaes: dict[str, VaeInfo] = {}
        self._hashes: dict[tuple[Path, int, int], str] = {}

    def _current_signature(self) -> tuple[Any, ...]:
        """A stat per entry, and for a folder its weights' and config's."""

        def stamp(path: Path) -> tuple[int, int] | None:
            try:
                info = path.stat()
            except OSError:
                return None
            return (info.st_mtime_ns, info.st_size)

        try:
            entries = sorted(self.directory.iterdir())
        except OSError:
            return ()
        return tuple(
            (
                entry.name,
                stamp(entry),
                (stamp(entry / WEIGHTS), stamp(entry / "config.json")) if entry.is_dir() else None,
            )
            for entry in entries
        )

    def scan(self) -> list[VaeInfo]:
        """Every VAE, by name; other files are no VAEs and are left out."""
        with self._lock:
            signature = self._current_signature()
            if signature != self._signature:
                self._vaes, self._signature = self._read_all(), signature
            return list(self._vaes.values())

    def _read_all(self) -> dict[str, VaeInfo]:
        found: dict[str, VaeInfo] = {}
        try:
            entries = sorted(self.directory.iterdir())
        except OSError:
            return found
        for entry in entries:
            if entry.name.startswith("."):
                continue
            name = entry.name.removesuffix(".safetensors")
            try:
                if normalise_vae_id(name) is None:
                    continue  # "None" or "Automatic": A1111's words for the model's own
                if entry.is_dir() and (entry / "config.json").exists():
                    info = _folder(entry, name)
                elif entry.is_file() and entry.suffix == ".safetensors":
                    info = _single_file(entry, name)
                else:
                    continue  # not a VAE
            except (InvalidParameters, OSError):
                continue  # a name that cannot be a VAE id (or "None"), or removed meanwhile
            if info.id in found:
                taken = f"the name {info.name!r} is taken by {found[info.id].path.name}"
                found[f"{info.id} ({info.path.name})"] = VaeInfo(
                    info.id, info.name, info.file_name, info.path, info.format,
                    info.size_bytes, None, taken, info.modified,
                )  # fmt: skip
                continue
            found[info.id] = info
        return found

    def get(self, vae_id: str) -> VaeInfo:
        """A usable VAE by id (`vae/` and `.safetensors` optional); `vae_not_found`
        (naming the field `vae`) otherwise."""
        wanted = normalise_vae_id(vae_id)
        vaes = {vae.id: vae for vae in self.scan() if vae.ok}
        if wanted is None or wanted not in vaes:
            known = ", ".join(sorted(vaes)) or "none"
            # (the directory as the request's author knows it: the server's paths stay its own)
            raise VaeNotFound(
                f"vae: {wanted or vae_id} is not installed in <models>/{VAES_DIR}/ "
                f"(installed: {known})",
                field="vae",
            )
        return vaes[wanted]

    def sha256(self, vae: VaeInfo) -> str:
        """The SHA-256 of the VAE's weights file (A1111's `VAE hash` is its first 10 hex
        digits), cached by path, time and size."""
        path = vae.weights
        info = path.stat()
        key = (path, info.st_mtime_ns, info.st_size)
        with self._lock:
            known = self._hashes.get(key)
        if known is not None:
            return known
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        found = digest.hexdigest()
        with self._lock:
            self._hashes[key] = found
        return found

    def record(self, vae: VaeInfo) -> dict[str, Any]:
        """What a result records of the VAE a job ran with."""
        return {"name": vae.id, "file_name": vae.file_name, "sha256": self.sha256(vae)}
