"""The samplers and schedule types this server offers, by their AUTOMATIC1111 1.10 names,
and the one-string scheduler names a job's spec stores (pure, no torch).

A scheduler name is a sampler key alone (`euler_a`, `dpm++_2m`): the sampler on the
spacing of the model's own scheduler config; or a sampler key and a schedule key
(`euler_a_karras`, `ddim_normal`, `dpm++_2m_sde_exponential`). Every sampler takes
every schedule type:

- the spacing types pick the timesteps: `uniform` and `normal` (diffusers'
  `timestep_spacing="linspace"`: for an SD model A1111's normal is its uniform),
  `sgm_uniform` and `simple` (`"trailing"`, diffusers' documented equivalent), `ddim`
  (`"leading"` from timestep 1, as A1111's);
- the curve types set the sigmas over the range of the model's spacing: `karras`
  (rho 7), `exponential`, `polyexponential` (A1111's rho 1: the exponential curve),
  `beta` (alpha = beta = 0.6, A1111's defaults).

DDIM, PLMS and LCM step on timesteps of their own and ignore the curve types, as A1111's
timestep samplers ignore every schedule type; they honour the spacing types (LCM on its
50-step distillation grid, as A1111's LCM rounds its sigmas onto that grid).

Not offered, for want of a faithful diffusers equivalent: DPM++ 2S a, DPM fast,
DPM adaptive, Restart, DDIM CFG++; and the schedule types KL Optimal and Align Your Steps.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from typing import Any

from .errors import InvalidParameters


@dataclass(frozen=True)
class Sampler:
    name: str  # A1111's
    key: str  # ours
    aliases: tuple[str, ...]
    # The schedule A1111 runs it with under "Automatic"; None: its own timesteps,
    # which the bare key gives.
    automatic: str | None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # as A1111 lists them


@dataclass(frozen=True)
class Schedule:
    name: str
    label: str
    aliases: tuple[str, ...] | None = None
    default_rho: float = -1.0
    need_inner_model: bool = False


# In A1111 1.10's order. `automatic` is A1111's plain discretisation of the k-diffusion
# samplers ("uniform"), or the schedule the sampler's options name.
SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DPM++ 2M", "dpm++_2m", ("k_dpmpp_2m",), "karras", {"scheduler": "karras"}),
    Sampler(
        "DPM++ SDE",
        "dpm++_sde",
        ("k_dpmpp_sde",),
        "karras",
        {"scheduler": "karras", "second_order": True, "brownian_noise": True},
    ),
    Sampler(
        "DPM++ 2M SDE",
        "dpm++_2m_sde",
        ("k_dpmpp_2m_sde",),
        "exponential",
        {"scheduler": "exponential", "brownian_noise": True},
    ),
    Sampler(
        "DPM++ 2M SDE Heun",
        "dpm++_2m_sde_heun",
        ("k_dpmpp_2m_sde_heun",),
        "exponential",
        {"scheduler": "exponential", "brownian_noise": True, "solver_type": "heun"},
    ),
    Sampler(
        "DPM++ 3M SDE",
        "dpm++_3m_sde",
        ("k_dpmpp_3m_sde",),
        "exponential",
        {"scheduler": "exponential", "discard_next_to_last_sigma": True, "brownian_noise": True},
    ),
    Sampler(
        "Euler a", "euler_a", ("k_euler_a", "k_euler_ancestral"), "uniform", {"uses_ensd": True}
    ),
    Sampler("Euler", "euler", ("k_euler",), "uniform"),
    Sampler("LMS", "lms", ("k_lms",), "uniform"),
    Sampler("Heun", "heun", ("k_heun",), "uniform", {"second_order": True}),
    Sampler(
        "DPM2",
        "dpm2",
        ("k_dpm_2",),
        "karras",
        {"scheduler": "karras", "discard_next_to_last_sigma": True, "second_order": True},
    ),
    Sampler(
        "DPM2 a",
        "dpm2_a",
        ("k_dpm_2_a",),
        "karras",
        {
            "scheduler": "karras",
            "discard_next_to_last_sigma": True,
            "uses_ensd": True,
            "second_order": True,
        },
    ),
    Sampler("DDIM", "ddim", ("ddim",), None),
    Sampler("PLMS", "pndm", ("plms",), None),
    Sampler("UniPC", "unipc", ("unipc",), None),
    Sampler("LCM", "lcm", ("k_lcm",), None),
)

SCHEDULES: tuple[Schedule, ...] = (
    Schedule("automatic", "Automatic"),
    Schedule("uniform", "Uniform", need_inner_model=True),
    Schedule("karras", "Karras", default_rho=7.0),
    Schedule("exponential", "Exponential"),
    Schedule("polyexponential", "Polyexponential", default_rho=1.0),
    Schedule("sgm_uniform", "SGM Uniform", ("SGMUniform",), need_inner_model=True),
    Schedule("simple", "Simple", need_inner_model=True),
    Schedule("normal", "Normal", need_inner_model=True),
    Schedule("ddim", "DDIM", need_inner_model=True),
    Schedule("beta", "Beta", need_inner_model=True),
)

SPACINGS = frozenset({"uniform", "normal", "sgm_uniform", "simple", "ddim"})
CURVES = frozenset({"karras", "exponential", "polyexponential", "beta"})
TIMESTEP_SAMPLERS = frozenset({"ddim", "pndm", "lcm"})  # they ignore the curves

_BY_KEY = {sampler.key: sampler for sampler in SAMPLERS}
_SCHEDULE_BY_KEY = {schedule.name: schedule for schedule in SCHEDULES}
SCHEDULE_KEYS: tuple[str, ...] = tuple(s.name for s in SCHEDULES if s.name != "automatic")

# Every name a job's spec may hold: each sampler alone, then with each schedule.
NAMES: tuple[str, ...] = tuple(
    name for s in SAMPLERS for name in (s.key, *(f"{s.key}_{k}" for k in SCHEDULE_KEYS))
)


def _spelling(text: str) -> str:
    """One spelling for names written in any case, with spaces or hyphens, and with
    `dpmpp` for `dpm++`."""
    return re.sub(r"[\s\-]+", "_", text.strip().lower()).replace("dpmpp", "dpm++")


# How a sampler or a schedule may be written: our keys, A1111's names, labels and aliases.
_SAMPLER_SPELLINGS = {
    _spelling(spelling): s.key for s in SAMPLERS for spelling in (s.key, s.name, *s.aliases)
}
_SCHEDULE_SPELLINGS = {
    _spelling(spelling): s.name
    for s in SCHEDULES
    for spelling in (s.name, s.label, *(s.aliases or ()))
}


def parse(name: str) -> tuple[str, str | None]:
    """(sampler key, schedule key or None) of a canonical name; KeyError if it is not one.
    The longest sampler key wins: `dpm++_2m_sde` is DPM++ 2M SDE, not DPM++ 2M."""
    for key in sorted(_BY_KEY, key=len, reverse=True):
        if name == key:
            return key, None
        rest = name.removeprefix(f"{key}_")
        if rest != name and rest in SCHEDULE_KEYS:
            return key, rest
    raise KeyError(name)


def normalise(value: Any, field: str = "scheduler") -> str:
    """The canonical name for a scheduler written as ours (`euler_a_karras`) or as other
    SD tools write it (`DPM++ 2M Karras`, `Euler a`, `dpmpp_2m_sde`, `DDIM Normal`),
    case-insensitive. A sampler alone keeps the model's own spacing."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidParameters(f"{field} must be a non-empty string", field=field)
    if len(value) > 64:
        raise InvalidParameters(f"{field} is longer than 64 characters", field=field)
    text = _spelling(value)
    for spelling in sorted(_SAMPLER_SPELLINGS, key=len, reverse=True):
        if text == spelling:
            return _SAMPLER_SPELLINGS[spelling]
        rest = text.removeprefix(f"{spelling}_")
        if rest != text and _SCHEDULE_SPELLINGS.get(rest, "automatic") != "automatic":
            return f"{_SAMPLER_SPELLINGS[spelling]}_{_SCHEDULE_SPELLINGS[rest]}"
    hint = difflib.get_close_matches(text, NAMES, n=1)
    suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise InvalidParameters(
        f"{field} {value!r} is not known{suggestion}; choose a sampler "
        f"({', '.join(_BY_KEY)}), optionally followed by _ and a schedule type "
        f"({', '.join(SCHEDULE_KEYS)})",
        field=field,
    )


