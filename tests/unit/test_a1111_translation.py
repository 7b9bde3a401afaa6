"""AUTOMATIC1111's bodies as this server's requests (dialects/a1111/, no server): every
sampler it lists with every schedule type it lists, A1111's spellings of numbers, clip
skip's three sources, hires fix's fields, refusals that name the client's field; and the
bodies' JSON schemas agreeing with the translation on what is taken and what refused."""

from __future__ import annotations

import math
import random
import re
from pathlib import Path
from typing import Any

import pytest

from alice_spool import errors, inputs
from alice_spool.api.dialects.a1111 import body as body_rules
from alice_spool.api.dialects.a1111 import numeric, spellings
from alice_spool.api.dialects.a1111 import translate as a1111
from alice_spool.api.dialects.a1111.options import DEFAULTS, OptionRefused, OwnerOptions, checked
from alice_spool.config import Settings
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


# -- the bodies' schemas and the translation agree ------------------------------------------

jsonschema_rs = pytest.importorskip("jsonschema_rs")

IMAGE = body_rules.EXAMPLE_IMAGE
NUMBERS = [None, 0, 1, -1, 0.5, 2, 7, 7.5, 30, 31, 64, 65, 72, 150, 151, 2048, 4096, True,
           "", " ", "7", " 7.5 ", "+3.", ".5", "-0", "1e1", "nan", "abc", "64", "2048.0",
           [], {}, "0", "0.1", "0.151", "0.15"]  # fmt: skip
FLAGS = [None, True, False, 0, 1, 2, 0.0, "true", " FALSE ", "yes", "off", "", "maybe", [], {}]
# Each field's values, good and bad, as A1111's clients send them and as they might not.
VALUES: dict[str, list[Any]] = {
    "prompt": ["a cat", " a cat ", "", "   ", 5, None, "a\x00b", False, []],
    "negative_prompt": ["", None, "blurry", 3, "\x00", False, {}],
    "seed": [*NUMBERS, 2**32 - 1, 2**32, -2, "4294967295"],
    "subseed_strength": [0, 0.0, None, "0", 0.5, False, "-0"],
    "seed_resize_from_h": [-1, 0, None, 5, "-1", 0.5, -0.5, False],
    "seed_resize_from_w": [-1, 0, 64, "0", True],
    "sampler_name": ["Euler a", "euler_a", " DPM++ 2M Karras ", "dpmpp-2m-sde", "Restart", "",
                     None, 0, False, " ", "Euler Automatic"],
    "sampler_index": ["Euler", "PLMS", "Nope", "", None, 5],
    "scheduler": ["Karras", "karras", " sgm uniform ", "SGMUniform", "Automatic", "", "  ",
                  None, "Turbo", 3, False],
    "batch_size": [*NUMBERS, 4, 8, 16, 17, "4"],
    "n_iter": [1, 2, 4, 5, 16, "8", None, 0],
    "steps": NUMBERS,
    "cfg_scale": NUMBERS,
    "distilled_cfg_scale": NUMBERS,
    "width": [*NUMBERS, 513, 512, "512", 0.0],
    "height": [*NUMBERS, 1024.0, " 768 "],
    "clip_skip": [1, 2, 12, 13, 0, None, 2.0, "2", True],
    "denoising_strength": NUMBERS,
    "override_settings": [None, {}, [], 0, "", {"CLIP_stop_at_last_layers": 2},
                          {"CLIP_stop_at_last_layers": "two"}, {"samples_format": "JPG "},
                          {"samples_format": "tiff"}, {"jpeg_quality": 0}, {"webp_lossless": 1},
                          {"sd_vae": 5}, {"sd_model_checkpoint": 5}, {"my_extension": [1]},
                          {"CLIP_stop_at_last_layers": None}],
    "override_settings_restore_afterwards": FLAGS,
    "send_images": FLAGS,
    "save_images": FLAGS,
    "restore_faces": FLAGS,
    "tiling": [False, True, "no", None, 0],
    "script_name": [None, "", "x", 0, False],
    "refiner_checkpoint": [None, "", "r"],
    "latent_mask": [None, "", "m", 0],
    "alwayson_scripts": [None, {}, {"x": {}}, [], 0],
    "firstphase_width": [None, 0, 0.0, 512, False, "0"],
    "styles": [["None"], None, 5],
    "url": ["http://127.0.0.1:7860"],
    "enable_hr": FLAGS,
    "hr_upscaler": ["Latent", "latent (BICUBIC)", " Lanczos ", "ESRGAN_4x", "", None, 0, "  "],
    "hr_scale": [1, 2, 4, 4.5, 0.5, "1.5", None, "x"],
    "hr_second_pass_steps": [0, 10, 150, 151, -1, 1.0, "2", None],
    "hr_resize_x": [0, 64, 100, 2048, 2049, 63, "96", None, 1.5],
    "hr_resize_y": [0, 768, 10],
    "hr_checkpoint_name": [None, "", "Use same checkpoint", "other", 0],
    "hr_sampler_name": ["DPM++ 2M", "Use same sampler", "", None, "Restart", 5],
    "hr_scheduler": ["Exponential", "Use same scheduler", " ", None, "Turbo"],
    "hr_prompt": ["sharp", "", None, 5, "\x00"],
    "hr_negative_prompt": ["soft", None, 7],
    "init_images": [[IMAGE], [f"data:image/png;base64,{IMAGE}"], [], [IMAGE, IMAGE], None,
                    ["@@@"], IMAGE, [5], [None], [""]],
    "mask": [IMAGE, None, "", 5, "@@@"],
    "inpainting_mask_invert": FLAGS,
}  # fmt: skip
_TXT2IMG_ONLY = {"enable_hr", "hr_upscaler", "hr_scale", "hr_second_pass_steps", "hr_resize_x",
                 "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler",
                 "hr_prompt", "hr_negative_prompt"}  # fmt: skip
