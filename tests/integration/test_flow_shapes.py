"""The FLUX.1 and SD 3.5 Large shapes of the GPU benchmark (alice_spool/engine/shapes.py,
bench/gpu.py), checked on the CPU: their sizes against the released models (built on the
meta device: no memory), their pipelines put together and run through the engine at the
real widths between parts (fewer layers, narrower insides), the folders the registry
lists for them, and the benchmark's options, refusals and dry runs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline

from alice_spool.engine import shapes
from alice_spool.engine.device import Placement
from alice_spool.engine.memory import cast_to_fp8
from alice_spool.engine.resident import Engine
from alice_spool.library.registry import ModelRegistry
from alice_spool.memory_plan import MemoryChoice
from alice_spool.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "gpu.py"
FLOW = ("flux-dev", "flux-schnell", "sd35-large")

# Parameter counts of the released models, as their model cards and papers give them.
RELEASED = {
    "flux-dev": {"transformer": 11.9e9, "text_encoder_2": 4.76e9, "text_encoder": 123e6},
    "flux-schnell": {"transformer": 11.9e9, "text_encoder_2": 4.76e9, "text_encoder": 123e6},
    "sd35-large": {
        "transformer": 8.1e9,
        "text_encoder_3": 4.76e9,  # T5-XXL's encoder
        "text_encoder": 124e6,  # CLIP ViT-L/14's text tower and its projection
        "text_encoder_2": 695e6,  # OpenCLIP ViT-bigG/14's
    },
}
FLOW_VAE_PARAMETERS = 83.8e6  # FLUX.1's and SD 3.5's 16-channel VAE


def counts(parts: dict[str, Any]) -> dict[str, int]:
    return {
        name: sum(p.numel() for p in part.parameters())
        for name, part in parts.items()
        if isinstance(part, torch.nn.Module)
    }


@pytest.mark.parametrize("shape", FLOW)
def test_the_flow_shapes_have_the_released_sizes(tmp_path: Path, shape: str) -> None:
    with torch.device("meta"):
        parts = shapes.build_parts(shape, tmp_path)
    built = counts(parts)
    for part, released in RELEASED[shape].items():
        assert built[part] == pytest.approx(released, rel=0.02), part
    assert built["vae"] == pytest.approx(FLOW_VAE_PARAMETERS, rel=0.02)
    # What the counts cannot tell: dev's guidance embedder, schnell's lack of one (the
    # counts differ by it alone), the VAE's latent space, T5 v1.1's gated GELU.
    transformer = parts["transformer"]
    if shape.startswith("flux"):
        assert transformer.config.guidance_embeds is (shape == "flux-dev")
        assert parts["vae"].config.scaling_factor == 0.3611
        assert parts["vae"].config.shift_factor == 0.1159
    else:
        assert parts["vae"].config.scaling_factor == 1.5305
        assert parts["vae"].config.shift_factor == 0.0609
    assert parts["vae"].config.latent_channels == 16
    t5 = parts["text_encoder_2" if shape.startswith("flux") else "text_encoder_3"]
    assert (t5.config.is_gated_act, t5.config.dense_act_fn) == (True, "gelu_new")


def test_schnell_is_dev_without_its_guidance_embedder(tmp_path: Path) -> None:
    with torch.device("meta"):
        dev = counts(shapes.build_parts("flux-dev", tmp_path))["transformer"]
        schnell = counts(shapes.build_parts("flux-schnell", tmp_path))["transformer"]
    # The guidance embedder: a 256-wide sinusoidal input through two 3072-wide layers.
    assert dev - schnell == (256 * 3072 + 3072) + (3072 * 3072 + 3072)


@pytest.mark.parametrize(
    ("shape", "cls", "scheduler"),
    [
        ("flux-dev", FluxPipeline, {"shift": 3.0, "use_dynamic_shifting": True}),
        ("flux-schnell", FluxPipeline, {"shift": 1.0, "use_dynamic_shifting": False}),
        ("sd35-large", StableDiffusion3Pipeline, {"shift": 3.0, "use_dynamic_shifting": False}),
    ],
)
def test_the_flow_pipelines_are_put_together_as_released(
    tmp_path: Path, shape: str, cls: Any, scheduler: dict[str, Any]
) -> None:
    """On the meta device: the pipeline class, every part in the asked dtype, the
    scheduler config each model ships with, 1024x1024 by default."""
    pipeline = shapes.build_pipeline(shape, tmp_path, device="meta", dtype=torch.bfloat16)
    assert type(pipeline) is cls
    assert pipeline.transformer.dtype == torch.bfloat16
    assert pipeline.vae.dtype == torch.bfloat16
    assert all(
        module.dtype == torch.bfloat16
        for name, module in pipeline.components.items()
        if name.startswith("text_encoder")
    )
    for key, value in scheduler.items():
        assert pipeline.scheduler.config[key] == value, key
    assert pipeline.default_sample_size * pipeline.vae_scale_factor == 1024


def test_the_registry_lists_each_shape_with_its_family(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for shape in shapes.SHAPES:
        shapes.write_model_folder(shape, models / shape)
    listed = {
        m.id: (m.family, m.variant, m.native_size, m.ok) for m in ModelRegistry(models).scan()
    }
    assert listed == {
        "sd/sd15": ("sd1", None, 512, True),
        "sd/sdxl": ("sdxl", None, 1024, True),
        "sd/flux-dev": ("flux", "dev", 1024, True),
        "sd/flux-schnell": ("flux", "schnell", 1024, True),
        "sd/sd35-large": ("sd3", None, 1024, True),
    }
    index = json.loads((models / "sd35-large" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"


@pytest.fixture
def narrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shapes with one layer and narrow insides, but every width one part hands
    another as released: T5's 4096, CLIP-L's 768 and CLIP-G's 1280, the transformers'
    joint attention and pooled projection widths, FLUX.1's 128-wide heads (its rotary
    axes), the 16-channel VAE (whole)."""
    changes: list[tuple[dict[str, Any], dict[str, Any]]] = [
        (
            shapes.FLUX_TRANSFORMER,
            {"num_layers": 1, "num_single_layers": 1, "num_attention_heads": 1},
        ),
        (
            shapes.SD35_LARGE_TRANSFORMER,
            {"num_layers": 1, "num_attention_heads": 1, "caption_projection_dim": 64},
        ),
        (shapes.T5_XXL, {"num_layers": 1, "num_heads": 1, "d_ff": 64, "vocab_size": 128}),
        (shapes.CLIP_L, {"num_hidden_layers": 1, "intermediate_size": 64, "vocab_size": 256}),
        (shapes.CLIP_BIG_G, {"num_hidden_layers": 1, "intermediate_size": 64, "vocab_size": 256}),
    ]
    for config, values in changes:
        for key, value in values.items():
            monkeypatch.setitem(config, key, value)


