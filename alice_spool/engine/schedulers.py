"""Schedulers by the names of `samplers.NAMES` (a sampler, and maybe a schedule type),
built from the loaded model's own scheduler config (its betas and timestep spacing), and
the A1111 schedule type a built one follows (`a1111_schedule`, for the infotext).

The stochastic DPM++ SDE samplers draw Brownian-motion noise for each image from that
image's seed (`SeededBrownianNoise`), so that an image is the same alone or in a batch,
at the cost of one random draw per image per new point of the path rather than a
Brownian tree per image (torchsde's, what diffusers uses for a list of seeds: about 50
draws and 120 interval updates per image per query, in Python, which on a GPU can hold
the whole batch back; `bench/noise.py`).
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .. import samplers
from ..errors import InvalidParameters
from .curves import CurvedEulerAncestralScheduler, SpacedLCMScheduler

_DPM_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint"}
_SAMPLERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "dpm++_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++_sde": (DPMSolverSDEScheduler, {}),
    "dpm++_2m_sde": (DPMSolverMultistepScheduler, _DPM_SDE),
    "dpm++_2m_sde_heun": (DPMSolverMultistepScheduler, {**_DPM_SDE, "solver_type": "heun"}),
    "dpm++_3m_sde": (DPMSolverMultistepScheduler, {**_DPM_SDE, "solver_order": 3}),
    "euler_a": (CurvedEulerAncestralScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "dpm2": (KDPM2DiscreteScheduler, {}),
    "dpm2_a": (KDPM2AncestralDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "unipc": (UniPCMultistepScheduler, {}),
    "lcm": (SpacedLCMScheduler, {}),
}
assert set(_SAMPLERS) == {s.key for s in samplers.SAMPLERS}, "every sampler needs a recipe"

# The spacing types as diffusers' timestep spacings (A1111's DDIM schedule starts at 1).
_SPACINGS: dict[str, dict[str, Any]] = {
    "uniform": {"timestep_spacing": "linspace"},
    "normal": {"timestep_spacing": "linspace"},
    "sgm_uniform": {"timestep_spacing": "trailing"},
    "simple": {"timestep_spacing": "trailing"},
    "ddim": {"timestep_spacing": "leading", "steps_offset": 1},
}
# The curve types (polyexponential at A1111's rho 1 is the exponential curve).
_CURVES = {
    "karras": "karras",
    "exponential": "exponential",
    "polyexponential": "exponential",
    "beta": "beta",
}
assert set(_SPACINGS) | set(_CURVES) == set(samplers.SCHEDULE_KEYS), "every schedule needs a recipe"

# Settings of the model's own scheduler that belong to its kind, not to the model.
_NOT_CARRIED = (
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "algorithm_type",
    "solver_order",
    "skip_prk_steps",
)


# An image's Brownian noise comes from numpy's SeedSequence of (its seed, this tag): a
# stream apart from its initial latents' (torch's generator seeded with the seed).
NOISE_STREAM = 0x5DE


class SeededBrownianNoise:
    """Brownian motion W(sigma) for a batch of images, each image's path drawn from its
    own seed, queried as diffusers' BrownianTreeNoiseSampler is: `noise(a, b)` is
    (W(b) - W(a)) / sqrt(|b - a|), a standard normal per element.

    Points are added as they are first asked for: before or after every known one, W
    moves on by an independent normal increment; between two known ones, it is drawn
    from the Brownian bridge between them. The paths are exact Brownian motion (no
    tree depth or tolerance). Every image of a batch is asked at the same times (the
    batch shares its schedule), so each image's path depends only on its seed: one draw
    per image per new time point, on the CPU with numpy (the same path on any device),
    stacked and moved to the sample's device once.
    """

    def __init__(self, sample: torch.Tensor, seeds: list[int]) -> None:
        if sample.shape[0] != len(seeds):
            raise ValueError(f"{len(seeds)} seeds for a batch of {sample.shape[0]} images")
        self.shape = tuple(sample.shape[1:])
        self.device, self.dtype = sample.device, sample.dtype
        self.generators = [np.random.default_rng([seed, NOISE_STREAM]) for seed in seeds]
        self.times: list[float] = []  # sorted
        self.values: list[torch.Tensor] = []  # W at each time, float32 on the CPU

    def _normal(self) -> torch.Tensor:
        draws = [g.standard_normal(self.shape, dtype=np.float32) for g in self.generators]
        return torch.from_numpy(np.stack(draws))

    def _at(self, time: float) -> torch.Tensor:
        at = bisect.bisect_left(self.times, time)
        if at < len(self.times) and self.times[at] == time:
            return self.values[at]
        if not self.times:
            value = torch.zeros((len(self.generators), *self.shape))
        elif at == 0 or at == len(self.times):  # outside the known points: walk on
            near = 0 if at == 0 else at - 1
            gap = abs(time - self.times[near])
            value = self.values[near] + gap**0.5 * self._normal()
        else:  # between two known points: the Brownian bridge
            t0, t1 = self.times[at - 1], self.times[at]
            w0, w1 = self.values[at - 1], self.values[at]
            share = (time - t0) / (t1 - t0)
            spread = ((time - t0) * (t1 - time) / (t1 - t0)) ** 0.5
            value = w0 + share * (w1 - w0) + spread * self._normal()
        self.times.insert(at, time)
        self.values.insert(at, value)
        return value

    def __call__(self, sigma: Any, sigma_next: Any) -> torch.Tensor:
        a, b = float(sigma), float(sigma_next)
        step = ((self._at(b) - self._at(a)) / abs(b - a) ** 0.5).to(self.dtype)
        if self.device.type != "cuda":
            return step.to(self.device)
        # From pinned memory without waiting: a plain copy would wait for the GPU to
        # finish the UNet call before it, and the GPU would then wait for the CPU.
        return step.pin_memory().to(self.device, non_blocking=True)


class SeededSDEScheduler(DPMSolverSDEScheduler):
    """DPM++ SDE with `SeededBrownianNoise` for the images' seeds (`image_seeds`)
    instead of a torchsde Brownian tree per image."""

    image_seeds: list[int] = []
    noise_sampler: Any  # diffusers' own attribute, None until the first step

    def step(
        self, model_output: Any, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any
    ) -> Any:
        if self.noise_sampler is None:  # (set_timesteps clears it: a fresh path per call)
            self.noise_sampler = SeededBrownianNoise(sample, self.image_seeds)
        return super().step(model_output, timestep, sample, *args, **kwargs)


def stock_scheduler(name: str, base_config: Any) -> SchedulerMixin:
    """The scheduler called `name` (`samplers.NAMES`) as diffusers makes it, without
    per-image noise (DPM++ SDE then draws one Brownian tree for the whole call, from a
    random seed): what a plain diffusers program runs, for comparisons."""
    try:
        key, schedule = samplers.parse(name)
    except KeyError:
        raise InvalidParameters(f"scheduler {name!r} is not known", field="scheduler") from None
    cls, options = _SAMPLERS[key]
    config = {k: v for k, v in dict(base_config).items() if k not in _NOT_CARRIED}
    options = {**options, **_SPACINGS.get(schedule or "", {})}
    curve = _CURVES.get(schedule or "")
    if cls is SpacedLCMScheduler:
        scheduler = cls.from_config(config, **options)
        scheduler.spacing = options.get("timestep_spacing")  # curves: LCM's own timesteps
        return scheduler
    if curve is not None and cls is CurvedEulerAncestralScheduler:
        scheduler = cls.from_config(config, **options)
        scheduler.curve = curve
        return scheduler
    if curve is not None and key not in samplers.TIMESTEP_SAMPLERS:
        options[f"use_{curve}_sigmas"] = True
    return cls.from_config(config, **options)


# The A1111 schedule types that reproduce a built scheduler's spacing or curve.
_SPACING_LABELS = {"linspace": "Uniform", "trailing": "SGM Uniform"}
_CURVE_LABELS = {"karras": "Karras", "exponential": "Exponential", "beta": "Beta"}


def a1111_schedule(scheduler: SchedulerMixin) -> str | None:
    """The label of the A1111 schedule type that steps through what `scheduler` (as
    `make_scheduler` built it) steps through: its curve (Karras, Exponential, Beta), else
    its spacing (linspace: Uniform, trailing: SGM Uniform, leading from timestep 1: DDIM).

    None where no schedule type says more: DDIM and PLMS (A1111 runs them on timesteps of
    their own whatever the schedule type), LCM on its own timesteps, and a spacing A1111
    has no type for (leading from another timestep than 1)."""
    if isinstance(scheduler, DDIMScheduler | PNDMScheduler):
        return None
    config = scheduler.config
    if isinstance(scheduler, SpacedLCMScheduler):
        curve, spacing = None, scheduler.spacing  # (None: LCM's own timesteps)
    else:
        curve = getattr(scheduler, "curve", None) or next(
            (name for name in _CURVE_LABELS if config.get(f"use_{name}_sigmas")), None
        )
        spacing = config.get("timestep_spacing")
    if curve is not None:
        return _CURVE_LABELS[curve]
    if spacing == "leading":
        return "DDIM" if config.get("steps_offset") == 1 else None
    return _SPACING_LABELS.get(spacing or "")


def make_scheduler(name: str, base_config: Any, seeds: list[int]) -> SchedulerMixin:
    """A fresh scheduler called `name`, for one pipeline call making images with `seeds`.

    Stochastic samplers draw their noise per image from its own seed, so an image comes
    out the same whether it is made alone or in a batch.
    """
    scheduler = stock_scheduler(name, base_config)
    if isinstance(scheduler, DPMSolverSDEScheduler):
        scheduler = SeededSDEScheduler.from_config(scheduler.config)
        scheduler.image_seeds = list(seeds)
    return scheduler


# The sigma curves FlowMatchEulerDiscreteScheduler has, by the A1111 schedule type's key
# (model_files.FLOW_SCHEDULERS names the schedulers the door lets through); the spacing
# types are its own evenly spaced sigmas.
_FLOW_CURVES = {"karras": "use_karras_sigmas", "exponential": "use_exponential_sigmas",
                "beta": "use_beta_sigmas"}  # fmt: skip
_FLOW_SPACINGS = ("uniform", "simple", "normal", "sgm_uniform")


def flow_scheduler(name: str, base_config: Any) -> SchedulerMixin:
    """A flow-matching model's scheduler for `name`: its own Euler (the model's config:
    its shift, dynamic shifting), on the sigma curve the name's schedule type asks for.
    Deterministic: an image is the same alone or in a batch."""
    try:
        key, schedule = samplers.parse(name)
    except KeyError:
        raise InvalidParameters(f"scheduler {name!r} is not known", field="scheduler") from None
    if key != "euler" or (
        schedule is not None and schedule not in (*_FLOW_CURVES, *_FLOW_SPACINGS)
    ):
        raise InvalidParameters(
            f"scheduler {name!r} cannot run a flow-matching model: euler, euler_karras, "
            "euler_exponential or euler_beta can",
            field="scheduler",
        )
    options = {_FLOW_CURVES[schedule]: True} if schedule in _FLOW_CURVES else {}
    return FlowMatchEulerDiscreteScheduler.from_config(dict(base_config), **options)