_IMG2IMG_ONLY = {"init_images", "mask", "inpainting_mask_invert"}


def a1111_bodies(count: int, seed: int, *, img2img: bool) -> list[dict[str, Any]]:
    """Every field's every value alone, then `count` random mixes of a few fields."""
    names = [n for n in VALUES if n not in (_TXT2IMG_ONLY if img2img else _IMG2IMG_ONLY)]
    start = {"prompt": "a cat", **({"init_images": [IMAGE]} if img2img else {})}
    found = [{**start, name: value} for name in names for value in VALUES[name]]
    rng = random.Random(seed)
    for _ in range(count):
        body = {name: rng.choice(VALUES[name]) for name in rng.sample(names, 3)}
        if rng.random() < 0.5:
            body["enable_hr"] = True
        found.append({**start, **body})
    return found


def a1111_taken(body: dict[str, Any], *, img2img: bool) -> bool | None:
    """Whether the door takes `body` (None: 404, a checkpoint or VAE not installed,
    which the schema leaves to the server): the translation's checks, as generate.py
    makes them, without a server."""
    try:
        fields = a1111.numbers(body, img2img=img2img)
        options = OPTIONS.overridden(fields.get("override_settings") or {})
        native = a1111.native(fields, img2img=img2img, options=options)
        native, staged = inputs.take(native, inputs.MAX_INPUT_PIXELS)
        if (
            img2img
            and a1111.is_given(fields.get("inpainting_mask_invert"))
            and ("mask_image" not in staged.images)
        ):
            return False
        parse_spec(native)
    except (errors.ModelNotFound, errors.VaeNotFound):
        return None
    except errors.InvalidParameters:
        return False
    return True


@pytest.mark.parametrize("img2img", [False, True], ids=["txt2img", "img2img"])
def test_what_the_body_schema_takes_the_door_takes_and_what_it_refuses_it_refuses(
    img2img: bool,
) -> None:
    make = body_rules.img2img_schema if img2img else body_rules.txt2img_schema
    validator = jsonschema_rs.validator_for(make(Settings()))
    disagree = []
    for body in a1111_bodies(3000, seed=5, img2img=img2img):
        taken = a1111_taken(body, img2img=img2img)
        if taken is not None and validator.is_valid(body) != taken:
            disagree.append((body, taken))
    assert not disagree, disagree[:5]


