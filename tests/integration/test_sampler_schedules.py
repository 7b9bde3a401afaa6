"""Every sampler with every schedule type through the real pipeline on the tiny model, on
the CPU: each makes an image, the schedule type changes the timesteps or sigmas the
scheduler steps through, and the stochastic samplers reproduce per seed, alone or in a
batch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from alice_spool import samplers
from alice_spool.engine.device import choose
from alice_spool.engine.generate import Loaded, generate, load
from alice_spool.engine.schedulers import SeededSDEScheduler, a1111_schedule, make_scheduler
from alice_spool.engine.tiny import SD15_SCHEDULER, create_tiny
from alice_spool.spec import JobSpec, parse_spec

STEPS = 2
# diffusers' KDPM2 schedulers pass tensors to numpy functions, which NumPy 2 warns about
# at every timestep: thousands of lines that say nothing about this server.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array_wrap__ must accept context:DeprecationWarning"
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    return load(create_tiny(tmp_path_factory.mktemp("models")), "sd/tiny", choose("cpu"))


def spec(**fields: object) -> JobSpec:
    return parse_spec({"prompt": "a lighthouse", "steps": STEPS, "seed": 7, **fields})


def pixels(image: object) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def a1111_product() -> list[str]:
    return [
        samplers.from_a1111(sampler["name"], schedule["label"])
        for sampler in samplers.a1111_samplers()
        for schedule in samplers.a1111_schedules()
    ]


def test_the_a1111_product_is_among_the_names_run_below() -> None:
    assert len(a1111_product()) == 15 * 10
    assert set(a1111_product()) <= set(samplers.NAMES)


@pytest.mark.parametrize("name", samplers.NAMES)
def test_every_sampler_with_every_schedule_makes_an_image(tiny: Loaded, name: str) -> None:
    output = generate(tiny, [spec(scheduler=name)])
    image = output.jobs[0].images[0]
    assert image.size == (64, 64) and image.mode == "RGB"
    values = pixels(image)
    assert values.max() > 0 and values.std() > 0  # not black, not one flat colour


def stepped(name: str, steps: int = 8) -> tuple[list[float], list[float]]:
    """(timesteps, sigmas or []) that the scheduler `name` steps through."""
    scheduler = make_scheduler(name, SD15_SCHEDULER, [1])
    scheduler.set_timesteps(steps)
    sigmas = getattr(scheduler, "sigmas", None)
    listed = [] if sigmas is None else [round(float(s), 4) for s in sigmas]
    return [round(float(t), 2) for t in scheduler.timesteps], listed


@pytest.mark.parametrize("key", [s.key for s in samplers.SAMPLERS])
def test_the_schedule_type_changes_what_the_scheduler_steps_through(key: str) -> None:
    walk = {schedule: stepped(f"{key}_{schedule}") for schedule in samplers.SCHEDULE_KEYS}
    assert walk["normal"] == walk["uniform"]  # for an SD model A1111's normal is uniform
    assert walk["simple"] == walk["sgm_uniform"]  # both diffusers' "trailing"
    assert walk["polyexponential"] == walk["exponential"]  # rho 1
    spacings = ("uniform", "sgm_uniform", "ddim")
    assert len({str(walk[s]) for s in spacings}) == 3
    if key in samplers.TIMESTEP_SAMPLERS:  # the curves: the sampler's own timesteps
        for curve in ("karras", "exponential", "beta"):
            assert walk[curve] == stepped(key)
    else:
        families = ("uniform", "karras", "exponential", "sgm_uniform", "ddim", "beta")
        assert len({str(walk[s]) for s in families}) == len(families)
        uniform, karras = walk["uniform"][1], walk["karras"][1]
        assert uniform[0] == karras[0] and uniform[1] != karras[1]  # one range, two curves


def test_the_spacings_are_diffusers_own() -> None:
    trailing = EulerDiscreteScheduler.from_config(SD15_SCHEDULER, timestep_spacing="trailing")
    trailing.set_timesteps(8)
    assert stepped("euler_sgm_uniform")[0] == [round(float(t), 2) for t in trailing.timesteps]
    ddim = make_scheduler("euler_a_ddim", SD15_SCHEDULER, [1])
    ddim.set_timesteps(4)
    assert ddim.timesteps.tolist() == [751, 501, 251, 1]  # A1111's DDIM schedule, from 1
    lcm = stepped("lcm_uniform", 4)[0]
    assert lcm[0] == 999 and all((t + 1) % 20 == 0 for t in lcm)  # on the 50-step grid


def test_euler_a_follows_euler_on_every_curve() -> None:
    for curve in ("karras", "exponential", "beta"):
        _, ancestral = stepped(f"euler_a_{curve}")
        _, euler = stepped(f"euler_{curve}")
        assert ancestral == pytest.approx(euler, rel=1e-5)


# The recipes of the names the server has always had, as they were (without the kind's
# own settings of the model's scheduler config).
OLD_CONFIG = {
    k: v
    for k, v in SD15_SCHEDULER.items()
    if k not in ("use_karras_sigmas", "algorithm_type", "solver_order", "skip_prk_steps")
}
LEGACY: dict[str, tuple[type[Any], dict[str, Any]]] = {
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "lms": (LMSDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "dpm++_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++_2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "dpm++_sde": (DPMSolverSDEScheduler, {}),
    "dpm++_sde_karras": (DPMSolverSDEScheduler, {"use_karras_sigmas": True}),
    "unipc": (UniPCMultistepScheduler, {}),
}


@pytest.mark.parametrize("name", LEGACY)
def test_the_old_names_build_the_schedulers_they_always_did(name: str) -> None:
    cls, options = LEGACY[name]
    made = make_scheduler(name, SD15_SCHEDULER, [1])
    assert isinstance(made, cls)
    assert dict(made.config) == dict(cls.from_config(OLD_CONFIG, **options).config)
    made.set_timesteps(6)
    stock = cls.from_config(OLD_CONFIG, **options)
    stock.set_timesteps(6)
    assert torch.equal(made.timesteps, stock.timesteps)


def test_dpm_sde_draws_its_noise_per_image_on_every_schedule() -> None:
    for schedule in samplers.SCHEDULE_KEYS:
        made = make_scheduler(f"dpm++_sde_{schedule}", SD15_SCHEDULER, [5, 6])
        assert isinstance(made, SeededSDEScheduler) and made.image_seeds == [5, 6]


STOCHASTIC = [
    "euler_a_karras",
    "dpm2_a_beta",
    "dpm++_sde_exponential",
    "dpm++_2m_sde_exponential",
    "dpm++_2m_sde_heun_sgm_uniform",
    "dpm++_3m_sde_karras",
    "lcm_uniform",
]


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_reproduce_alone_or_in_a_batch(tiny: Loaded, name: str) -> None:
    alone = generate(tiny, [spec(scheduler=name)]).jobs[0].images[0]
    again = generate(tiny, [spec(scheduler=name)]).jobs[0].images[0]
    assert np.array_equal(pixels(alone), pixels(again))
    other = spec(scheduler=name, prompt="a dog in the rain", seed=99, n=2)
    batch = generate(tiny, [other, spec(scheduler=name)])
    # In company, the image differs from the one made alone by at most 2/255 per pixel.
    assert np.abs(pixels(batch.jobs[1].images[0]) - pixels(alone)).max() <= 2
    first, second = (pixels(i) for i in batch.jobs[0].images)
    assert not np.array_equal(first, second)


# The model's own scheduler configs: SD 1.5's as loaded (no spacing of its own: each
# sampler's default, linspace for Euler), SDXL's (leading from timestep 1), and trailing.
SD15_AS_LOADED = PNDMScheduler.from_config(SD15_SCHEDULER).config
SDXL_LIKE = {**SD15_SCHEDULER, "timestep_spacing": "leading", "steps_offset": 1}
TRAILING = {**SD15_SCHEDULER, "timestep_spacing": "trailing"}


def test_a_built_scheduler_names_the_a1111_schedule_type_it_follows() -> None:
    def label(name: str, config: Any) -> str | None:
        return a1111_schedule(make_scheduler(name, config, [1]))

    assert [label("euler", c) for c in (SD15_AS_LOADED, SDXL_LIKE, TRAILING)] == [
        "Uniform",
        "DDIM",
        "SGM Uniform",
    ]
    assert label("dpm++_2m", SD15_AS_LOADED) == "Uniform"  # (A1111's Automatic: Karras)
    assert label("euler", {**SDXL_LIKE, "steps_offset": 0}) is None  # no A1111 type is that
    for name in ("ddim", "pndm", "lcm", "ddim_karras"):  # on timesteps of their own
        assert label(name, SDXL_LIKE) is None
    named = {
        "euler_karras": "Karras",
        "euler_a_exponential": "Exponential",
        "dpm++_2m_beta": "Beta",
        "dpm++_sde_karras": "Karras",
        "lcm_sgm_uniform": "SGM Uniform",
        "heun_ddim": "DDIM",
    }
    assert {name: label(name, SD15_AS_LOADED) for name in named} == named


def walk(scheduler: Any, steps: int = 6) -> list[list[float]]:
    scheduler.set_timesteps(steps)
    sigmas = getattr(scheduler, "sigmas", None)
    return [
        [round(float(t), 3) for t in scheduler.timesteps],
        [round(float(s), 4) for s in sigmas] if sigmas is not None else [],
    ]


@pytest.mark.parametrize("key", [sampler.key for sampler in samplers.SAMPLERS])
def test_the_schedule_type_of_a_bare_sampler_gives_its_steps_back_when_pasted(key: str) -> None:
    """The infotext of a sampler named alone, read back as A1111's sampler and schedule
    type (`from_a1111`), names a scheduler that steps through the same timesteps and
    sigmas on the same model."""
    for config in (SD15_AS_LOADED, SDXL_LIKE):  # (KDPM2 takes 0.6 s to build: two)
        ran = make_scheduler(key, config, [1])
        pasted = samplers.from_a1111(samplers.to_a1111(key)[0], a1111_schedule(ran))
        assert walk(make_scheduler(pasted, config, [1])) == walk(ran), (config, pasted)


def test_generate_reports_the_schedule_type_each_batch_ran_on(tiny: Loaded) -> None:
    # The tiny model's scheduler config is SD 1.5's as saved: leading from timestep 1.
    reported = {
        name: generate(tiny, [spec(scheduler=name, steps=1)]).schedule
        for name in ("euler", "dpm++_2m_karras", "ddim")
    }
    assert reported == {"euler": "DDIM", "dpm++_2m_karras": "Karras", "ddim": None}
