"""The transformer families' memory settings on the real engine code (memory_plan.py
plans, engine/memory.py applies): fp8 storage cast layer by layer runs the tiny FLUX.1
and keeps its images close; nf4 and int8 name the GPU extra where bitsandbytes is
missing; a runner on the CPU refuses to quantize, saying why, before loading anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from alice_spool.engine.device import choose
from alice_spool.engine.generate import generate, load
from alice_spool.engine.memory import cast_to_fp8, quantization_config
from alice_spool.engine.resident import Engine
from alice_spool.engine.tiny import create_tiny
from alice_spool.errors import ConfigError
from alice_spool.memory_plan import MemoryChoice, MemoryPlan
from alice_spool.registry import ModelRegistry
from alice_spool.spec import JobSpec


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
