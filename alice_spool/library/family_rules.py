"""What a model's family runs with, applied to a request: the family's defaults for what
the request left to the model, what the family has no use for run without it (and noted),
and what it cannot do refused, each naming its field (pure)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..errors import InvalidParameters
from ..spec import IGNORED, JobSpec, check_denoising_steps
from .families import FAMILY_NAMES, defaults, is_flow
from .model_files import FLOW_SCHEDULERS, ModelInfo


def for_family(spec: JobSpec, model: ModelInfo) -> JobSpec:
    """The spec as `model`'s family runs it: what the request left to the model
    (`left_to_model`) set to the family's own defaults, and what the family cannot do
    refused, each a 400 naming its field (families.py). What a family has no use for
    and that changes nothing when left out (a schnell model's guidance, true CFG where
    guidance_scale is classifier-free guidance already, a T5 prompt length without a
    T5) runs without it, and the job records that in its `client_fields` (`ignored`)."""
    steps, guidance = defaults(model.family, model.variant)
    changes: dict[str, Any] = {}
    left = spec.left_to_model
    if "steps" in left and steps is not None:
        changes["steps"] = steps
    if "guidance_scale" in left and guidance is not None:
        changes["guidance_scale"] = guidance
    name = FAMILY_NAMES.get(str(model.family), "Stable Diffusion")
    ignored = _ignored(spec, model, name)
    for field_name, _why in ignored:
        if field_name:
            changes[field_name] = None
    if ignored:
        notes = "; ".join(why for _, why in ignored)
        changes["client_fields"] = tuple(
            sorted({**dict(spec.client_fields), IGNORED: notes}.items())
        )
    if is_flow(model.family):
        if "scheduler" in left:
            changes["scheduler"] = FLOW_SCHEDULERS[0]
        elif spec.scheduler not in FLOW_SCHEDULERS:
            raise InvalidParameters(
                f"scheduler {spec.scheduler} cannot run a {name} model ({model.id}); "
                f"these can: {', '.join(FLOW_SCHEDULERS)}",
                field="scheduler",
            )
        refused = _flow_refusals(spec, model, name)
        if refused is not None:
            raise InvalidParameters(refused[1], field=refused[0])
    if model.variant == "kontext":
        changes["strength"] = None  # it edits after the image: there is no strength
    spec = replace(spec, **changes, left_to_model=())
    if spec.strength is not None:
        check_denoising_steps(spec.steps, spec.strength)
    return spec


# The most T5 tokens each flow family's pipelines take (FLUX.1 schnell was trained on 256).
SEQUENCE_LIMITS = {("flux", "schnell"): 256, ("flux", None): 512, ("sd3", None): 512}


def sequence_limit(model: ModelInfo) -> int | None:
    """The longest `max_sequence_length` `model` takes; None: it has no T5 encoder."""
    family = str(model.family)
    return SEQUENCE_LIMITS.get((family, model.variant), SEQUENCE_LIMITS.get((family, None)))


def _ignored(spec: JobSpec, model: ModelInfo, name: str) -> list[tuple[str, str]]:
    """(field, why) for each value the request gave that `model` has no use for."""
    ignored: list[tuple[str, str]] = []
    schnell = model.family == "flux" and model.variant == "schnell"
    if schnell and "guidance_scale" not in spec.left_to_model and spec.guidance_scale:
        # (kept as given, which the pipeline does not read: so a request that was queued
        # before this note existed still matches its idempotency key)
        ignored.append(
            ("", f"guidance_scale {spec.guidance_scale:g}: FLUX.1 schnell takes no guidance")
        )
    if spec.true_cfg_scale is not None and model.variant == "fill":
        ignored.append(
            ("true_cfg_scale", f"true_cfg_scale {spec.true_cfg_scale:g}: a FLUX.1 Fill "
             "model's pipeline has no true CFG")
        )  # fmt: skip
    if spec.true_cfg_scale is not None and model.family != "flux":
        ignored.append(
            ("true_cfg_scale", f"true_cfg_scale {spec.true_cfg_scale:g}: a {name} model's "
             "guidance_scale is classifier-free guidance already")
        )  # fmt: skip
    if spec.max_sequence_length is not None and sequence_limit(model) is None:
        ignored.append(
            ("max_sequence_length", f"max_sequence_length {spec.max_sequence_length}: a "
             f"{name} model has no T5 text encoder")
        )  # fmt: skip
    return ignored


def _flow_refusals(spec: JobSpec, model: ModelInfo, name: str) -> tuple[str, str] | None:
    """(field, why) for what a FLUX.1 or SD 3.x model does not run here (yet)."""
    limit = sequence_limit(model) or 0
    if spec.max_sequence_length is not None and spec.max_sequence_length > limit:
        return "max_sequence_length", (
            f"max_sequence_length {spec.max_sequence_length}: {model.id} takes at most "
            f"{limit} T5 tokens"
        )
    if spec.negative_prompt and model.family == "flux" and model.variant == "fill":
        return "negative_prompt", (
            f"{model.id} is a FLUX.1 Fill model, whose pipeline takes no negative prompt "
            "(nor true CFG): leave negative_prompt out"
        )
    if spec.negative_prompt and model.family == "flux" and spec.true_cfg_scale is None:
        return "negative_prompt", (
            f"{model.id} is a {name} model, whose guidance is distilled: a negative prompt "
            "needs true CFG (true_cfg_scale above 1, which runs the model twice a step); "
            "give one, or leave negative_prompt out"
        )
    if spec.clip_skip is not None:
        return "clip_skip", f"clip_skip is for Stable Diffusion 1.x, 2.x and XL, not {name}"
    if spec.hires is not None:
        return "hires", f"hires fix runs Stable Diffusion 1.x, 2.x and XL models, not {name}"
    if spec.vae is not None:
        return "vae", f"{name} models run with their own VAE"
    if model.variant == "kontext" and spec.mask_image is not None:
        return "mask_image", (
            f"{model.id} is a FLUX.1 Kontext model, which edits a whole image after the "
            "prompt: leave mask_image out, or inpaint with a FLUX.1 dev or Fill model"
        )
    if model.variant == "fill" and (spec.init_image is None or spec.mask_image is None):
        field_name = "init_image" if spec.init_image is None else "mask_image"
        return field_name, (
            f"{model.id} is a FLUX.1 Fill model, which only inpaints: give an init_image "
            "and a mask_image"
        )
    return None
