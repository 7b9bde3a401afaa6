"""A tiny model's transformer written as one file, as FLUX.1 and SD 3.x transformers are
shared: a GGUF quantization (Q8_0 where a weight's rows split into 32-value blocks, as
llama.cpp's tools quantize; the rest in F32) or a .safetensors file, both with diffusers'
tensor names (what a tiny model can be saved as: the released files' original names
are read by diffusers' own conversion, which is diffusers' to test)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import save_file


def transformer_tensors(folder: Path) -> dict[str, np.ndarray]:
    """The transformer's weights of a diffusers folder, as float32 arrays."""
    from safetensors.numpy import load_file

    tensors: dict[str, np.ndarray] = {}
    for shard in sorted((folder / "transformer").glob("*.safetensors")):
        tensors.update({k: v.astype(np.float32) for k, v in load_file(str(shard)).items()})
    return tensors


def write_gguf(folder: Path, path: Path) -> Path:
    writer = gguf.GGUFWriter(str(path), arch="transformer")
    for name, array in transformer_tensors(folder).items():
        if array.ndim == 2 and array.shape[-1] % 32 == 0:
            quantized = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_safetensors(folder: Path, path: Path) -> Path:
    save_file(transformer_tensors(folder), str(path))
    return path
