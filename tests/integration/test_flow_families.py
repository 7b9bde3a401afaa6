"""FLUX.1 and SD 3.x, on their tiny random-weight models and the real
diffusers pipelines: the registry lists them with their family, variant and defaults;
the door fills what a request left to the model with the family's own and refuses what
the family cannot do; the engine makes images that follow the seed, come out the same
alone or in a batch, and keep every pixel outside an inpainting mask."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image

from alice_spool.database import Database
from alice_spool.engine.device import choose
from alice_spool.engine.generate import Loaded, generate, load
from alice_spool.engine.resident import Engine
from alice_spool.engine.schedulers import flow_scheduler
from alice_spool.engine.tiny import create_tiny, create_tiny_lora
from alice_spool.errors import InvalidParameters
from alice_spool.library.registry import ModelRegistry
from alice_spool.outbox import Outbox
from alice_spool.runner import Runner, RunnerOptions
from alice_spool.spec import BuiltinDefaults, JobSpec, parse_spec
from alice_spool.states import JobStatus
from alice_spool.store import Store

# Small server defaults, so that what the family sets is told apart from them.
SERVER = BuiltinDefaults(default_steps=7, default_guidance_scale=6.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    create_tiny(directory, "flux-dev", family="flux", variant="dev")
    create_tiny(directory, "flux-schnell", family="flux", variant="schnell")
    create_tiny(directory, "sd3", family="sd3")
    create_tiny(directory, "tiny")
    return directory


@pytest.fixture(scope="module")
def registry(models: Path) -> ModelRegistry:
    return ModelRegistry(models)


@pytest.fixture(scope="module", params=["flux-dev", "sd3"])
def loaded(request: pytest.FixtureRequest, registry: ModelRegistry) -> Loaded:
    info = registry.get(request.param)
    return load(info.path, info.id, choose("cpu"), family=str(info.family))


def queued(registry: ModelRegistry, **fields: Any) -> JobSpec:
    """A request as a door queues it: parsed, then made the model's (with_model)."""
    return registry.with_model(parse_spec({"prompt": "a red fox", **fields}, SERVER))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# -- the registry and the door --------------------------------------------------------------


def test_the_registry_lists_each_family_with_its_variant_and_defaults(
    registry: ModelRegistry,
) -> None:
    listed = {m.id: m for m in registry.scan()}
    expected = {
        "sd/flux-dev": ("flux", "dev", 28, 3.5),
        "sd/flux-schnell": ("flux", "schnell", 4, 0.0),
        "sd/sd3": ("sd3", None, 28, 4.5),
        "sd/tiny": ("sd1", None, None, None),  # the server's defaults
    }
    for model_id, (family, variant, steps, guidance) in expected.items():
        model = listed[model_id]
        assert model.ok, model.broken
        assert (model.family, model.variant, model.native_size) == (family, variant, 64)
        shown = model.to_dict()
        flow = family in ("flux", "sd3")
        assert shown["defaults"] == {
            "steps": steps,
            "guidance_scale": guidance,
            "scheduler": "euler" if flow else None,
        }
        assert (shown["schedulers"] is not None) == flow
    assert listed["sd/flux-dev"].to_dict()["family_name"] == "FLUX.1"
    assert listed["sd/sd3"].to_dict()["family_name"] == "SD 3.x"


@pytest.mark.parametrize(
    ("model", "steps", "guidance"),
    [("flux-dev", 28, 3.5), ("flux-schnell", 4, 0.0), ("sd3", 28, 4.5), ("tiny", 7, 6.0)],
)
def test_what_a_request_leaves_to_the_model_is_its_familys(
    registry: ModelRegistry, model: str, steps: int, guidance: float
) -> None:
    spec = queued(registry, model=model)
    assert (spec.steps, spec.guidance_scale) == (steps, guidance)
    assert spec.scheduler == ("euler" if model != "tiny" else SERVER.default_scheduler)
    assert spec.left_to_model == () and spec.model == f"sd/{model}"
    given = queued(registry, model=model, steps=3, guidance_scale=2.0, scheduler="euler_karras")
    assert (given.steps, given.guidance_scale, given.scheduler) == (3, 2.0, "euler_karras")


