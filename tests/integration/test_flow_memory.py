"""The transformer families' memory and speed settings on the real engine code
(memory_plan.py plans, engine/memory.py and caching.py apply): fp8 storage cast layer by
layer runs the tiny FLUX.1 and keeps its images close; nf4 and int8 name the GPU extra
where bitsandbytes is missing; a runner on the CPU refuses to quantize, saying why,
before loading anything; a step cache runs every call alike and the job records it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from alice_spool.database import Database
from alice_spool.engine.device import choose
from alice_spool.engine.generate import generate, load
from alice_spool.engine.memory import cast_to_fp8, quantization_config
from alice_spool.engine.resident import Engine
from alice_spool.engine.tiny import create_tiny
from alice_spool.errors import ConfigError
from alice_spool.library.registry import ModelRegistry
from alice_spool.memory_plan import MemoryChoice, MemoryPlan
from alice_spool.outbox import Outbox
from alice_spool.runner import Runner, RunnerOptions
from alice_spool.spec import JobSpec
from alice_spool.store import Store


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    create_tiny(directory, "flux-dev", family="flux", variant="dev")
    return directory


def spec() -> JobSpec:
    return JobSpec(
        prompt="a red fox", model="sd/flux-dev", width=64, height=64, steps=3, seed=5,
        scheduler="euler", guidance_scale=3.5,
    )  # fmt: skip


def test_fp8_storage_runs_and_keeps_the_image_close(models: Path) -> None:
    path = models / "flux-dev"
    plain = load(path, "sd/flux-dev", choose("cpu"), family="flux")
    reference = np.asarray(generate(plain, [spec()]).jobs[0].images[0], dtype=np.int16)
    cast = load(path, "sd/flux-dev", choose("cpu"), family="flux")
    cast_to_fp8(cast.pipeline, "flux", torch.float32)
    linear = cast.pipeline.transformer.transformer_blocks[0].attn.to_q
    assert linear.weight.dtype == torch.float8_e4m3fn  # stored in fp8
    t5 = cast.pipeline.text_encoder_2
    assert any(p.dtype == torch.float8_e4m3fn for p in t5.parameters())
    output = generate(cast, [spec()])
    assert output.jobs[0].error is None
    image = np.asarray(output.jobs[0].images[0], dtype=np.int16)
    assert image.shape == reference.shape
    assert np.abs(image - reference).mean() < 40  # close: the same picture, rounded
    assert linear.weight.dtype == torch.float8_e4m3fn  # still, after the call


@pytest.mark.parametrize("quantize", ["nf4", "int8"])
def test_bitsandbytes_quantization_names_the_gpu_extra_when_missing(quantize: str) -> None:
    plan = MemoryPlan("full", quantize, "none")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match=r"alice-spool\[gpu\]"):
            quantization_config(plan, "flux", torch.bfloat16)
    else:  # a GPU host with the extra: the config quantizes the transformer and the T5
        config = quantization_config(plan, "sd3", torch.bfloat16)
        assert config.components_to_quantize == ["transformer", "text_encoder_3"]
    assert quantization_config(MemoryPlan("full"), "flux", torch.bfloat16) is None


@pytest.mark.parametrize("quantize", ["nf4", "int8", "fp8"])
def test_a_cpu_runner_refuses_to_quantize_before_loading_anything(
    models: Path, quantize: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        Engine(ModelRegistry(models), choose("cpu"), memory=MemoryChoice(quantize=quantize))
    assert refused.value.details["key"] == "runner.quantize"
    assert "CUDA" in refused.value.message and "cpu" in refused.value.message


def test_on_the_cpu_auto_and_offload_change_nothing(models: Path) -> None:
    engine = Engine(
        ModelRegistry(models),
        choose("cpu"),
        memory=MemoryChoice(quantize="auto", offload="group"),
    )
    output = engine.generate([spec()])
    assert output.jobs[0].error is None and output.memory_mode == "full"
    engine.unload()


# -- step caching ---------------------------------------------------------------------------


def cached_engine(models: Path, cache: str) -> Engine:
    return Engine(ModelRegistry(models), choose("cpu"), memory=MemoryChoice(cache=cache))


def many_steps(**fields: object) -> JobSpec:
    return replace(spec(), steps=10, **fields)  # (TaylorSeer predicts from step 3 on)


def test_a_step_cache_runs_the_same_way_every_call_and_says_so(models: Path) -> None:
    plain = cached_engine(models, "none")
    reference = plain.generate([many_steps()])
    assert reference.cache == "none"
    uncached = np.asarray(reference.jobs[0].images[0], dtype=np.int16)
    plain.unload()
    for cache in ("first_block", "taylorseer"):
        engine = cached_engine(models, cache)
        first, again = engine.generate([many_steps()]), engine.generate([many_steps()])
        assert first.cache == again.cache == cache
        images = [np.asarray(o.jobs[0].images[0], dtype=np.int16) for o in (first, again)]
        assert np.array_equal(images[0], images[1]), cache  # each call starts afresh
        if cache == "taylorseer":  # predicted steps: not the uncached image
            assert np.abs(images[0] - uncached).max() > 0
        engine.unload()


def test_a_runner_records_the_step_cache_and_the_sd_families_run_uncached(
    models: Path, database: Database, tmp_path: Path
) -> None:
    create_tiny(models, "tiny", replace=True)
    engine = cached_engine(models, "taylorseer")
    store = Store(database, max_queue=10, max_attempts=1)
    flux = store.jobs.enqueue(many_steps(), source="cli").job
    sd = store.jobs.enqueue(
        JobSpec(prompt="a fox", model="sd/tiny", width=64, height=64, steps=2, seed=1),
        source="cli",
    ).job
    Runner(
        store,
        Outbox(tmp_path / "outbox"),
        engine,
        RunnerOptions(name="cached", exit_when_idle=True),
        lock_dir=tmp_path,
    ).run()
    flux_result, sd_result = (store.jobs.get(j.id).result or {} for j in (flux, sd))
    assert flux_result["status"] == sd_result["status"] == "succeeded"
    assert flux_result["cache"] == "taylorseer"
    assert "cache" not in sd_result  # a UNet has no step cache: as a plain job's result
    written = json.loads((tmp_path / "outbox" / flux.id / "result.json").read_text())
    assert written["cache"] == "taylorseer"


def test_the_transformer_families_run_in_bfloat16_where_a_gpu_has_it() -> None:
    """As they were trained: FLUX.1's and SD 3.x's transformers and T5 overflow float16
    (black or NaN images). The SD families keep the GPU's float16; the CPU its float32."""
    from alice_spool.engine.device import Placement, for_family

    gpu = Placement(torch.device("cuda", 0), torch.float16)
    for family in ("flux", "sd3"):
        assert for_family(gpu, family, bf16_supported=True).dtype == torch.bfloat16
        assert for_family(gpu, family, bf16_supported=False) == gpu  # an old card: as it is
    for family in ("sd1", "sd2", "sdxl"):
        assert for_family(gpu, family, bf16_supported=True) == gpu
    cpu = choose("cpu")
    assert for_family(cpu, "flux") == cpu and cpu.dtype == torch.float32
