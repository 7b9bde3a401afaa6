"""Choosing how a model fits in the GPU's memory (`runner.memory = "auto"`)."""

from __future__ import annotations

import pytest

from alice_spool.engine.memory import GB, plan


@pytest.mark.parametrize(
    ("family", "free_gb", "expected"),
    [
        ("sd1", 24, "full"),
        ("sd1", 4, "full"),
        ("sd1", 3.9, "low"),  # a 6 GB card with the desktop on it
        ("sd1", 1.5, "minimal"),
        ("sd2", 4.5, "low"),
        ("sdxl", 16, "full"),
        ("sdxl", 8, "low"),  # an 8 GB card
        ("sdxl", 5, "minimal"),
        ("unknown", 3, "low"),  # like SD 1.x
    ],
)
def test_auto_follows_free_memory_and_family(family: str, free_gb: float, expected: str) -> None:
    assert plan("auto", free_bytes=int(free_gb * GB), family=family) == expected


@pytest.mark.parametrize("mode", ["auto", "full", "low", "minimal"])
def test_without_a_gpu_there_is_nothing_to_save(mode: str) -> None:
    # (`place` puts the whole model on a CPU or Apple GPU: results say so)
    assert plan(mode, free_bytes=None, family="sdxl") == "full"


@pytest.mark.parametrize("mode", ["full", "low", "minimal"])
def test_an_explicit_mode_is_kept(mode: str) -> None:
    assert plan(mode, free_bytes=100 * GB, family="sd1") == mode
