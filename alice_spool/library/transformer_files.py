"""A FLUX.1 or SD 3.x transformer in one file: a `.safetensors`
checkpoint (Black Forest Labs' and Stability's releases, ComfyUI's, or a diffusers
transformer saved alone) or a `.gguf` quantization (city96's and others'), told by its
tensor names, never by its file name. Such a file holds the transformer only (or the
transformer with the rest, which is not read): the engine pairs it with the components
of an installed diffusers model of the same family and variant, or of the family's base
repository in the Hugging Face cache (`base_repository`).

Pure: reading a GGUF file's tensor names needs the `gguf` package (the [gpu] extra),
imported only when there is one to read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .safetensors_file import read_safetensors_header

# ComfyUI's checkpoints put the transformer under this prefix.
_COMFY = "model.diffusion_model."
# A FLUX.1 Fill transformer reads 384 channels: latents, the masked image and the mask.
FILL_CHANNELS = 384
# The repositories whose components a family's transformer file runs with, by variant.
BASE_REPOSITORIES = {
    ("flux", "dev"): "black-forest-labs/FLUX.1-dev",
    ("flux", "schnell"): "black-forest-labs/FLUX.1-schnell",
    ("flux", "fill"): "black-forest-labs/FLUX.1-Fill-dev",
    ("sd3", None): "stabilityai/stable-diffusion-3.5-large",
}


@dataclass(frozen=True)
class TransformerFile:
    family: str  # "flux" | "sd3"
    variant: str | None  # FLUX.1: "dev" | "schnell" | "fill"; None for SD 3.x
    layout: str  # "original" (the releases', ComfyUI's) | "diffusers"
    quantization: str | None = None  # a GGUF file's, e.g. "Q8_0"; None: not quantized


class NotATransformer(ValueError):
    """The file is not a FLUX.1 or SD 3.x transformer (the message says why)."""


def base_repository(family: str, variant: str | None) -> str:
    return BASE_REPOSITORIES.get((family, variant)) or BASE_REPOSITORIES[(family, None)]


def classify(shapes: Mapping[str, Sequence[int]]) -> TransformerFile:
    """A transformer's family and variant from its tensors' names and shapes (a 2-D
    weight's shape in either order: GGUF lists dimensions reversed)."""
    names = {name.removeprefix(_COMFY): shape for name, shape in shapes.items()}

    def has(prefix: str) -> bool:
        return any(name.startswith(prefix) for name in names)

    def channels(name: str) -> set[int]:
        return {int(dim) for dim in names.get(name, ())}

    if has("double_blocks."):  # FLUX.1, as Black Forest Labs release it
        if FILL_CHANNELS in channels("img_in.weight"):
            return TransformerFile("flux", "fill", "original")
        return TransformerFile("flux", "dev" if has("guidance_in.") else "schnell", "original")
    if has("single_transformer_blocks."):  # FLUX.1, as diffusers saves its transformer
        if FILL_CHANNELS in channels("x_embedder.weight"):
            return TransformerFile("flux", "fill", "diffusers")
        guided = has("time_text_embed.guidance_embedder.")
        return TransformerFile("flux", "dev" if guided else "schnell", "diffusers")
    if has("joint_blocks."):
        return TransformerFile("sd3", None, "original")
    if has("transformer_blocks.") and has("context_embedder.") and has("pos_embed."):
        return TransformerFile("sd3", None, "diffusers")
    raise NotATransformer("not a FLUX.1 or SD 3.x transformer (no known block tensors)")


def read(path: Path) -> TransformerFile:
    """What transformer `path` holds (NotATransformer, OSError or ValueError: it holds
    none that can be read; the message says why)."""
    if path.suffix == ".gguf":
        return _read_gguf(path)
    header = read_safetensors_header(path)
    return classify({name: entry.get("shape", ()) for name, entry in header.items()})


def _read_gguf(path: Path) -> TransformerFile:
    try:
        from gguf import GGUFReader
    except ImportError:
        raise NotATransformer(
            "reading a GGUF file needs the gguf package: pip install -c constraints.txt "
            "'alice-spool[gpu]'"
        ) from None
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # the reader raises several kinds for a damaged file
        raise NotATransformer(f"not a readable GGUF file: {exc}") from exc
    found = classify({t.name: [int(d) for d in t.shape] for t in reader.tensors})
    kinds = {t.tensor_type.name for t in reader.tensors if t.tensor_type.name not in ("F32", "F16")}
    quantization = "+".join(sorted(kinds)) if kinds else "F16"
    return TransformerFile(found.family, found.variant, found.layout, quantization)
