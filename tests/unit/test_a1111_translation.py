"""AUTOMATIC1111's bodies as this server's requests (api/a1111.py, no server): every
sampler it lists with every schedule type it lists, A1111's spellings of numbers, clip
skip's three sources, hires fix's fields, and refusals that name the client's field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from alice_spool import errors
from alice_spool.api.dialects.a1111 import translate as a1111
from alice_spool.api.dialects.a1111.options import DEFAULTS, OptionRefused, OwnerOptions, checked
from alice_spool.library.registry import ModelInfo, for_family
from alice_spool.samplers import a1111_samplers, a1111_schedules, from_a1111, normalise
from alice_spool.spec import JobSpec, parse_spec

OPTIONS = OwnerOptions(None, DEFAULTS)


def spec_of(body: dict[str, Any], options: OwnerOptions = OPTIONS) -> JobSpec:
    try:
        return parse_spec(a1111.native(a1111.numbers(body), img2img=False, options=options))
    except errors.InvalidParameters as exc:
        raise a1111.in_their_terms(exc) from None


def test_every_listed_sampler_takes_every_listed_schedule_type() -> None:
    made = set()
    for sampler in a1111_samplers():
        for schedule in a1111_schedules():
            for spelling in (schedule["name"], schedule["label"]):
                spec = spec_of(
                    {"prompt": "x", "sampler_name": sampler["name"], "scheduler": spelling}
                )
                assert normalise(spec.scheduler) == spec.scheduler  # a canonical name
                made.add(spec.scheduler)
    # Each sampler with each named schedule type is its own job setting...
    named = {
        from_a1111(sampler["name"], schedule["name"])
        for sampler in a1111_samplers()
        for schedule in a1111_schedules()
        if schedule["name"] != "automatic"
    }
    assert len(named) == len(a1111_samplers()) * (len(a1111_schedules()) - 1)
    # ... and Automatic is A1111's choice for the sampler: a named one, or its own spacing.
    automatic = {from_a1111(sampler["name"], "Automatic") for sampler in a1111_samplers()}
    assert made == named | automatic
    assert automatic - named == {"ddim", "pndm", "unipc", "lcm"}  # A1111's timestep samplers
    for body, field in [
        ({"sampler_name": "DPM fast"}, "sampler_name"),
        ({"sampler_name": "Euler", "scheduler": "Align Your Steps"}, "scheduler"),
        ({"enable_hr": True, "hr_sampler_name": "Restart"}, "hr_sampler_name"),
    ]:
        with pytest.raises(errors.InvalidParameters) as refused:
            spec_of({"prompt": "x", **body})
        assert refused.value.field == field and repr(body[field]) in refused.value.message


def test_old_names_and_what_a1111_runs_under_automatic() -> None:
    assert (
        spec_of({"prompt": "x", "sampler_name": "DPM++ 2M Karras"}).scheduler == "dpm++_2m_karras"
    )
    assert spec_of({"prompt": "x", "sampler_name": "DPM++ 2M"}).scheduler == "dpm++_2m_karras"
    assert spec_of({"prompt": "x", "sampler_index": "Euler a"}).scheduler == from_a1111(
        "Euler a", "Automatic"
    )
    assert spec_of({"prompt": "x"}).scheduler == from_a1111("Euler", None)  # A1111's default
    assert spec_of({"prompt": "x", "sampler_name": None, "scheduler": None}).steps == 50


def test_numbers_as_text_and_whole_floats_are_read_as_a1111_reads_them() -> None:
    spec = spec_of(
        {"prompt": "x", "cfg_scale": "7.5", "steps": 20.0, "width": "64", "seed": "12",
         "batch_size": 2.0, "denoising_strength": None, "styles": ["None"]}
    )  # fmt: skip
    assert (spec.guidance_scale, spec.steps, spec.width, spec.seed, spec.n) == (7.5, 20, 64, 12, 2)
    with pytest.raises(errors.InvalidParameters) as refused:
        spec_of({"prompt": "x", "cfg_scale": "seven"})
    assert refused.value.field == "cfg_scale"
    with pytest.raises(errors.InvalidParameters) as fraction:
        spec_of({"prompt": "x", "steps": 2.5})
    assert fraction.value.field == "steps"


def test_clip_skip_from_override_settings_then_the_body_then_the_options() -> None:
    set_two = OwnerOptions(None, {**DEFAULTS, "CLIP_stop_at_last_layers": 2})
    assert spec_of({"prompt": "x"}).clip_skip is None  # 1: the last layer
    assert spec_of({"prompt": "x"}, set_two).clip_skip == 2
    assert spec_of({"prompt": "x", "clip_skip": 3}, set_two).clip_skip == 3
    body = {"prompt": "x", "clip_skip": 3, "override_settings": {"CLIP_stop_at_last_layers": 1}}
    override = set_two.overridden(body["override_settings"])
    assert spec_of(body, override).clip_skip is None
    with pytest.raises(OptionRefused):
        set_two.overridden({"CLIP_stop_at_last_layers": "deep"})
    with pytest.raises(errors.InvalidParameters) as refused:
        spec_of({"prompt": "x", "clip_skip": 13})
    assert refused.value.field == "clip_skip"


def test_hires_fields_become_the_native_hires_object() -> None:
    spec = spec_of(
        {"prompt": "x", "width": 64, "height": 64, "enable_hr": True, "hr_scale": 1.5,
         "hr_upscaler": "latent (bicubic)", "hr_second_pass_steps": 4, "denoising_strength": 0.4,
         "hr_scheduler": "Exponential", "hr_prompt": "x, detailed"}
    )  # fmt: skip
    assert spec.hires is not None
    assert (spec.hires.scale, spec.hires.upscaler, spec.hires.steps) == (1.5, "Latent (bicubic)", 4)
    assert spec.hires.strength == 0.4 and spec.hires.prompt == "x, detailed"
    assert spec.hires.scheduler == from_a1111("Euler", "Exponential")
    resized = spec_of({"prompt": "x", "enable_hr": True, "hr_resize_x": 96})
    assert resized.hires is not None and (resized.hires.width, resized.hires.scale) == (96, None)
    off = spec_of({"prompt": "x", "enable_hr": False, "hr_scale": 3, "hr_upscaler": "Nope"})
    assert off.hires is None  # sent with every request, used only when enabled
    for body, field in [
        ({"hr_upscaler": "4x-UltraSharp"}, "hr_upscaler"),
        ({"hr_scale": 9}, "hr_scale"),
        ({"hr_checkpoint_name": "other"}, "hr_checkpoint_name"),
        ({"hr_second_pass_steps": -1}, "hr_second_pass_steps"),
    ]:
        with pytest.raises(errors.InvalidParameters) as refused:
            spec_of({"prompt": "x", "enable_hr": True, **body})
        assert refused.value.field == field, refused.value


def test_options_sent_back_keep_unknown_keys_and_check_understood_ones() -> None:
    whole = dict(DEFAULTS) | {"sd_model_checkpoint": "tiny", "my_extension": [1]}
    kept = checked(whole)
    assert "sd_model_checkpoint" not in kept and "sd_checkpoint_hash" not in kept
    assert kept["my_extension"] == [1] and kept["CLIP_stop_at_last_layers"] == 1
    assert checked({"samples_format": "JPG"})["samples_format"] == "jpg"
    for bad in ({"samples_format": "tiff"}, {"jpeg_quality": 0}, {"webp_lossless": "yes"},
                {"CLIP_stop_at_last_layers": 1.5}):  # fmt: skip
        with pytest.raises(OptionRefused) as refused:
            checked(bad)
        assert refused.value.field == next(iter(bad))


def test_the_hires_sampler_resolves_its_own_automatic_as_a1111_does() -> None:
    def hires_scheduler(**body: Any) -> str | None:
        spec = spec_of({"prompt": "x", "enable_hr": True, **body})
        assert spec.hires is not None
        return spec.hires.scheduler

    # The first pass on Automatic: the second pass's sampler takes its own Automatic.
    assert hires_scheduler(sampler_name="Euler a", hr_sampler_name="DPM++ 2M") == (
        "dpm++_2m_karras"
    )
    # A schedule type asked for, by field or in the name: the second pass keeps it.
    assert hires_scheduler(
        sampler_name="Euler a", scheduler="Exponential", hr_sampler_name="DPM++ 2M"
    ) == from_a1111("DPM++ 2M", "Exponential")
    assert hires_scheduler(sampler_name="Euler Karras", hr_sampler_name="LMS") == "lms_karras"
    assert hires_scheduler(sampler_name="Euler", hr_scheduler="Beta") == "euler_beta"
    assert hires_scheduler(sampler_name="Euler", hr_sampler_name="Use same sampler") is None


def test_true_and_false_sent_as_text_are_read_as_a1111_reads_them() -> None:
    assert spec_of(a1111.numbers({"prompt": "x", "enable_hr": "true"})).hires is not None
    assert spec_of(a1111.numbers({"prompt": "x", "enable_hr": "false"})).hires is None
    assert a1111.numbers({"send_images": "False"})["send_images"] is False
    with pytest.raises(errors.InvalidParameters) as refused:
        a1111.numbers({"enable_hr": "perhaps"})
    assert refused.value.field == "enable_hr"


FLUX_DEV = ModelInfo("sd/flux-dev", "flux-dev", Path("flux-dev"), "diffusers", "flux", 0, 1024,
                     variant="dev")  # fmt: skip


def flux_spec_of(body: dict[str, Any]) -> JobSpec:
    """A txt2img body for a FLUX.1 dev model, as the door translates and queues it."""
    try:
        fields = a1111.native(a1111.numbers(body), img2img=False, options=OPTIONS, family="flux")
        return for_family(parse_spec(fields), FLUX_DEV)
    except errors.InvalidParameters as exc:
        raise a1111.in_their_terms(exc, "flux") from None


def test_a_flux_request_is_read_as_forge_reads_it() -> None:
    # distilled_cfg_scale is the guidance; left out, the model's own (3.5 for dev)
    assert flux_spec_of({"prompt": "x", "distilled_cfg_scale": 2.5}).guidance_scale == 2.5
    assert flux_spec_of({"prompt": "x", "distilled_cfg_scale": "4"}).guidance_scale == 4.0
    plain = flux_spec_of({"prompt": "x"})
    assert (plain.guidance_scale, plain.true_cfg_scale) == (3.5, None)
    # cfg_scale is true CFG: off at 1 (and below), on above it, even as text
    assert flux_spec_of({"prompt": "x", "cfg_scale": 1}).true_cfg_scale is None
    assert flux_spec_of({"prompt": "x", "cfg_scale": 0.5}).true_cfg_scale is None
    guided = flux_spec_of({"prompt": "x", "negative_prompt": "blur", "cfg_scale": "7"})
    assert (guided.true_cfg_scale, guided.negative_prompt, guided.guidance_scale) == (
        7.0, "blur", 3.5,
    )  # fmt: skip
    # the SD reading of the same body: cfg_scale is the guidance
    assert spec_of({"prompt": "x", "cfg_scale": 7}).guidance_scale == 7.0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"negative_prompt": "blur", "cfg_scale": 1}, "negative_prompt"),
        ({"cfg_scale": 31}, "cfg_scale"),
        ({"cfg_scale": -2}, "cfg_scale"),
        ({"cfg_scale": "lots"}, "cfg_scale"),
        ({"cfg_scale": True}, "cfg_scale"),
        ({"distilled_cfg_scale": 31}, "distilled_cfg_scale"),
        ({"distilled_cfg_scale": "x"}, "distilled_cfg_scale"),
    ],
)
def test_a_refused_flux_request_names_the_fields_as_the_client_sent_them(
    body: dict[str, Any], field: str
) -> None:
    with pytest.raises(errors.InvalidParameters) as refused:
        flux_spec_of({"prompt": "x", **body})
    assert refused.value.field == field
    assert "true_cfg_scale" not in refused.value.message  # A1111's name for it: cfg_scale
    assert "guidance_scale" not in refused.value.message or field == "negative_prompt"