def _schedule_of(value: Any, field: str) -> str | None:
    """A schedule key from A1111's `scheduler` (name, label or alias); None for Automatic."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    key = _SCHEDULE_SPELLINGS.get(_spelling(value)) if isinstance(value, str) else None
    if key is None:
        raise InvalidParameters(
            f"schedule type {value!r} is not known; choose one of: "
            + ", ".join(s.label for s in SCHEDULES),
            field=field,
        )
    return None if key == "automatic" else key


def _sampler_of(value: Any, field: str) -> tuple[str, str | None]:
    """(sampler key, schedule key the name carries) from A1111's `sampler_name`, old
    combined names too (`DPM++ 2M Karras`, `DPM++ 2M SDE Exponential`)."""
    text = _spelling(value) if isinstance(value, str) else ""
    if text in _SAMPLER_SPELLINGS:
        return _SAMPLER_SPELLINGS[text], None
    for spelling, schedule in _SCHEDULE_SPELLINGS.items():
        stem = text.removesuffix(f"_{spelling}")
        if stem != text and stem in _SAMPLER_SPELLINGS and schedule != "automatic":
            return _SAMPLER_SPELLINGS[stem], schedule
    raise InvalidParameters(
        f"sampler {value!r} is not known; choose one of: {', '.join(s.name for s in SAMPLERS)}",
        field=field,
    )


def from_a1111(
    sampler: Any,
    schedule: Any,
    *,
    sampler_field: str = "sampler_name",
    schedule_field: str = "scheduler",
) -> str:
    """The canonical name for what A1111 1.10 runs with this `sampler_name` and
    `scheduler`: Automatic (or none) is the sampler's own choice (`DPM++ 2M`: Karras;
    `Euler`: A1111's plain discretisation, Uniform); a schedule named in the sampler's
    name (`DPM++ 2M SDE Karras`) counts unless `scheduler` names another."""
    key, carried = _sampler_of(sampler, sampler_field)
    chosen = _schedule_of(schedule, schedule_field) or carried or _BY_KEY[key].automatic
    return key if chosen is None else f"{key}_{chosen}"


def to_a1111(canonical: str) -> tuple[str, str]:
    """(A1111 sampler name, schedule label) of a canonical name; "Automatic" for a
    sampler alone."""
    key, schedule = parse(canonical)
    label = _SCHEDULE_BY_KEY[schedule or "automatic"].label
    return _BY_KEY[key].name, label


def a1111_samplers() -> list[dict[str, Any]]:
    """`GET /sdapi/v1/samplers`, as A1111 1.10 answers it."""
    return [
        {"name": s.name, "aliases": list(s.aliases), "options": dict(s.options)} for s in SAMPLERS
    ]


def a1111_schedules() -> list[dict[str, Any]]:
    """`GET /sdapi/v1/schedulers`, as A1111 1.10 answers it."""
    return [
        {
            "name": s.name,
            "label": s.label,
            "aliases": list(s.aliases) if s.aliases is not None else None,
            "default_rho": s.default_rho,
            "need_inner_model": s.need_inner_model,
        }
        for s in SCHEDULES
    ]
