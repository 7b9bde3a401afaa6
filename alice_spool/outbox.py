"""The outbox (DESIGN section 6): one directory per finished job, `outbox/<job_id>/`, that
appears whole or not at all.

Each job's files are written under a temporary dot-name, fsynced, and renamed into place;
`result.json` is written last, so its presence means the job's outputs are complete. PNGs
carry the generation parameters in a `parameters` text chunk, in the "infotext" form other
Stable Diffusion tools read, so an image alone says how it was made.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .durable import fsync_path
from .errors import OutboxWriteFailed
from .faults import NO_FAULTS, Faults
from .spec import JobSpec

log = logging.getLogger(__name__)

RESULT = "result.json"
_STAGING = ".tmp-"  # staging directories: never a job's directory

# How other SD tools (AUTOMATIC1111, ComfyUI's readers, civitai) name the samplers.
SAMPLER_NAMES = {
    "euler": "Euler",
    "euler_a": "Euler a",
    "ddim": "DDIM",
    "pndm": "PLMS",
    "lms": "LMS",
    "heun": "Heun",
    "dpm++_2m": "DPM++ 2M",
    "dpm++_2m_karras": "DPM++ 2M Karras",
    "dpm++_sde": "DPM++ SDE",
    "dpm++_sde_karras": "DPM++ SDE Karras",
    "unipc": "UniPC",
}


def infotext(
    spec: JobSpec,
    seed: int,
    width: int,
    height: int,
    *,
    loras: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The parameters of one image as AUTOMATIC1111 writes them (and others read them):
    LoRAs as `<lora:name:scale>` tags in the prompt and their `Lora hashes`: each name
    (less `:` and `,`) with the first 12 hex digits of its tensor data's SHA-256, the
    hash A1111 computes for a safetensors LoRA, so its tools and CivitAI (`AutoV3`)
    recognise the file."""
    tags = " ".join(
        f"<lora:{str(lora['name']).removeprefix('lora/')}:{float(lora['scale']):g}>"
        for lora in loras
    )
    lines = [f"{spec.prompt} {tags}" if tags else spec.prompt]
    if spec.negative_prompt:
        lines.append(f"Negative prompt: {spec.negative_prompt}")
    settings = [
        ("Steps", spec.steps),
        ("Sampler", SAMPLER_NAMES.get(spec.scheduler, spec.scheduler)),
        ("CFG scale", f"{spec.guidance_scale:g}"),
        ("Seed", seed),
        ("Size", f"{width}x{height}"),
        ("Model", (spec.model or "").removeprefix("sd/")),
    ]
    if spec.strength is not None:
        settings.append(("Denoising strength", f"{spec.strength:g}"))
    if loras:
        hashes = ", ".join(
            f"{_a1111_lora_name(lora)}: {str(lora.get('tensors_sha256', ''))[:12]}"
            for lora in loras
        )
        settings.append(("Lora hashes", f'"{hashes}"'))
    lines.append(", ".join(f"{key}: {value}" for key, value in settings))
    return "\n".join(lines)


def _a1111_lora_name(lora: Mapping[str, Any]) -> str:
    return str(lora["name"]).removeprefix("lora/").replace(":", "").replace(",", "")


def image_name(job_id: str, index: int) -> str:
    return f"{job_id}-{index}.png"


@dataclass(frozen=True)
class Written:
    directory: Path
    files: list[str]  # image file names, in order
    already_there: bool  # an earlier run of the job had written it completely


class Outbox:
    """Writes and reads job directories under one root."""

    def __init__(
        self, root: Path | str, *, png_compress_level: int = 1, faults: Faults = NO_FAULTS
    ) -> None:
        self.root = Path(root)
        self.png_compress_level = png_compress_level
        self.faults = faults

    def job_dir(self, job_id: str) -> Path:
        return self.root / job_id

    def read_result(self, job_id: str) -> dict[str, Any] | None:
        """The job's result.json, if its directory is complete (and readable)."""
        try:
            return json.loads((self.job_dir(job_id) / RESULT).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def write(
        self,
        job_id: str,
        result: dict[str, Any],
        images: Sequence[Image.Image] = (),
        parameters: Sequence[str] = (),
    ) -> Written:
        """Write the job's images (each with its `parameters` text) and then
        `result.json`, durably, and move them into place at once.

        If a complete directory of a success is there already (the job ran before and the
        runner died before recording it), it is kept and nothing is written twice; that of
        a failure (the job was retried) is replaced.
        """
        target = self.job_dir(job_id)
        names = [image_name(job_id, i) for i in range(len(images))]
        earlier = self.read_result(job_id)
        if earlier is not None and earlier.get("status") == "succeeded":
            return Written(target, names, already_there=True)
        # Everything that can be refused is refused before any file exists.
        encoded = json.dumps(result, indent=2, ensure_ascii=False)
        texts = list(parameters) or [""] * len(names)
        if len(texts) != len(names):
            raise ValueError(f"{len(names)} images but {len(texts)} parameters texts")
        staging = self.root / f"{_STAGING}{job_id}-{secrets.token_hex(4)}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            staging.mkdir()
            for image, name, text in zip(images, names, texts, strict=True):
                info = PngInfo()
                if text:
                    info.add_text("parameters", text)
                path = staging / name
                image.save(path, format="PNG", pnginfo=info, compress_level=self.png_compress_level)
                fsync_path(path)
            result_path = staging / RESULT
            result_path.write_text(encoded, "utf-8")
            fsync_path(result_path)
            fsync_path(staging)
            self.faults.crash_point("outbox_staged")
            if target.exists():  # an incomplete directory from an older version or by hand
                shutil.rmtree(target)
            staging.rename(target)
            fsync_path(self.root)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise OutboxWriteFailed(
                f"cannot write the outputs of job {job_id} to {self.root}: {exc.strerror or exc}",
                job_id=job_id,
            ) from exc
        return Written(target, names, already_there=False)

    def remove(self, job_id: str) -> None:
        """Delete a job's directory (a job cancelled while it was being written)."""
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def remove_stale(self) -> list[str]:
        """Delete staging directories left by a writer that died (run at start-up)."""
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        for entry in self.root.iterdir():
            if entry.name.startswith(_STAGING) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        if removed:
            log.info("removed %d unfinished outbox directories", len(removed))
        return removed
