"""The outbox: one directory per finished job, `outbox/<job_id>/`, that
appears whole or not at all.

Each job's files are written under a temporary dot-name, fsynced, and renamed into place;
`result.json` is written last, so its presence means the job's outputs are complete. PNGs
carry the generation parameters in a `parameters` text chunk, in the "infotext" form other
Stable Diffusion tools read, so an image alone says how it was made.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from . import samplers
from .durable import fsync_path
from .errors import OutboxWriteFailed
from .faults import NO_FAULTS, Faults
from .spec import JobSpec

log = logging.getLogger(__name__)

RESULT = "result.json"
_STAGING = ".tmp-"  # working directories (staged, moved aside): never a job's directory
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_WORKING = re.compile(rf"{re.escape(_STAGING)}(?P<host>[A-Za-z0-9.-]+)\.(?P<pid>\d+)\.[^.]+")
STALE_ELSEWHERE_S = 24 * 3600.0


def infotext(
    spec: JobSpec,
    seed: int,
    width: int,
    height: int,
    *,
    loras: Sequence[Mapping[str, Any]] = (),
    vae: Mapping[str, Any] | None = None,
    schedule: str | None = None,
    hires_schedule: str | None = None,
    first_size: tuple[int, int] | None = None,
    guidance: str = "classifier-free",
) -> str:
    """The parameters of one image as AUTOMATIC1111 writes them (and others read them):
    LoRAs as `<lora:name:scale>` tags in the prompt and their `Lora hashes`: each name
    (less `:` and `,`) with the first 12 hex digits of its tensor data's SHA-256, the
    hash A1111 computes for a safetensors LoRA, so its tools and CivitAI (`AutoV3`)
    recognise the file. A hires job's `Size` is its first pass's (`first_size`, as the
    engine ran it; else the spec's), as in A1111. A VAE in place of the model's own: its
    `VAE hash` (the first 10 hex digits of its file's SHA-256) and `VAE` (its file name),
    after `Model`, as A1111 1.10 writes them.

    A sampler named without a schedule type ran on the model's own spacing: `schedule`
    (and `hires_schedule`, the second pass's) is the A1111 schedule type that reproduces
    it (`engine.schedulers.a1111_schedule`), written as its `Schedule type`, since A1111
    reads none as its own choice for the sampler (DPM++ 2M: Karras), another image.

    `guidance`: what the model's guidance_scale is (`BatchOutput.guidance`). Where it is
    FLUX.1's `distilled` guidance (or `none`, schnell's), `CFG scale` is the true CFG (1:
    none) and `Distilled CFG Scale` the guidance, as Forge writes them for FLUX.1.
    """
    if spec.hires is not None:
        if first_size is not None:
            width, height = first_size
        elif spec.width and spec.height:
            width, height = spec.width, spec.height
    lines = [_prompt_with_tags(spec.prompt, loras)]
    if spec.negative_prompt:
        lines.append(f"Negative prompt: {spec.negative_prompt}")
    settings = [
        ("Steps", spec.steps),
        *_sampler_and_schedule(spec.scheduler, schedule),
        *_guidance_settings(spec, guidance),
        ("Seed", seed),
        ("Size", f"{width}x{height}"),
        ("Model", (spec.model or "").removeprefix("sd/")),
    ]
    settings.extend(_vae_settings(vae))
    if spec.strength is not None:
        settings.append(("Denoising strength", f"{spec.strength:g}"))
    settings.extend(_hires_settings(spec, schedule, hires_schedule))
    settings.extend(_lora_hashes(loras))
    lines.append(", ".join(f"{key}: {value}" for key, value in settings))
    return "\n".join(lines)


def _prompt_with_tags(prompt: str, loras: Sequence[Mapping[str, Any]]) -> str:
    """The prompt with a `<lora:name:scale>` tag for each LoRA."""
    tags = " ".join(
        f"<lora:{str(lora['name']).removeprefix('lora/')}:{float(lora['scale']):g}>"
        for lora in loras
    )
    return f"{prompt} {tags}" if tags else prompt


def _vae_settings(vae: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """`VAE hash` and `VAE` (its file name) of a VAE in place of the model's own."""
    if not vae:
        return []
    name = vae.get("file_name") or str(vae.get("name", "")).removeprefix("vae/")
    return [("VAE hash", str(vae.get("sha256", ""))[:10]), ("VAE", name)]


def _lora_hashes(loras: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """`Lora hashes`: each LoRA's A1111 name with its tensor data's hash."""
    if not loras:
        return []
    hashes = ", ".join(
        f"{_a1111_lora_name(lora)}: {str(lora.get('tensors_sha256', ''))[:12]}" for lora in loras
    )
    return [("Lora hashes", f'"{hashes}"')]


def _guidance_settings(spec: JobSpec, guidance: str) -> list[tuple[str, str]]:
    if guidance == "classifier-free":
        return [("CFG scale", f"{spec.guidance_scale:g}")]
    settings = [("CFG scale", f"{spec.true_cfg_scale or 1:g}")]
    if guidance == "distilled":
        settings.append(("Distilled CFG Scale", f"{spec.guidance_scale:g}"))
    return settings


def _hires_settings(
    spec: JobSpec, schedule: str | None = None, hires_schedule: str | None = None
) -> list[tuple[str, Any]]:
    """Clip skip and the hires fix, named and ordered as A1111 1.10 writes them (the
    schedule types: as `_a1111_names` has them)."""
    hires = spec.hires
    settings: list[tuple[str, Any]] = []
    if hires is not None:
        settings.append(("Denoising strength", f"{hires.strength:g}"))
    if spec.clip_skip is not None and spec.clip_skip > 1:
        settings.append(("Clip skip", spec.clip_skip))
    if hires is None:
        return settings
    first = _a1111_names(spec.scheduler, schedule)
    second = _a1111_names(hires.scheduler or spec.scheduler, hires_schedule)
    if second[0] != first[0]:
        settings.append(("Hires sampler", second[0]))
    if hires.prompt is not None and hires.prompt != spec.prompt:
        settings.append(("Hires prompt", _quote(hires.prompt)))
    if hires.negative_prompt is not None and hires.negative_prompt != spec.negative_prompt:
        settings.append(("Hires negative prompt", _quote(hires.negative_prompt)))
    if second[1] != first[1]:
        settings.append(("Hires schedule type", second[1]))
    if hires.width is None and hires.height is None:
        settings.append(("Hires upscale", f"{hires.scale:g}"))
    else:
        settings.append(("Hires resize", f"{hires.width or 0}x{hires.height or 0}"))
    if hires.steps:
        settings.append(("Hires steps", hires.steps))
    settings.append(("Hires upscaler", hires.upscaler))
    return settings


def _quote(text: str) -> str:
    """A value as A1111 writes it: in JSON quotes when it holds a comma, colon or line
    break (which would end it)."""
    if any(mark in text for mark in ",:\n"):
        return json.dumps(text, ensure_ascii=False)
    return text


def _a1111_names(scheduler: str, ran: str | None = None) -> tuple[str, str]:
    """A1111's sampler name and schedule label of a scheduler name: the name's own
    schedule type, else the one it `ran` on, else "Automatic" (a name not of ours as it
    is, with no schedule)."""
    try:
        sampler, label = samplers.to_a1111(scheduler)
    except KeyError:
        sampler, label = scheduler, "Automatic"
    if label == "Automatic" and ran is not None:
        label = ran
    return sampler, label


def _sampler_and_schedule(scheduler: str, ran: str | None = None) -> list[tuple[str, str]]:
    """A1111's `Sampler` and, where there is one, its `Schedule type` (A1111 leaves that
    out when none was asked for)."""
    sampler, schedule = _a1111_names(scheduler, ran)
    if schedule == "Automatic":
        return [("Sampler", sampler)]
    return [("Sampler", sampler), ("Schedule type", schedule)]


def _a1111_lora_name(lora: Mapping[str, Any]) -> str:
    return str(lora["name"]).removeprefix("lora/").replace(":", "").replace(",", "")


def image_name(job_id: str, index: int) -> str:
    return f"{job_id}-{index}.png"


@dataclass(frozen=True)
class Written:
    directory: Path
    files: list[str]  # image file names, in order
    already_there: bool  # an earlier run of the job had written it completely
    # A later claim of the job wrote its directory: this (late) attempt wrote nothing.
    superseded: bool = False


def claim_of(result: Mapping[str, Any] | None) -> int:
    """The claim a result was written under (0 for a directory from before claims)."""
    try:
        return int((result or {}).get("claim") or 0)
    except (TypeError, ValueError):
        return 0


class Outbox:
    """Writes and reads job directories under one root.

    Each directory belongs to the claim of the job that wrote it (`result["claim"]`, the
    job's `claims` when it was claimed, a number that only grows). A
    runner whose lease lapsed while another runner took the job over holds an earlier
    claim: whatever it writes or removes late never touches the later claim's files.
    """

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
        return self._read(self.job_dir(job_id))

    def write(
        self,
        job_id: str,
        result: dict[str, Any],
        images: Sequence[Image.Image] = (),
        parameters: Sequence[str] = (),
    ) -> Written:
        """Write the job's images (each with its `parameters` text) and then
        `result.json`, durably, and move them into place at once, as the files of the
        claim `result["claim"]`.

        A complete directory of a success is kept, whoever wrote it (the job ran before
        and its runner died before recording it): nothing is written twice. A failure's
        is replaced only by a later claim's files. A directory of a later claim is never
        replaced: this attempt is late, and writes nothing (`superseded`).
        """
        target = self.job_dir(job_id)
        names = [image_name(job_id, i) for i in range(len(images))]
        claim = claim_of(result)
        decided = self._decide(job_id, claim, names)
        if decided is not None:
            return decided
        # Everything that can be refused is refused before any file exists.
        encoded = json.dumps(result, indent=2, ensure_ascii=False)
        texts = list(parameters) or [""] * len(names)
        if len(texts) != len(names):
            raise ValueError(f"{len(names)} images but {len(texts)} parameters texts")
        staging = self.root / _working_name(job_id, "staged")
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
            decided = self._move_into_place(job_id, staging, claim, names)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise OutboxWriteFailed(
                f"cannot write the outputs of job {job_id} to {self.root}: {exc.strerror or exc}",
                job_id=job_id,
            ) from exc
        if decided is not None:
            shutil.rmtree(staging, ignore_errors=True)
            return decided
        return Written(target, names, already_there=False)

    def _decide(self, job_id: str, claim: int, names: list[str]) -> Written | None:
        """What an existing directory means for a write of `claim`: kept (a success's,
        or a later claim's), or None: this write may replace it (or there is none)."""
        target = self.job_dir(job_id)
        earlier = self.read_result(job_id)
        if earlier is None:
            return None
        if earlier.get("status") == "succeeded" and claim_of(earlier) <= claim:
            return Written(target, names, already_there=True)
        if claim_of(earlier) >= claim:
            log.warning(
                "job %s: its directory is claim %d's; this late claim %d writes nothing",
                job_id,
                claim_of(earlier),
                claim,
                extra={"job_id": job_id},
            )
            return Written(target, names, already_there=False, superseded=True)
        return None

    def _move_into_place(
        self, job_id: str, staging: Path, claim: int, names: list[str]
    ) -> Written | None:
        """Rename the staged directory to the job's. A rename never replaces a directory
        that has files, so two writers cannot both land: whoever finds a directory there
        decides again what it may do, and moves an earlier claim's aside first."""
        target = self.job_dir(job_id)
        while True:
            try:
                staging.rename(target)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            else:
                fsync_path(self.root)
                return None
            decided = self._decide(job_id, claim, names)
            if decided is not None:
                return decided
            # An earlier claim's failure, or an incomplete directory (from an older
            # version, or by hand): moved aside at once, then removed.
            aside = self.root / _working_name(job_id, "replaced")
            try:
                target.rename(aside)
            except FileNotFoundError:
                continue  # someone else moved it meanwhile: try again
            shutil.rmtree(aside, ignore_errors=True)

    def remove(self, job_id: str, *, claim: int) -> bool:
        """Delete a job's directory if `claim` wrote it: a runner removes its own
        attempt's files, never a later one's. Whether it was removed.

        Another claim's directory is never touched: its claim is read first. Only this
        claim's is moved aside (it vanishes whole), and read again there, in case a later
        claim's landed in between; that one is put back at once. (A crash after a move
        aside leaves a working directory that start-up removes: this claim's own.)"""
        found = claim_of(self.read_result(job_id))
        if found != claim:
            if self.job_dir(job_id).exists():
                log.info(
                    "job %s: its directory is claim %d's, not %d's; left as it is",
                    job_id,
                    found,
                    claim,
                    extra={"job_id": job_id},
                )
            return False
        aside = self.root / _working_name(job_id, "removed")
        try:
            self.job_dir(job_id).rename(aside)
        except OSError:
            return False
        if claim_of(self._read(aside)) != claim:  # replaced between the read and the move
            self._put_back(job_id, aside)
            return False
        shutil.rmtree(aside, ignore_errors=True)
        return True

    def _put_back(self, job_id: str, aside: Path) -> None:
        """Return a directory moved aside; if a writer landed one meanwhile, the later
        claim's of the two stays."""
        target = self.job_dir(job_id)
        while True:
            try:
                aside.rename(target)
                return
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            if claim_of(self.read_result(job_id)) >= claim_of(self._read(aside)):
                shutil.rmtree(aside, ignore_errors=True)
                return
            displaced = self.root / _working_name(job_id, "replaced")
            try:
                target.rename(displaced)
            except FileNotFoundError:
                continue
            shutil.rmtree(displaced, ignore_errors=True)

    @staticmethod
    def _read(directory: Path) -> dict[str, Any] | None:
        try:
            return json.loads((directory / RESULT).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def remove_stale(self) -> list[str]:
        """Delete the working directories left by writers that died (run at a runner's
        start-up). Runners on several hosts share one outbox, so only this host's dead
        processes' are removed at once; another host's after `STALE_ELSEWHERE_S`, long
        past any write (that host is gone, or renamed)."""
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        now = time.time()
        for entry in self.root.iterdir():
            if not entry.name.startswith(_STAGING) or not entry.is_dir():
                continue
            host, pid = _writer_of(entry.name)
            if host == _HOST and pid is not None and _alive(pid):
                continue
            if host is not None and host != _HOST:
                try:
                    if now - entry.stat().st_mtime < STALE_ELSEWHERE_S:
                        continue
                except OSError:
                    continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
        if removed:
            log.info("removed %d unfinished outbox directories", len(removed))
        return removed


def _working_name(job_id: str, purpose: str) -> str:
    """A working directory's name: its writer (host and pid), the job, what it is for."""
    return f"{_STAGING}{_HOST}.{os.getpid()}.{job_id}-{purpose}-{secrets.token_hex(4)}"


def _writer_of(name: str) -> tuple[str | None, int | None]:
    found = _WORKING.fullmatch(name)
    if found is None:
        return None, None  # an older version's: its writer is long gone
    return found["host"], int(found["pid"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
