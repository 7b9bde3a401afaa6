"""The LoRA lists, `/v1/loras` and ALICE's `/v1/models/loras`, on a real server: each
item has ALICE's `created` (the file's mtime), `sizeMb` and `baseModel` beside our own
`family`, `size_bytes` and `status`, and never the server's path."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from safetensors.numpy import save_file

from tests.support.bare import Bare

TO_K = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight"
MTIME = 1_767_225_600  # 2026-01-01T00:00:00Z


def write_lora(path: Path, tensors: dict[str, tuple[int, ...]]) -> int:
    """A LoRA file of zero weights, dated MTIME; its size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: np.zeros(shape, dtype=np.float16) for key, shape in tensors.items()}, path)
    os.utime(path, (MTIME, MTIME + 0.75))
    return path.stat().st_size


def test_both_lora_lists_have_alices_fields_beside_ours(make_bare: Callable[..., Bare]) -> None:
    bare = make_bare()
    loras = bare.models / "loras"
    sizes = {
        "grain": write_lora(loras / "grain.safetensors", {TO_K: (64, 768)}),
        "wide": write_lora(loras / "wide.safetensors", {TO_K: (256, 2048)}),
    }
    torn = loras / "torn.safetensors"  # a header that says more than the file holds
    torn.write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{}")
    os.utime(torn, (MTIME, MTIME))
    sizes["torn"] = 10

    answers = [httpx.get(bare.url + path, timeout=10) for path in ("/v1/loras", "/v1/models/loras")]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.json()["object"] == "list"
    ours, alices = (answer.json()["data"] for answer in answers)
    assert ours == alices  # one shape for both routes
    by_id = {item["id"]: item for item in ours}
    assert sorted(by_id) == ["lora/grain", "lora/torn", "lora/wide"]
    expected = {"grain": ("sd1", "SD 1.x"), "wide": ("sdxl", "SDXL"), "torn": (None, "unknown")}
    for name, (family, base_model) in expected.items():
        item = by_id[f"lora/{name}"]
        assert item["created"] == MTIME and isinstance(item["created"], int)
        assert item["sizeMb"] == round(sizes[name] / 1_048_576, 2)
        assert isinstance(item["sizeMb"], float)
        assert item["baseModel"] == base_model
        assert (item["name"], item["family"], item["size_bytes"]) == (name, family, sizes[name])
        assert item["object"] == "lora" and "path" not in item
    assert by_id["lora/wide"]["sizeMb"] > 0.5  # 256 x 2048 halves: about 1 MiB
    assert (by_id["lora/grain"]["status"], by_id["lora/torn"]["status"]) == ("ok", "broken")
    assert by_id["lora/torn"]["reason"]
