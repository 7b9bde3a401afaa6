"""Throughput features of the engine on the tiny model (CPU): the compiled pipeline is
compiled for every size and batch size before the first job and never again, calls are
padded to those batch sizes without changing any image; and the real SD 1.5 and SDXL
architectures the benchmarks build in code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from alice_spool.engine.device import Placement, choose
from alice_spool.engine.resident import Engine
from alice_spool.engine.shapes import build_parts, write_model_folder
from alice_spool.engine.speed import optimise
from alice_spool.engine.tiny import build_tiny_pipeline, create_tiny, create_tiny_lora
from alice_spool.errors import InvalidParameters
from alice_spool.library.registry import ModelRegistry
from alice_spool.memory_plan import MemoryPlan
from alice_spool.spec import parse_spec


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    create_tiny(directory, "tiny")
    create_tiny_lora(directory)
    return directory


def spec(**fields: Any):
    return parse_spec({"prompt": "a lighthouse", "steps": 3, "scheduler": "euler", **fields})


class CountingBackend:
    """A torch.compile backend that runs the traced graph as it is and counts how many
    graphs were compiled."""

    def __init__(self) -> None:
        self.compiled = 0

    def __call__(self, graph: torch.fx.GraphModule, inputs: list[Any]) -> Any:
        self.compiled += 1
        return graph.forward


def pixels(output: Any) -> list[np.ndarray]:
    return [np.asarray(image, dtype=np.int16) for job in output.jobs for image in job.images]


def test_compiled_once_per_size_and_batch_size_then_never_per_job(models: Path) -> None:
    import torch._dynamo

    torch._dynamo.reset()
    backend = CountingBackend()
    engine = Engine(
        ModelRegistry(models),
        choose("cpu"),
        max_batch=4,
        compile=True,
        compile_sizes=[(64, 64)],
        compile_backend=backend,
    )
    assert engine.buckets == [1, 2, 4]
    engine.warm_up_default()  # what the runner does before its first claim
    assert engine.resident_model == "sd/tiny"
    after_warm_up = backend.compiled
    assert after_warm_up > 0
    # Jobs of every batch size up to max_batch, with other prompts, steps, seeds and
    # schedulers (whose timesteps come as float32, float64 or int64): padded to 1, 2 or 4
    # images, nothing compiled any more.
    third = {"seed": 13, "n": 3, "prompt": "another prompt", "scheduler": "dpm++_sde_karras"}
    outputs = [
        engine.generate([spec(seed=11, n=1)]),
        engine.generate([spec(seed=12, n=2, steps=5, scheduler="ddim")]),
        engine.generate([spec(**third)]),
        engine.generate([spec(seed=14, n=1), spec(seed=20, n=3)]),
    ]
    # A size that was not warmed up runs on the eager modules: nothing compiled either.
    other_size = engine.generate([spec(seed=15, n=2, width=72, height=72)])
    # More images than the largest batch size (a caller other than the runner): eager too.
    too_many = engine.generate([spec(seed=16, n=5)])
    assert backend.compiled == after_warm_up
    assert too_many.image_count == 5
    assert [o.image_count for o in outputs] == [1, 2, 3, 4]  # the filler images dropped
    assert other_size.image_count == 2 and other_size.width == 72

    plain = Engine(ModelRegistry(models), choose("cpu"))
    for fields, compiled in (({"seed": 11, "n": 1}, outputs[0]), (third, outputs[2])):
        reference = pixels(plain.generate([spec(**fields)]))
        for got, want in zip(pixels(compiled), reference, strict=True):
            # The same image (fused QKV and channels_last round differently, a little).
            assert np.abs(got - want).mean() < 1.0
    engine.unload()
    torch._dynamo.reset()


def test_a_compilation_that_fails_leaves_the_model_running_uncompiled(models: Path) -> None:
    import torch._dynamo

    torch._dynamo.reset()
    calls = []

    def broken(graph: torch.fx.GraphModule, inputs: list[Any]) -> Any:
        calls.append(1)
        raise RuntimeError("the compiler gives up")

    engine = Engine(
        ModelRegistry(models),
        choose("cpu"),
        max_batch=2,
        compile=True,
        compile_backend=broken,
    )
    engine.warm_up_default()  # logged, not raised: the runner starts anyway
    tried = len(calls)
    assert tried > 0 and engine.resident_model == "sd/tiny"
    output = engine.generate([spec(seed=3, n=2)])
    assert output.image_count == 2
    assert len(calls) == tried  # the jobs ran eagerly: no compilation for them
    engine.unload()
    torch._dynamo.reset()


def test_a_compiled_runner_runs_lora_batches_eager_and_never_recompiles(models: Path) -> None:
    """A LoRA batch on a compiled pipeline runs on the eager modules with Q, K and V
    unfused (where the LoRA layers sit), gives the uncompiled engine's images, keeps its
    adapters for a run of LoRA batches, and unloads them before the next plain batch:
    nothing is compiled after the warm-up, and the plain images are as before."""
    import torch._dynamo

    torch._dynamo.reset()
    backend = CountingBackend()
    engine = Engine(
        ModelRegistry(models),
        choose("cpu"),
        max_batch=2,
        compile=True,
        compile_sizes=[(64, 64)],
        compile_backend=backend,
    )
    engine.warm_up_default()
    after_warm_up = backend.compiled
    lora = {"name": "tiny-lora", "scale": 1.0}
    plain_before = engine.generate([spec(seed=21, n=2)])
    with_lora = engine.generate([spec(seed=21, n=2, loras=[lora])])
    again = engine.generate([spec(seed=22, loras=[lora])])
    adapters = engine.current.adapters
    assert adapters.loads == 1 and adapters.hits == 1  # kept for the run of LoRA batches
    plain_after = engine.generate([spec(seed=21, n=2)])
    assert adapters.loaded == 0  # unloaded before the plain batch
    assert backend.compiled == after_warm_up
    assert with_lora.loras[0]["name"] == "lora/tiny-lora" and again.image_count == 1
    for before, after in zip(pixels(plain_before), pixels(plain_after), strict=True):
        assert np.array_equal(before, after)
    for plain, lora_image in zip(pixels(plain_before), pixels(with_lora), strict=True):
        assert (np.abs(lora_image - plain) > 2).mean() >= 0.01  # the LoRA acts
    engine.unload()
    torch._dynamo.reset()

    uncompiled = Engine(ModelRegistry(models), choose("cpu"))
    reference = pixels(uncompiled.generate([spec(seed=21, n=2, loras=[lora])]))
    for got, want in zip(pixels(with_lora), reference, strict=True):
        assert np.abs(got - want).mean() < 1.0  # channels_last rounds a little
    uncompiled.unload()


def test_an_fp16_sdxl_vae_stays_in_float32_when_compiled(tmp_path: Path) -> None:
    """SDXL's pipeline converts an fp16 VAE to fp32 and back around every decode (it
    overflows in fp16): new weight tensors each call, which compiled code would take for
    new inputs (CUDA graphs re-recorded per call). Compiled, the VAE is kept in fp32 with
    its weights in place; nothing is compiled after the warm-up, with the SDXL UNet's
    extra conditioning and four schedulers; the images are the uncompiled pipeline's."""
    import torch._dynamo

    torch._dynamo.reset()
    create_tiny(tmp_path, "tinyxl", family="sdxl")
    fp16 = Placement(torch.device("cpu"), torch.float16)  # as on a GPU
    backend = CountingBackend()
    engine = Engine(
        ModelRegistry(tmp_path),
        fp16,
        max_batch=1,
        compile=True,
        compile_sizes=[(64, 64)],
        compile_backend=backend,
    )
    engine.warm_up_default()
    vae = engine.current.pipeline.vae
    assert engine.current.pipeline.unet.dtype == torch.float16
    weights = {name: p.data_ptr() for name, p in vae.named_parameters()}
    assert {p.dtype for p in vae.parameters()} == {torch.float32}
    after_warm_up = backend.compiled
    jobs = [
        {"seed": 5, "scheduler": "euler"},
        {"seed": 6, "scheduler": "dpm++_sde_karras"},
        {"seed": 7, "scheduler": "ddim"},
        {"seed": 8, "scheduler": "dpm++_2m_karras"},
    ]
    outputs = [engine.generate([spec(model="tinyxl", **job)]) for job in jobs]
    assert backend.compiled == after_warm_up
    assert {name: p.data_ptr() for name, p in vae.named_parameters()} == weights
    assert {p.dtype for p in vae.parameters()} == {torch.float32}
    engine.unload()
    torch._dynamo.reset()

    plain = Engine(ModelRegistry(tmp_path), fp16)
    for job, compiled in zip(jobs[:2], outputs, strict=False):
        reference = pixels(plain.generate([spec(model="tinyxl", **job)]))
        assert len(reference) == 1
        for got, want in zip(pixels(compiled), reference, strict=True):
            assert np.abs(got - want).mean() < 1.0  # fp16 and fused QKV round a little
    # Uncompiled, the pipeline's own upcast-and-back is left as diffusers does it.
    assert plain.current.pipeline.vae.dtype == torch.float16
    plain.unload()

    # An SD 1.x pipeline never upcasts (its VAE's config says force_upcast all the same):
    # its VAE stays in fp16, as fast as it is.
    sd1 = build_tiny_pipeline(tmp_path, "sd1").to(torch.float16)
    assert sd1.vae.config.force_upcast
    optimise(sd1, torch.device("cpu"), backend=CountingBackend())
    assert {p.dtype for p in sd1.vae.parameters()} == {torch.float16}