def test_what_a_flow_family_cannot_do_is_a_400_naming_the_field(registry: ModelRegistry) -> None:
    cases = [
        ("flux-dev", {"negative_prompt": "blurry"}, "negative_prompt"),
        ("flux-schnell", {"scheduler": "dpm++_2m"}, "scheduler"),
        ("sd3", {"scheduler": "euler_a"}, "scheduler"),
        ("sd3", {"clip_skip": 2}, "clip_skip"),
        ("flux-dev", {"hires": "2x"}, "hires"),
    ]
    for model, fields, field in cases:
        with pytest.raises(InvalidParameters) as refused:
            queued(registry, model=model, **fields)
        assert refused.value.details["field"] == field, (model, fields)
    assert queued(registry, model="sd3", negative_prompt="blurry").negative_prompt == "blurry"


def test_img2img_steps_are_checked_with_the_familys_steps(registry: ModelRegistry) -> None:
    """strength x steps must leave a step: checked once the model's steps are known."""
    image = "sha256:" + "0" * 64
    with pytest.raises(InvalidParameters) as refused:
        queued(registry, model="flux-schnell", init_image=image, strength=0.2)  # 4 x 0.2
    assert refused.value.details["field"] == "strength"
    assert queued(registry, model="flux-dev", init_image=image, strength=0.2).steps == 28


# -- the engine -----------------------------------------------------------------------------


def run(loaded: Loaded, specs: list[JobSpec], **options: Any) -> list[Image.Image]:
    output = generate(loaded, specs, **options)
    assert all(job.error is None for job in output.jobs), [job.error for job in output.jobs]
    return [image for job in output.jobs for image in job.images]


def made(loaded: Loaded, **fields: Any) -> JobSpec:
    base = {"prompt": "a red fox", "steps": 3, "width": 64, "height": 64, "seed": 5}
    spec = parse_spec({**base, "model": loaded.model_id, **fields}, SERVER)
    return replace(spec, scheduler=fields.get("scheduler", "euler"), left_to_model=())


def test_txt2img_follows_the_seed(loaded: Loaded) -> None:
    first, again = run(loaded, [made(loaded)]), run(loaded, [made(loaded)])
    other = run(loaded, [made(loaded, seed=6)])
    assert first[0].size == (64, 64)
    assert np.array_equal(pixels(first[0]), pixels(again[0]))
    assert np.abs(pixels(first[0]) - pixels(other[0])).mean() > 5


def test_an_image_is_the_same_alone_or_in_a_batch(loaded: Loaded) -> None:
    alone = [run(loaded, [made(loaded, seed=seed)])[0] for seed in (11, 12)]
    together = run(loaded, [made(loaded, seed=11), made(loaded, seed=12, prompt="a kite")])
    assert np.abs(pixels(alone[0]) - pixels(together[0])).max() <= 2
    lone_kite = run(loaded, [made(loaded, seed=12, prompt="a kite")])[0]
    assert np.abs(pixels(lone_kite) - pixels(together[1])).max() <= 2
    assert np.abs(pixels(alone[1]) - pixels(lone_kite)).mean() > 0  # the prompt counts


def test_each_flow_schedule_runs_on_its_curve(loaded: Loaded) -> None:
    """The model's own Euler, on the sigma curve the name asks for: each changes the
    image (a little, on random weights); a name flow matching has no scheduler for is
    refused by the engine too."""
    plain = pixels(run(loaded, [made(loaded)])[0])
    for scheduler, option in [
        ("euler_karras", "use_karras_sigmas"),
        ("euler_exponential", "use_exponential_sigmas"),
        ("euler_beta", "use_beta_sigmas"),
    ]:
        built = flow_scheduler(scheduler, loaded.scheduler_config)
        assert isinstance(built, FlowMatchEulerDiscreteScheduler) and built.config[option]
        curved = pixels(run(loaded, [made(loaded, scheduler=scheduler)])[0])
        assert np.abs(curved - plain).max() > 0, scheduler
    with pytest.raises(InvalidParameters, match="flow-matching"):
        flow_scheduler("dpm++_2m_karras", loaded.scheduler_config)
    # A1111's Euler (Automatic is Uniform) and the other spacing types: its own sigmas.
    for spacing in ("euler_uniform", "euler_simple", "euler_normal", "euler_sgm_uniform"):
        built = flow_scheduler(spacing, loaded.scheduler_config)
        assert not any(built.config[option] for option in ("use_karras_sigmas",
                                                           "use_beta_sigmas"))  # fmt: skip
        assert np.array_equal(pixels(run(loaded, [made(loaded, scheduler=spacing)])[0]), plain)


