"""The model families the spool knows and what each takes when a request leaves it to
the model. Pure: the registry reads a model's family from its files,
the doors and the engine read here what that family means.

| family | native | steps / guidance when a request gives none | schedulers |
|---|---|---|---|
| `sd1`, `sd2`, `sdxl` | 512, 768, 1024 | the server's (`generation.default_steps`) | all |
| `sd3` | 1024 | 28 / 4.5 | flow matching |
| `flux` dev | 1024 | 28 / 3.5 (distilled guidance) | flow matching |
| `flux` schnell | 1024 | 4 / 0 (no guidance) | flow matching |
| `flux` Kontext | 1024 | 28 / 2.5 | flow matching |
| `flux` Fill | 1024 | 50 / 30 | flow matching |
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    id: str
    name: str
    native: int
    flow: bool = False  # flow matching: a transformer with its own schedulers
    # What a request that names none runs with (None: the server's configured default).
    steps: int | None = None
    guidance: float | None = None


FAMILIES: dict[str, Family] = {
    "sd1": Family("sd1", "SD 1.x", 512),
    "sd2": Family("sd2", "SD 2.x", 768),
    "sdxl": Family("sdxl", "SDXL", 1024),
    "sd3": Family("sd3", "SD 3.x", 1024, flow=True, steps=28, guidance=4.5),
    "flux": Family("flux", "FLUX.1", 1024, flow=True, steps=28, guidance=3.5),
}
FAMILY_NAMES = {family.id: family.name for family in FAMILIES.values()}
NATIVE = {family.id: family.native for family in FAMILIES.values()}
# A FLUX.1 model's variant, as its model card runs it: `schnell` is distilled to few
# steps and takes no guidance; Kontext (editing) and Fill (inpainting) are dev's kin.
VARIANT_DEFAULTS: dict[tuple[str, str], tuple[int, float]] = {
    ("flux", "schnell"): (4, 0.0),
    ("flux", "kontext"): (28, 2.5),
    ("flux", "fill"): (50, 30.0),
}


def defaults(family: str | None, variant: str | None) -> tuple[int | None, float | None]:
    """(steps, guidance) a model of `family` (and `variant`) runs with when a request
    gives none; None where the server's configured default applies."""
    if family is None:
        return None, None
    known = VARIANT_DEFAULTS.get((family, variant or ""))
    if known is not None:
        return known
    entry = FAMILIES.get(family)
    return (entry.steps, entry.guidance) if entry is not None else (None, None)


def is_flow(family: str | None) -> bool:
    entry = FAMILIES.get(family or "")
    return entry is not None and entry.flow
