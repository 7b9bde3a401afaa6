"""Schedulers by the names of DESIGN section 4, built from the loaded model's own
scheduler config (its betas and timestep spacing), as other SD tools name them."""

from __future__ import annotations

import warnings
from typing import Any

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
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..errors import InvalidParameters
from ..spec import SCHEDULERS

# torchsde's Brownian tree warns when float rounding puts a time a hair past an end.
warnings.filterwarnings("ignore", message="Should have (tb<=t1|ta>=t0)", module="torchsde")

_RECIPES: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
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
assert set(_RECIPES) == set(SCHEDULERS), "every name of spec.SCHEDULERS needs a recipe"

# Settings of the model's own scheduler that belong to its kind, not to the model.
_NOT_CARRIED = ("use_karras_sigmas", "algorithm_type", "solver_order", "skip_prk_steps")


def make_scheduler(name: str, base_config: Any, seeds: list[int]) -> SchedulerMixin:
    """A fresh scheduler called `name`, for one pipeline call making images with `seeds`.

    Stochastic samplers draw their noise per image from its own seed, so an image comes
    out the same whether it is made alone or in a batch.
    """
    try:
        cls, options = _RECIPES[name]
    except KeyError:
        raise InvalidParameters(f"scheduler {name!r} is not known", field="scheduler") from None
    config = {k: v for k, v in dict(base_config).items() if k not in _NOT_CARRIED}
    scheduler = cls.from_config(config, **options)
    if isinstance(scheduler, DPMSolverSDEScheduler):
        # Its Brownian-tree noise: one tree per image, seeded by that image's seed
        # (unseeded, it would draw from torch's global generator).
        scheduler.noise_sampler_seed = list(seeds)
    return scheduler