def test_img2img_and_inpainting_keep_what_they_must(loaded: Loaded) -> None:
    rng = np.random.default_rng(4)
    source = Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))  # white: repaint
    image = "sha256:" + "1" * 64
    varied = made(loaded, init_image=image, strength=0.7)
    (out,) = run(loaded, [varied], images=[{"init_image": source}])
    assert out.size == (64, 64)
    inpaint = made(loaded, init_image=image, mask_image="sha256:" + "2" * 64, strength=1.0)
    (painted,) = run(loaded, [inpaint], images=[{"init_image": source, "mask_image": mask}])
    keep = np.asarray(mask) == 0
    assert np.array_equal(pixels(painted)[keep], pixels(source)[keep])
    assert (pixels(painted)[~keep] != pixels(source)[~keep]).mean() > 0.5


# -- the runner -----------------------------------------------------------------------------


def test_a_mixed_queue_runs_every_job_on_its_own_model_with_few_switches(
    models: Path, registry: ModelRegistry, database: Database, tmp_path: Path
) -> None:
    """SD, FLUX.1 and SD 3.x jobs interleaved in the queue, through the real runner and
    engine: each succeeds on its own model, with its family's defaults recorded, and
    the runner loads each model once (it prefers the resident model's jobs)."""
    engine = Engine(registry, choose("cpu"), preload=False)
    loads: list[str] = []
    real_ensure = engine.ensure

    def counted(model_id: str) -> Loaded:
        if engine.resident_model != model_id:
            loads.append(model_id)
        return real_ensure(model_id)

    engine.ensure = counted  # type: ignore[method-assign]
    store = Store(database, max_queue=100, max_attempts=3)
    order = ["tiny", "flux-schnell", "sd3", "tiny", "flux-schnell", "sd3"]
    jobs = [
        store.jobs.enqueue(queued(registry, model=m, width=64, height=64, seed=i), source="cli").job
        for i, m in enumerate(order)
    ]
    runner = Runner(
        store,
        Outbox(tmp_path / "outbox"),
        engine,
        RunnerOptions(name="mixed", exit_when_idle=True, switch_model_after_s=60),
        lock_dir=tmp_path,
    )
    runner.run()
    for job, model in zip(jobs, order, strict=True):
        done = store.jobs.get(job.id)
        assert done.status is JobStatus.SUCCEEDED, (model, done.error_message)
        ran = (done.result or {})["spec"]
        assert ran["model"] == f"sd/{model}"
        assert ran["steps"] == {"tiny": 7, "flux-schnell": 4, "sd3": 28}[model]
        assert (tmp_path / "outbox" / job.id / f"{job.id}-0.png").exists()
    assert sorted(loads) == ["sd/flux-schnell", "sd/sd3", "sd/tiny"]  # one load each


# -- LoRA -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "family"), [("flux-dev", "flux"), ("sd3", "sd3")])
def test_a_family_lora_changes_its_models_images_and_no_others(
    tmp_path: Path, model: str, family: str
) -> None:
    """A tiny LoRA of the family: listed with its family, at scale 1 it moves pixels, at
    0 it does not, and the model's images without it are as before; another family's
    model refuses it with a 400 naming `loras`."""
    models = tmp_path / "models"
    create_tiny(models, model, family=family)
    create_tiny(models, "tiny")
    create_tiny_lora(models, f"{family}-lora", family=family)
    registry = ModelRegistry(models)
    (lora,) = registry.loras.scan()
    assert (lora.id, lora.family) == (f"lora/{family}-lora", family)
    engine = Engine(registry, choose("cpu"), preload=False)

    def image(**fields: Any) -> np.ndarray:
        spec = queued(registry, model=model, steps=3, width=64, height=64, seed=2, **fields)
        output = engine.generate([spec])
        return pixels(output.jobs[0].images[0])

    plain = image()
    zero = image(loras=[{"name": f"{family}-lora", "scale": 0}])
    one = image(loras=[f"{family}-lora"])
    assert np.abs(zero - plain).max() <= 1
    assert (np.abs(one - plain) > 2).mean() > 0.01
    assert np.array_equal(image(), plain)  # unloaded again: as before
    with pytest.raises(InvalidParameters) as refused:
        queued(registry, model="tiny", loras=[f"{family}-lora"])
    assert refused.value.details["field"] == "loras"
