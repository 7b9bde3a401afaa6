"""A model on disk, read from its configs and headers alone (no torch): `ModelInfo`, with
its family, variant, size and native resolution.

- A diffusers folder (`model_index.json`): the family from its pipeline class and its
  UNet's config (cross-attention width 768: SD 1.x, 1024: SD 2.x, XL pipeline: SDXL),
  or its transformer's (SD 3.x; FLUX.1, whose variant says what it runs with: dev,
  schnell without guidance embeddings, Kontext, Fill).
- A single-file `.safetensors` checkpoint: the family from its tensor names, read from
  the file's JSON header; a FLUX.1 or SD 3.x transformer in one file (`.safetensors` or
  `.gguf`), told by its tensors.

A model that cannot be read is a `ModelInfo` with the reason it is broken.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..spec import MODEL_PREFIX
from . import transformer_files
from .families import FAMILY_NAMES, NATIVE, defaults, is_flow
from .safetensors_file import read_safetensors_header

TINY_MARKER = "alice_spool_tiny"  # written into model_index.json by `models create-tiny`
TINY_NATIVE = 64  # the tiny models' size (FLUX's pipeline says 1024 whatever the model)

# The schedulers a flow-matching family runs (diffusers' FlowMatchEulerDiscreteScheduler,
# with the sigma curves it has); the first is its default. The spacing schedule types
# (A1111's Automatic is Uniform for Euler) are its own evenly spaced sigmas.
FLOW_SCHEDULERS = (
    "euler", "euler_karras", "euler_exponential", "euler_beta",
    "euler_uniform", "euler_simple", "euler_normal", "euler_sgm_uniform",
)  # fmt: skip


@dataclass(frozen=True)
class ModelInfo:
    id: str  # sd/<name>
    name: str
    path: Path
    # "diffusers" | "single_file" | "transformer_file" (FLUX.1's, SD 3.x's: transformer_files.py)
    format: str
    family: str | None  # families.FAMILIES: "sd1" | "sd2" | "sdxl" | "sd3" | "flux"
    size_bytes: int
    native_size: int | None
    broken: str | None = None  # why it cannot be used
    smoke_test: bool = False  # the tiny random-weight model: its images are noise
    variant: str | None = None  # FLUX.1's: "dev" | "schnell" | "kontext" | "fill"

    @property
    def ok(self) -> bool:
        return self.broken is None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["status"] = "ok" if self.ok else "broken"
        data["family_name"] = FAMILY_NAMES.get(self.family or "")
        steps, guidance = defaults(self.family, self.variant)
        flow = is_flow(self.family)
        data["defaults"] = {
            "steps": steps,
            "guidance_scale": guidance,
            "scheduler": FLOW_SCHEDULERS[0] if flow else None,
        }  # None: the server's (generation.default_*)
        data["schedulers"] = list(FLOW_SCHEDULERS) if flow else None  # None: every one
        return data


def _size(path: Path) -> int:
    """Bytes on disk; files that vanish or cannot be read (a dangling link) count 0, and
    so do folders that vanish while they are walked (a model being deleted)."""

    def size(file: Path) -> int:
        try:
            return file.stat().st_size if file.is_file() else 0
        except OSError:
            return 0

    if not path.is_dir():
        return size(path)
    # os.walk passes over a folder it cannot list (gone mid-walk); symlinked folders are
    # not walked into, symlinked files count as their targets.
    return sum(size(Path(folder) / name) for folder, _, files in os.walk(path) for name in files)


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return data


def read_diffusers_folder(path: Path, name: str) -> ModelInfo:
    def broken(reason: str) -> ModelInfo:
        return ModelInfo(
            MODEL_PREFIX + name, name, path, "diffusers", None, _size(path), None, reason
        )

    try:
        index = _read_json(path / "model_index.json")
        pipeline = str(index.get("_class_name", ""))
        if pipeline.startswith(("Flux", "StableDiffusion3")):
            return _transformer_folder(path, name, index, pipeline)
        unet = _read_json(path / "unet" / "config.json")
        vae = _read_json(path / "vae" / "config.json")
    except FileNotFoundError as exc:
        return broken(f"missing {Path(exc.filename).relative_to(path)}")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return broken(f"unreadable config: {exc}")
    cross = unet.get("cross_attention_dim")
    if "XL" in pipeline or unet.get("addition_embed_type") == "text_time":
        family = "sdxl"
    elif cross == 1024:
        family = "sd2"
    elif "StableDiffusion" in pipeline:
        family = "sd1"
    else:
        return broken(f"not a Stable Diffusion pipeline ({pipeline or 'no _class_name'})")
    try:
        scale = 2 ** (len(vae["block_out_channels"]) - 1)
        native = int(unet["sample_size"]) * scale
    except (KeyError, TypeError, ValueError):
        native = NATIVE[family]
    return ModelInfo(
        MODEL_PREFIX + name,
        name,
        path,
        "diffusers",
        family,
        _size(path),
        native,
        smoke_test=TINY_MARKER in index,
    )


# The pipelines of the transformer families this registry lists, by their class name.
_TRANSFORMER_PIPELINES = {
    "FluxPipeline": ("flux", None),
    "FluxKontextPipeline": ("flux", "kontext"),
    "FluxFillPipeline": ("flux", "fill"),
    "StableDiffusion3Pipeline": ("sd3", None),
}
_FLUX_FILL_CHANNELS = 384  # a Fill transformer's input: latents, masked image and mask


def _transformer_folder(path: Path, name: str, index: dict[str, Any], pipeline: str) -> ModelInfo:
    """A FLUX.1 or SD 3.x diffusers folder, from its transformer's and VAE's configs
    (FileNotFoundError, ValueError: the caller lists it as broken)."""
    known = _TRANSFORMER_PIPELINES.get(pipeline)
    if known is None:
        raise ValueError(f"{pipeline} pipelines are not run here")
    family, variant = known
    transformer = _read_json(path / "transformer" / "config.json")
    vae = _read_json(path / "vae" / "config.json")
    scale = 2 ** (len(vae.get("block_out_channels") or [0] * 4) - 1)
    if family == "flux":
        if variant is None and transformer.get("in_channels") == _FLUX_FILL_CHANNELS:
            variant = "fill"
        if variant is None:
            variant = "dev" if transformer.get("guidance_embeds") else "schnell"
        native = NATIVE["flux"]  # the pipeline's own default, whatever the config says
    else:
        try:
            native = int(transformer["sample_size"]) * scale
        except (KeyError, TypeError, ValueError):
            native = NATIVE[family]
    if TINY_MARKER in index:
        native = TINY_NATIVE
    return ModelInfo(
        MODEL_PREFIX + name,
        name,
        path,
        "diffusers",
        family,
        _size(path),
        native,
        smoke_test=TINY_MARKER in index,
        variant=variant,
    )


def read_single_file(path: Path, name: str) -> ModelInfo:
    size = path.stat().st_size
    try:
        keys = read_safetensors_header(path).keys()
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return ModelInfo(MODEL_PREFIX + name, name, path, "single_file", None, size, None, str(exc))
    if any(k.startswith(prefix) for prefix, _ in _FLOW_TENSORS for k in keys):
        return read_transformer_file(path, name)  # FLUX.1 or SD 3.x: its transformer
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        family = "sdxl"
    elif any(k.startswith("cond_stage_model.model.") for k in keys):
        family = "sd2"
    elif any(k.startswith("cond_stage_model.transformer.") for k in keys):
        family = "sd1"
    else:
        return ModelInfo(
            MODEL_PREFIX + name,
            name,
            path,
            "single_file",
            None,
            size,
            None,
            "not a Stable Diffusion checkpoint (no known text encoder tensors)",
        )
    return ModelInfo(MODEL_PREFIX + name, name, path, "single_file", family, size, NATIVE[family])


# Tensor names only FLUX.1's and SD 3.x's transformers have: the original layout and
# ComfyUI's (whose keys start with "model.diffusion_model."), and diffusers' own.
_FLOW_TENSORS = (
    ("double_blocks.", "flux"),
    ("model.diffusion_model.double_blocks.", "flux"),
    ("single_transformer_blocks.", "flux"),
    ("joint_blocks.", "sd3"),
    ("model.diffusion_model.joint_blocks.", "sd3"),
    ("context_embedder.", "sd3"),
)


def read_transformer_file(path: Path, name: str) -> ModelInfo:
    """A FLUX.1 or SD 3.x transformer in one file (.safetensors or .gguf: transformer_files.py),
    run with the components of an installed model of its family and variant."""
    size = path.stat().st_size
    try:
        found = transformer_files.read(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return ModelInfo(MODEL_PREFIX + name, name, path, "transformer_file", None, size, None,
                         str(exc))  # fmt: skip
    return ModelInfo(
        MODEL_PREFIX + name, name, path, "transformer_file", found.family, size,
        NATIVE[found.family], variant=found.variant,
    )  # fmt: skip
