"""Reading a .safetensors file's header (tensor names, shapes, metadata) without torch."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

_HEADER_LIMIT = 100 * 1024 * 1024  # a safetensors header larger than this is not one


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file: tensor names, shapes, and metadata."""
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise ValueError("too short to be a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if not 2 <= length <= _HEADER_LIMIT:
            raise ValueError("no safetensors header")
        header = json.loads(handle.read(length).decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("the safetensors header is not a JSON object")
    return header