def test_the_img2img_schema_knows_the_least_strength_of_each_number_of_steps() -> None:
    """int(steps x denoising_strength) >= 1, as the schema's staircase says it: at each
    number of steps, the least strength and the one below it, as numbers and as text."""
    validator = jsonschema_rs.validator_for(body_rules.img2img_schema(Settings()))
    disagree = []
    for steps in [*range(1, 151), None, "3", " 7.0 "]:
        count = 50 if steps is None else int(float(steps))
        least = body_rules.least_strength(count)
        below = math.nextafter(least, 0)
        for strength in (least, below, repr(least), f" {below!r}", 0.75, None, 1, "0.5"):
            body = {"prompt": "x", "init_images": [IMAGE], "steps": steps}
            body["denoising_strength"] = strength
            taken = a1111_taken(body, img2img=True)
            if validator.is_valid(body) != taken:
                disagree.append((steps, strength, taken))
    assert not disagree, disagree[:5]


def test_the_text_of_a_range_is_what_the_server_reads_as_a_number_in_it() -> None:
    rng = random.Random(3)
    parts = ["", "0", "00", "1", "9", "12", "13", "29", "30", "31", "150", "2048", "4294967295"]
    fractions = [None, "", "0", "00", "5", "151", "15", "1509", "2", "999", "0001"]
    texts = [
        rng.choice(["", "+", "-"]) + rng.choice(parts) + f"{'' if f is None else '.' + f}"
        for _ in range(20000)
        for f in [rng.choice(fractions)]
    ] + ["1e1", " 5 ", "\t7\n", "nan", "inf", "1_0", "٣", "."]
    spans = [(1, 12, True, False), (-1, 2**32 - 1, True, False), (0, 30, False, False),
             (0, 1, False, True), (0.151, 1, False, False), (None, 0, False, False),
             (0, 0, False, False), (1 / 3, 1, False, False), (1, 1, False, False)]  # fmt: skip
    for low, high, whole, above in spans:
        pattern = re.compile(numeric.span_text(low, high, whole=whole, above=above))
        for text in texts:
            try:
                value = numeric.number_of("x", text)
            except errors.InvalidParameters:
                read = False
            else:
                assert value is not None
                read = (
                    (not whole or float(value).is_integer())
                    and (low is None or value > low or (value == low and not above))
                    and (high is None or value <= high)
                )
            assert bool(pattern.search(text)) == read, (low, high, text)


def test_sampler_and_schedule_patterns_take_what_from_a1111_takes() -> None:
    sampler, schedule = (
        re.compile(spellings.sampler_pattern()),
        re.compile(spellings.schedule_pattern()),
    )
    words = ["DPM++", "dpmpp", "2M", "SDE", "Heun", "Euler", "a", "Karras", "k", "ancestral",
             "sgm", "uniform", "SGMUniform", "Automatic", "DDIM", "PLMS", "lms", "dpm", "2",
             "_", "", "Exponential", "3M", "\u212aarras", "Beta", "normal"]  # fmt: skip
    separators = [" ", "_", "-", "  ", " - ", "__", "\t", "\u3000"]
    rng = random.Random(1)
    for _ in range(20000):
        count = rng.randint(1, 4)
        text = "".join(
            rng.choice(words) + (rng.choice(separators) if i < count - 1 else "")
            for i in range(count)
        )
        text = rng.choice(["", " "]) + (text.upper() if rng.random() < 0.3 else text)
        for pattern, read in ((sampler, lambda t: from_a1111(t, None)),
                              (schedule, lambda t: from_a1111("Euler", t))):  # fmt: skip
            try:
                read(text)
                taken = True
            except errors.InvalidParameters:
                taken = False
            assert bool(pattern.search(text)) == taken, text


def test_a_lone_surrogate_is_refused_as_no_answer_could_carry_it_back() -> None:
    for body, field in [({"prompt": "x", "styles": ["\ud800"]}, "styles"),
                        ({"prompt": "x", "comments": {"\udfff": 1}}, "comments")]:  # fmt: skip
        with pytest.raises(errors.InvalidParameters) as refused:
            a1111.numbers(body)
        assert refused.value.field == field
    assert a1111.numbers({"prompt": "x", "styles": ["\U0001f98a"]})["styles"] == ["\U0001f98a"]
