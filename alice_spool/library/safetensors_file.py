"""Reading a .safetensors file's header (tensor names, shapes, metadata) without torch,
and checking that the data it declares is the data the file holds."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

_HEADER_LIMIT = 100 * 1024 * 1024  # a safetensors header larger than this is not one
# Bits per element of each dtype the format names (sub-byte ones pack their elements).
_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file: tensor names, shapes, and metadata."""
    return _read(path)[0]


def check_safetensors_data(path: Path) -> dict[str, Any]:
    """The header, once the file is shown to hold exactly the data it declares: each
    tensor's offsets inside the data, in order, neither overlapping nor leaving gaps,
    each as long as its shape and dtype make it, and the data ending where the file
    does (as the safetensors library itself demands when it loads the file). A
    `ValueError` says what is wrong: a truncated file is caught here, before it is
    installed, not when a model loads it."""
    header, data_length = _read(path)
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise ValueError(f"tensor {name!r} is not described by an object")
        offsets, shape, dtype = entry.get("data_offsets"), entry.get("shape"), entry.get("dtype")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int and o >= 0 for o in offsets)
            and offsets[0] <= offsets[1]
        ):
            raise ValueError(f"tensor {name!r} has no valid data_offsets")
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            raise ValueError(f"tensor {name!r} has no valid shape")
        bits = _DTYPE_BITS.get(str(dtype))
        if bits is not None:
            needed = (math.prod(shape) * bits + 7) // 8  # whole numbers: exact at any size
            if offsets[1] - offsets[0] != needed:
                raise ValueError(
                    f"tensor {name!r} ({dtype} {shape}) needs {needed} bytes, its offsets "
                    f"give {offsets[1] - offsets[0]}"
                )
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for start, stop, name in sorted(spans):
        if start != end:
            what = "overlaps the tensor before it" if start < end else "leaves a gap before it"
            raise ValueError(f"tensor {name!r} {what} (at byte {start} of the data)")
        end = stop
    if end != data_length:
        raise ValueError(
            f"the header declares {end} bytes of tensor data and the file holds {data_length}"
        )
    return header


def _read(path: Path) -> tuple[dict[str, Any], int]:
    """The header and the length of the data after it."""
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise ValueError("too short to be a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if not 2 <= length <= _HEADER_LIMIT:
            raise ValueError("no safetensors header")
        header = json.loads(handle.read(length).decode("utf-8"))
        size = handle.seek(0, 2)
    if not isinstance(header, dict):
        raise ValueError("the safetensors header is not a JSON object")
    return header, max(0, size - 8 - length)