def test_a_model_offloaded_to_the_cpu_runs_uncompiled(
    models: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On a small card (`runner.memory` low or minimal), accelerate moves the weights on
    and off the GPU around every call, which compiled code cannot follow: the model
    runs uncompiled, and the log says why."""
    import alice_spool.engine.generate as generate_module

    low = MemoryPlan("low", offload="model")
    monkeypatch.setattr(generate_module.MemoryChoice, "plan", lambda *args, **kwargs: low)
    backend = CountingBackend()
    engine = Engine(
        ModelRegistry(models), choose("cpu"), max_batch=2, compile=True, compile_backend=backend
    )
    with caplog.at_level("WARNING", logger="alice_spool.engine.resident"):
        engine.warm_up_default()
    assert engine.resident_model == "sd/tiny" and backend.compiled == 0
    assert "not compiling sd/tiny: it runs in memory mode low" in caplog.text
    output = engine.generate([spec(seed=3, n=2)])
    assert output.image_count == 2 and output.memory_mode == "low"
    assert backend.compiled == 0
    engine.unload()


def test_the_real_architectures_built_in_code(tmp_path: Path) -> None:
    """Parameter counts of the published models: SD 1.5's UNet 859,520,964, its VAE
    83,653,863, CLIP ViT-L's text tower 123,060,480; SDXL's UNet 2,567,463,684 and
    OpenCLIP bigG's text tower with projection 694,659,840 (built on the meta device:
    no memory, no weights)."""
    counts = {}
    for shape in ("sd15", "sdxl"):
        with torch.device("meta"):
            parts = build_parts(shape, tmp_path)
        counts[shape] = {
            name: sum(p.numel() for p in part.parameters())
            for name, part in parts.items()
            if hasattr(part, "parameters")
        }
    assert counts["sd15"] == {
        "unet": 859_520_964,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
    }
    assert counts["sdxl"] == {
        "unet": 2_567_463_684,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
    }
    registry = ModelRegistry(tmp_path / "models")
    write_model_folder("sd15", tmp_path / "models" / "sd15")
    write_model_folder("sdxl", tmp_path / "models" / "sdxl")
    listed = {m.id: (m.family, m.native_size) for m in registry.scan()}
    assert listed == {"sd/sd15": ("sd1", 512), "sd/sdxl": ("sdxl", 1024)}
    with pytest.raises(InvalidParameters, match="no model shape"):
        write_model_folder("sd3", tmp_path / "x")


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_compiled_with_cuda_graphs_on_a_gpu(tmp_path: Path, family: str) -> None:
    """The real thing on a CUDA device: inductor with CUDA graphs, fp16 (an SDXL VAE
    kept in fp32, its weights in place); the compiled images match the eager ones (fp16
    rounding aside)."""
    import torch._dynamo

    create_tiny(tmp_path, "tiny", family=family)
    torch._dynamo.reset()
    engine = Engine(
        ModelRegistry(tmp_path),
        choose("cuda"),
        max_batch=2,
        compile=True,
        compile_sizes=[(64, 64)],
    )
    engine.warm_up_default()
    vae = engine.current.pipeline.vae
    weights = [p.data_ptr() for p in vae.parameters()]
    compiled = [pixels(engine.generate([spec(seed=7, n=n)])) for n in (2, 1)]
    assert [p.data_ptr() for p in vae.parameters()] == weights
    assert vae.dtype == (torch.float32 if family == "sdxl" else torch.float16)
    engine.unload()
    torch._dynamo.reset()
    eager = Engine(ModelRegistry(tmp_path), choose("cuda"))
    for n, images in zip((2, 1), compiled, strict=True):
        for got, want in zip(images, pixels(eager.generate([spec(seed=7, n=n)])), strict=True):
            assert np.abs(got - want).mean() < 3.0