def run_one_job(tmp_path: Path, shape: str, placement: Placement, quantize: str = "none") -> Any:
    """The shape's pipeline made resident as the benchmark makes it (adopted; fp8 cast,
    or saved and loaded back with nf4), and one job through the engine, which gives it
    the family's steps and guidance as the spool does."""
    models = tmp_path / "models"
    pipeline = shapes.build_pipeline(
        shape, tmp_path, device=placement.device, dtype=placement.dtype
    )
    if quantize == "nf4":
        pipeline.save_pretrained(models / shape, safe_serialization=True)
        del pipeline
        engine = Engine(
            ModelRegistry(models), placement, memory=MemoryChoice(quantize="nf4", offload="none")
        )
        engine.ensure(f"sd/{shape}")
    else:
        if quantize == "fp8":
            cast_to_fp8(pipeline, "flux" if shape.startswith("flux") else "sd3", placement.dtype)
        shapes.write_model_folder(shape, models / shape)
        engine = Engine(ModelRegistry(models), placement)
        engine.adopt(f"sd/{shape}", pipeline)
    request = {"prompt": "a harbour at dawn", "model": f"sd/{shape}", "width": 64, "height": 64}
    return engine.generate([parse_spec({**request, "steps": 2, "scheduler": "euler", "seed": 7})])


GUIDANCE = {"flux-dev": "distilled", "flux-schnell": "none", "sd35-large": "classifier-free"}


@pytest.mark.parametrize("shape", FLOW)
def test_the_flow_pipelines_run_through_the_engine(
    tmp_path: Path, narrow: None, shape: str
) -> None:
    """At the real widths between parts (a wrong one fails the call), float32 on the CPU."""
    output = run_one_job(tmp_path, shape, Placement(torch.device("cpu"), torch.float32))
    assert output.guidance == GUIDANCE[shape]
    (job,) = output.jobs
    assert job.error is None
    assert [image.size for image in job.images] == [(64, 64)]


@pytest.mark.gpu
@pytest.mark.parametrize("quantize", ["none", "fp8", "nf4"])
@pytest.mark.parametrize("shape", FLOW)
def test_the_flow_pipelines_run_in_bfloat16_on_a_gpu(
    tmp_path: Path, narrow: None, shape: str, quantize: str
) -> None:
    """As the benchmark runs them on a GPU: bfloat16, as built, cast to fp8, or saved and
    loaded with nf4 (bitsandbytes)."""
    if quantize == "nf4" and importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("nf4 needs bitsandbytes (the gpu extra)")
    output = run_one_job(tmp_path, shape, Placement(torch.device("cuda"), torch.bfloat16), quantize)
    (job,) = output.jobs
    assert job.error is None


