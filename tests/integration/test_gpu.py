"""The engine on a CUDA GPU (fp16): skipped on machines without one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from alice_spool.engine.tiny import create_tiny

    return create_tiny(tmp_path_factory.mktemp("models"))


def spec(**fields: object):
    from alice_spool.spec import parse_spec

    return parse_spec({"prompt": "a lighthouse", "steps": 4, "seed": 11, **fields})


def test_auto_picks_cuda_in_fp16_and_full_memory(tiny_dir: Path) -> None:
    import torch

    from alice_spool.engine.device import choose
    from alice_spool.engine.generate import load

    placement = choose("auto")
    assert placement.device.type == "cuda" and placement.dtype is torch.float16
    loaded = load(tiny_dir, "sd/tiny", placement)
    assert loaded.memory_mode == "full"  # a tiny model fits anywhere


@pytest.mark.parametrize("scheduler", ["euler_a", "dpm++_sde_karras", "dpm++_2m_karras"])
def test_reproducible_and_batch_consistent_on_the_gpu(tiny_dir: Path, scheduler: str) -> None:
    from alice_spool.engine.device import choose
    from alice_spool.engine.generate import generate, load

    loaded = load(tiny_dir, "sd/tiny", choose("cuda"))
    alone = np.asarray(generate(loaded, [spec(scheduler=scheduler)]).jobs[0].images[0])
    again = np.asarray(generate(loaded, [spec(scheduler=scheduler)]).jobs[0].images[0])
    assert np.array_equal(alone, again)
    batch = generate(loaded, [spec(scheduler=scheduler, seed=5, n=3), spec(scheduler=scheduler)])
    inside = np.asarray(batch.jobs[1].images[0]).astype(int)
    assert np.abs(inside - alone.astype(int)).max() <= 2


@pytest.mark.parametrize("mode", ["low", "minimal"])
def test_memory_modes_for_small_cards_run(tiny_dir: Path, mode: str) -> None:
    from alice_spool.engine.device import choose
    from alice_spool.engine.generate import generate, load

    loaded = load(tiny_dir, "sd/tiny", choose("cuda"), memory=mode)
    assert loaded.memory_mode == mode
    assert generate(loaded, [spec()]).image_count == 1
