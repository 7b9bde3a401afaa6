"""LoRA adapters: the `.safetensors` files in `<models>/loras/`, listed as `lora/<name>`,
each with the model family it was trained for, read from its tensor names and shapes
(stdlib only: the API and CLI list and check LoRAs without torch).

Two key styles are read:
- kohya (A1111, CivitAI): `lora_unet_<module>.lora_down.weight`, text encoders as
  `lora_te_` (SD 1.x/2.x) or `lora_te1_` and `lora_te2_` (SDXL);
- diffusers / PEFT: `unet.<module>.lora_A.weight` (or `lora.down`), text encoders as
  `text_encoder.` and, for SDXL, `text_encoder_2.`.

The family follows from a second text encoder (SDXL), else from the width of the text
embedding the cross-attention keys take: 2048 SDXL, 1024 SD 2.x, anything else SD 1.x
(768, and the tiny model's 32).

FLUX.1 and SD 3.x LoRAs are told by their transformer's block names: diffusers / PEFT
`transformer.` keys (FLUX's have `single_transformer_blocks`, SD 3's do not), kohya's
`lora_unet_double_blocks_` / `lora_unet_single_blocks_` (FLUX) and
`lora_unet_joint_blocks_` (SD 3), and XLabs' FLUX `double_blocks.N.processor.*_lora*`.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidParameters, LoraNotFound
from ..spec import LORA_PREFIX, normalise_lora_id
from .safetensors_file import read_safetensors_header

LORAS_DIR = "loras"


@dataclass(frozen=True)
class LoraInfo:
    id: str  # lora/<name>
    name: str
    path: Path
    family: str | None
    size_bytes: int
    broken: str | None = None
    modified: int = 0  # the file's mtime, in whole seconds (ALICE's `created`)

    @property
    def ok(self) -> bool:
        return self.broken is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "path": str(self.path),
            "family": self.family,
            "size_bytes": self.size_bytes,
            "status": "ok" if self.ok else "broken",
            **({"reason": self.broken} if self.broken else {}),
        }


@dataclass(frozen=True)
class LoraHashes:
    """A LoRA file's SHA-256 (what CivitAI lists as `SHA256`), and the SHA-256 of its
    tensor data alone (everything after the safetensors header: kohya's hash, which
    AUTOMATIC1111 writes in `Lora hashes` as its first 12 hex digits and CivitAI lists
    as `AutoV3`)."""

    sha256: str
    tensors_sha256: str

    @property
    def a1111_short(self) -> str:
        return self.tensors_sha256[:12]


def lora_family(header: dict[str, Any]) -> str | None:
    """The family a LoRA's tensors were made for; None if they are no LoRA's."""
    keys = [k for k in header if k != "__metadata__"]
    marks = ("lora_down", "lora_A", "lora.down", "lora_up", "_lora1.down", "_lora2.down")
    lora_keys = [k for k in keys if any(m in k for m in marks)]
    if not lora_keys:
        return None
    flow = _flow_family(lora_keys)
    if flow is not None:
        return flow
    if any(k.startswith(("lora_te2_", "text_encoder_2.")) for k in keys):
        return "sdxl"
    if any(k.startswith("lora_unet_input_blocks_") for k in keys):
        return "sdxl"  # kohya's SDXL UNet naming
    for key in lora_keys:
        down = "lora_down" in key or "lora_A" in key or "lora.down" in key
        cross = "attn2_to_k" in key or "attn2.to_k" in key
        shape = header[key].get("shape") if isinstance(header[key], dict) else None
        if down and cross and isinstance(shape, list) and len(shape) == 2:
            width = shape[1]
            return {2048: "sdxl", 1024: "sd2"}.get(width, "sd1")
    return "sd1"


def _flow_family(keys: list[str]) -> str | None:
    """`flux` or `sd3` for a LoRA of a transformer family's blocks, else None."""
    if any(k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_")) for k in keys):
        return "flux"  # kohya
    if any(k.startswith("double_blocks.") and "processor" in k for k in keys):
        return "flux"  # XLabs
    if any(k.startswith("lora_unet_joint_blocks_") for k in keys):
        return "sd3"  # kohya
    if any(k.startswith("transformer.") for k in keys):
        return "flux" if any("single_transformer_blocks" in k for k in keys) else "sd3"
    return None


def _read(path: Path) -> LoraInfo:
    name = path.stem
    info = path.stat()
    size, modified = info.st_size, int(info.st_mtime)
    try:
        family = lora_family(read_safetensors_header(path))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return LoraInfo(LORA_PREFIX + name, name, path, None, size, str(exc), modified)
    if family is None:
        broken = "no LoRA tensors in it"
        return LoraInfo(LORA_PREFIX + name, name, path, None, size, broken, modified)
    return LoraInfo(LORA_PREFIX + name, name, path, family, size, None, modified)


class LoraRegistry:
    """The LoRAs of `<models>/loras/`, rescanned when the directory changes."""

    def __init__(self, models_dir: Path | str) -> None:
        self.directory = Path(models_dir) / LORAS_DIR
        self._lock = threading.Lock()
        self._signature: tuple[Any, ...] | None = None
        self._loras: dict[str, LoraInfo] = {}
        self._hashes: dict[tuple[Path, int, int], LoraHashes] = {}

    def _current_signature(self) -> tuple[Any, ...]:
        try:
            entries = sorted(self.directory.glob("*.safetensors"))
        except OSError:
            return ()
        stamps = []
        for entry in entries:
            try:
                info = entry.stat()
            except OSError:
                continue
            stamps.append((entry.name, info.st_mtime_ns, info.st_size))
        return tuple(stamps)

    def scan(self) -> list[LoraInfo]:
        with self._lock:
            signature = self._current_signature()
            if signature != self._signature:
                found: dict[str, LoraInfo] = {}
                for name, _, _ in signature:
                    path = self.directory / name
                    try:
                        normalise_lora_id(path.stem)
                    except InvalidParameters:
                        continue  # a name that cannot be a LoRA id
                    try:
                        found[LORA_PREFIX + path.stem] = _read(path)
                    except OSError:
                        continue  # removed while scanning
                self._loras, self._signature = found, signature
            return list(self._loras.values())

    def get(self, lora_id: str) -> LoraInfo:
        """A usable LoRA by id (`lora/` optional); `lora_not_found` otherwise."""
        wanted = normalise_lora_id(lora_id)
        loras = {lora.id: lora for lora in self.scan() if lora.ok}
        if wanted not in loras:
            known = ", ".join(sorted(loras)) or "none"
            raise LoraNotFound(
                f"LoRA {wanted} is not installed in {self.directory} (installed: {known})",
                field="loras",
            )
        return loras[wanted]

    def hashes(self, lora: LoraInfo) -> LoraHashes:
        """The file's hashes (cached by path, time and size), read in one pass."""
        info = lora.path.stat()
        key = (lora.path, info.st_mtime_ns, info.st_size)
        with self._lock:
            known = self._hashes.get(key)
        if known is not None:
            return known
        whole, tensors = hashlib.sha256(), hashlib.sha256()
        with lora.path.open("rb") as handle:
            prefix = handle.read(8)
            whole.update(prefix)
            # kohya's and A1111's hash: the bytes after the 8-byte length and the header.
            header_left = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
            while header_left > 0 and (chunk := handle.read(min(header_left, 1 << 20))):
                whole.update(chunk)
                header_left -= len(chunk)
            while chunk := handle.read(1 << 20):
                whole.update(chunk)
                tensors.update(chunk)
        found = LoraHashes(whole.hexdigest(), tensors.hexdigest())
        with self._lock:
            self._hashes[key] = found
        return found