# --- bench/gpu.py ---


def bench(*arguments: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """bench/gpu.py in a process of its own, on the CPU whatever this machine has."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(BENCH), *arguments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_the_benchmark_offers_the_flow_shapes() -> None:
    done = bench("--help")
    assert done.returncode == 0, done.stderr
    for shape in (*FLOW, "tiny-flux", "tiny-sd3"):
        assert shape in done.stdout
    assert "{none,fp8,nf4}" in done.stdout


@pytest.mark.slow
def test_a_real_flow_shape_without_cuda_is_refused_before_anything_is_built() -> None:
    done = bench("--shape", "flux-schnell")
    assert done.returncode == 2
    assert "needs a CUDA GPU" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("shape", "family", "guidance"),
    [("tiny", "sd1", 7.5), ("tiny-flux", "flux", 3.5), ("tiny-sd3", "sd3", 4.5)],
)
def test_a_dry_run_on_the_cpu(shape: str, family: str, guidance: float) -> None:
    """The whole benchmark on a tiny model: the bare calls and the spool's jobs run with
    the family's guidance (FLUX.1 dev's distilled 3.5, SD 3.5's 4.5, the server's 7.5 for
    SD) and every job succeeds; the flow models are saved and loaded back by the engine
    (`load_s`), as `--quantize nf4` does on a GPU."""
    done = bench(
        *("--shape", shape, "--device", "cpu", "--jobs", "2", "--one-at-a-time", "1"),
        *("--batches", "2", "--steps", "2"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["workload"]["family"] == family
    assert result["workload"]["guidance_scale"] == guidance
    assert result["spool_guidance_scale"] == [guidance]
    assert result["spool_jobs"] == {"succeeded": 3}  # the first image, then two
    assert set(result["images_per_s"]) == {"a_bare_one_at_a_time", "b_bare_batched", "c_spool"}
    assert ("load_s" in result) is (shape != "tiny")
    if shape != "tiny":
        assert result["workload"]["scheduler"] == "euler"


@pytest.fixture(scope="module")
def gpu_bench() -> Iterator[ModuleType]:
    """bench/gpu.py imported (it imports bench/mix.py beside it)."""
    sys.path.insert(0, str(BENCH.parent))
    try:
        spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH.parent))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--shape", "tiny-flux", "--compile"], "--compile compiles a UNet"),
        (["--shape", "tiny-sd3", "--mix", "6"], "--mix writes LoRAs for a UNet"),
        (["--shape", "tiny-flux", "--stock"], "flow-matching Euler already"),
        (["--shape", "sd15", "--quantize", "fp8"], "--quantize fp8 is for the flow shapes"),
        (["--shape", "tiny-flux", "--quantize", "nf4"], "--quantize nf4 is for the flow shapes"),
        (["--shape", "tiny-flux", "--scheduler", "dpm++_2m"], "cannot run tiny-flux"),
        (["--shape", "sd15", "--cache", "first_block"], "a UNet has no step cache"),
    ],
)
def test_what_a_flow_shape_cannot_run_is_refused_by_name(
    gpu_bench: ModuleType, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        gpu_bench.parse_arguments(arguments)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("shape", "steps", "guidance"),
    [("flux-dev", 28, 3.5), ("flux-schnell", 4, 0.0), ("sd35-large", 28, 4.5)],
)
def test_each_flow_shape_runs_as_its_model_card_says(
    gpu_bench: ModuleType, monkeypatch: pytest.MonkeyPatch, shape: str, steps: int, guidance: float
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = gpu_bench.parse_arguments(["--shape", shape])
    assert (args.steps, args.guidance_scale, args.scheduler, args.size) == (
        steps,
        guidance,
        "euler",
        1024,
    )
    assert args.quantize == "none"
    assert gpu_bench.parse_arguments(["--shape", shape, "--quantize", "fp8"]).quantize == "fp8"
    assert gpu_bench.parse_arguments(["--shape", shape, "--cache", "taylorseer"]).cache == (
        "taylorseer"
    )
    with pytest.raises(SystemExit):
        gpu_bench.parse_arguments(["--shape", shape, "--device", "cpu"])


def test_nf4_without_bitsandbytes_is_refused(
    gpu_bench: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(SystemExit):
        gpu_bench.parse_arguments(["--shape", "flux-dev", "--quantize", "nf4"])
    assert "bitsandbytes" in capsys.readouterr().err
