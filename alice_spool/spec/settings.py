"""A request's defaults and limits: what the parser needs from the `[generation]`
settings, and their built-in values, defined here only (the configuration's start from
them) (pure)."""

from __future__ import annotations

import dataclasses
from typing import Protocol

from ..fields import LORAS_MAX, N_MAX, PIXELS_MAX, STEPS_MAX

DEFAULT_STEPS = 25
DEFAULT_GUIDANCE_SCALE = 7.5
DEFAULT_SCHEDULER = "dpm++_sde_karras"


class GenerationDefaults(Protocol):
    """What the parser needs from the `[generation]` settings (the configuration provides it)."""

    @property
    def default_model(self) -> str: ...
    @property
    def default_steps(self) -> int: ...
    @property
    def default_guidance_scale(self) -> float: ...
    @property
    def default_scheduler(self) -> str: ...
    @property
    def max_steps(self) -> int: ...
    @property
    def max_pixels(self) -> int: ...
    @property
    def max_n(self) -> int: ...
    @property
    def max_loras(self) -> int: ...


@dataclasses.dataclass(frozen=True)
class BuiltinDefaults:
    """A request's defaults and limits when no configuration is at hand."""

    default_model: str = ""
    default_steps: int = DEFAULT_STEPS
    default_guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    default_scheduler: str = DEFAULT_SCHEDULER
    max_steps: int = STEPS_MAX
    max_pixels: int = PIXELS_MAX
    max_n: int = N_MAX
    max_loras: int = LORAS_MAX


BUILTIN_DEFAULTS = BuiltinDefaults()
