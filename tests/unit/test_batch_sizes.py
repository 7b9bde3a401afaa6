"""How many images one pipeline call takes: capped by runner.max_batch, and on a GPU by
the free memory for the model family and size; the batch sizes a compiled pipeline runs."""

from __future__ import annotations

import pytest

from alice_spool.engine.speed import GIB, HEADROOM_BYTES, batch_buckets, batch_limit, bucket_for


def test_off_a_gpu_only_the_configured_cap_counts() -> None:
    assert batch_limit("sd1", 512, 512, free_bytes=None, cap=8) == 8
    assert batch_limit("sdxl", 2048, 2048, free_bytes=None, cap=3) == 3


def test_free_memory_limits_by_family_and_size() -> None:
    h100 = 70 * GIB  # free after an SD 1.5 model is loaded
    assert batch_limit("sd1", 512, 512, free_bytes=h100, cap=64) == 64  # cap first
    small = 8 * GIB
    sd1 = batch_limit("sd1", 512, 512, free_bytes=small, cap=64)
    sdxl = batch_limit("sdxl", 1024, 1024, free_bytes=small, cap=64)
    assert sd1 == 8 and sdxl == 2
    # Four times the pixels, about a quarter of the images.
    assert batch_limit("sd1", 1024, 1024, free_bytes=small, cap=64) == sd1 // 4
    assert batch_limit("unknown", 512, 512, free_bytes=small, cap=64) == sd1  # as SD 1.x
    # Never below one: a lone image is tried (and split or failed on out-of-memory).
    assert batch_limit("sdxl", 2048, 2048, free_bytes=HEADROOM_BYTES, cap=8) == 1
    assert batch_limit("sd1", 512, 512, free_bytes=0, cap=8) == 1


@pytest.mark.parametrize(
    ("max_batch", "buckets"),
    [(1, [1]), (2, [1, 2]), (6, [1, 2, 4, 6]), (8, [1, 2, 4, 8]), (16, [1, 2, 4, 8, 16])],
)
def test_buckets(max_batch: int, buckets: list[int]) -> None:
    assert batch_buckets(max_batch) == buckets
    assert bucket_for(max_batch + 5, buckets) == max_batch  # (the runner never asks)


def test_a_call_is_padded_to_the_next_bucket() -> None:
    assert [bucket_for(n, [1, 2, 4, 6]) for n in range(1, 7)] == [1, 2, 4, 4, 6, 6]
