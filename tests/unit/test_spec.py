"""JobSpec parsing: every limit's edges, bad types, unknown fields, aliases, and a
property test that nothing but a SpoolError ever comes out of the parser."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alice_spool.errors import InvalidParameters, SpoolError
from alice_spool.spec import (
    BUILTIN_DEFAULTS,
    SCHEDULERS,
    SPEC_FIELDS,
    JobSpec,
    check_priority_cap,
    denoising_steps,
    normalise_scheduler,
    parse_request,
    parse_size,
    parse_spec,
)


def parse(**fields: Any) -> JobSpec:
    return parse_spec({"prompt": "a cat", **fields})


def rejects(field: str, **fields: Any) -> InvalidParameters:
    with pytest.raises(InvalidParameters) as info:
        parse_spec({"prompt": "a cat", **fields} if "prompt" not in fields else fields)
    assert info.value.field == field, info.value.message
    assert field in info.value.message
    return info.value


def test_defaults_follow_design_section_4() -> None:
    spec = parse()
    assert spec == JobSpec(
        prompt="a cat",
        negative_prompt="",
        model=None,
        width=None,
        height=None,
        steps=25,
        guidance_scale=7.5,
        seed=None,
        scheduler="dpm++_sde_karras",
        n=1,
        priority=0,
    )


def test_configured_defaults_are_used() -> None:
    @dataclass(frozen=True)
    class Gen:
        default_model: str = "tiny"
        default_steps: int = 4
        default_guidance_scale: float = 3.0
        default_scheduler: str = "euler_a"
        max_steps: int = 10
        max_pixels: int = 512 * 512
        max_n: int = 2
        max_loras: int = 1

    spec = parse_spec({"prompt": "x"}, Gen())
    assert (spec.model, spec.steps, spec.guidance_scale, spec.scheduler) == (
        "sd/tiny",
        4,
        3.0,
        "euler_a",
    )
    with pytest.raises(InvalidParameters):
        parse_spec({"prompt": "x", "steps": 11}, Gen())
    with pytest.raises(InvalidParameters, match="limit is 262144"):
        parse_spec({"prompt": "x", "width": 1024, "height": 512}, Gen())
    with pytest.raises(InvalidParameters, match="between 1 and 2"):
        parse_spec({"prompt": "x", "n": 3}, Gen())
    with pytest.raises(InvalidParameters, match=r"2 LoRAs; the limit is 1 \(generation"):
        parse_spec({"prompt": "x <lora:a> <lora:b>"}, Gen())


# -- LoRAs ---------------------------------------------------------------------------


def test_loras_from_the_field_alices_fields_and_prompt_tags() -> None:
    spec = parse(
        prompt="a fox <lora:Film Grain:0.6>, in snow <LORA:b>",
        loras=[{"name": "lora/c", "scale": -1.5}, "d"],
    )
    assert spec.prompt == "a fox, in snow"  # the tags are not for the text encoder
    assert spec.loras == (
        ("lora/Film Grain", 0.6),
        ("lora/b", 1.0),
        ("lora/c", -1.5),
        ("lora/d", 1.0),
    )
    alice = parse(lora_paths=["C:\\loras\\e.safetensors", "/x/f"], lora_scales=[0.25])
    assert alice.loras == (("lora/e", 0.25), ("lora/f", 1.0))
    assert parse(lora_paths=["e"], lora_scales=[0.5, 2]).loras == (("lora/e", 0.5),)
    assert parse(lora_scales=[0.5]).loras == ()  # scales without paths apply to nothing
    assert JobSpec.from_dict(spec.to_dict()) == spec  # stored and read back
    assert spec.to_dict()["loras"][0] == {"name": "lora/Film Grain", "scale": 0.6}


def test_the_lora_set_is_part_of_the_batch_key_and_the_fingerprint() -> None:
    plain, once, other_scale = parse(), parse(loras=["a"]), parse(loras=[{"name": "a", "scale": 2}])
    assert len({plain.batch_key(), once.batch_key(), other_scale.batch_key()}) == 3
    assert parse(loras=["a", "b"]).batch_key() == parse(loras=["b", "a"]).batch_key()  # a set
    assert len({plain.fingerprint(), once.fingerprint(), other_scale.fingerprint()}) == 3
    # A plain request's key and hash are what they were before LoRAs existed, so that
    # jobs queued then still batch and repeat with jobs queued now.
    assert plain.batch_key() == (plain.model, None, None, 25, "dpm++_sde_karras", 7.5)


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"loras": "a"}, "loras", "must be a list"),
        ({"loras": [7]}, "loras", "must be an object"),
        ({"loras": [{"name": "a", "weight": 1}]}, "loras", "unknown field 'weight'"),
        ({"loras": [{"name": "a", "scale": 4.5}]}, "loras", "between -4 and 4"),
        ({"loras": [{"name": "../a"}]}, "loras", "not a valid LoRA name"),
        ({"loras": ["a", "lora/a"]}, "loras", "lora/a is given more than once"),
        ({"prompt": "x <lora:a:big>"}, "prompt", "is not a number"),
        ({"prompt": "<lora:a:1>"}, "prompt", "nothing but LoRA tags"),
        ({"lora_paths": "a"}, "lora_paths", "must be a list"),
        ({"lora_paths": ["a"], "loras": ["b"]}, "lora_paths", "either loras or lora_paths"),
        ({"lora_paths": ["a"], "lora_scales": 1}, "lora_scales", "one per lora_paths"),
        ({"lora_paths": ["a"], "lora_scales": ["x"]}, "lora_scales", "must be a number"),
        ({"loras": ["a", "b", "c", "d", "e"]}, "loras", "5 LoRAs; the limit is 4"),
    ],
)
def test_bad_loras_name_their_field(fields: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(InvalidParameters, match=message) as info:
        parse_spec({"prompt": "x", **fields})
    assert info.value.field == field


# -- prompt --------------------------------------------------------------------------


def test_prompt_is_required() -> None:
    with pytest.raises(InvalidParameters, match="prompt is required") as info:
        parse_spec({"steps": 5})
    assert info.value.field == "prompt"


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_prompt_must_not_be_empty(prompt: str) -> None:
    rejects("prompt", prompt=prompt)


def test_prompt_length_edges() -> None:
    assert len(parse(prompt="x" * 4000).prompt) == 4000
    error = rejects("prompt", prompt="x" * 4001)
    assert "4001" in error.message and "4000" in error.message


def test_prompt_is_trimmed_and_keeps_inner_text() -> None:
    assert parse(prompt="  a cat,\n a hat  ").prompt == "a cat,\n a hat"


@pytest.mark.parametrize("bad", [None, 5, ["a"], {"a": 1}, True])
def test_prompt_must_be_a_string(bad: Any) -> None:
    error = rejects("prompt", prompt=bad)
    assert "must be a string" in error.message


def test_nul_and_lone_surrogates_are_refused() -> None:
    rejects("prompt", prompt="a\x00b")
    rejects("negative_prompt", negative_prompt=json.loads('"\\ud800"'))


def test_negative_prompt_edges() -> None:
    assert parse(negative_prompt="").negative_prompt == ""
    assert parse(negative_prompt=None).negative_prompt == ""
    assert len(parse(negative_prompt="y" * 4000).negative_prompt) == 4000
    rejects("negative_prompt", negative_prompt="y" * 4001)


# -- sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [64, 72, 512, 2040, 2048])
def test_width_and_height_within_limits(value: int) -> None:
    spec = parse(width=value, height=64)
    assert (spec.width, spec.height) == (value, 64)


@pytest.mark.parametrize("value", [56, 0, -8, 2056, 513, 100])
def test_width_outside_limits_or_not_multiple_of_8(value: int) -> None:
    rejects("width", width=value)
    rejects("height", height=value)


def test_integral_floats_are_accepted_but_fractions_are_not() -> None:
    assert parse(width=512.0).width == 512
    assert "whole number" in rejects("width", width=512.5).message


@pytest.mark.parametrize("bad", ["512", True, [512], {"w": 512}])
def test_width_type(bad: Any) -> None:
    assert "integer" in rejects("width", width=bad).message


def test_pixel_limit_edges() -> None:
    assert parse(width=2048, height=2048).width == 2048  # exactly the built-in limit
    limited = replace(BUILTIN_DEFAULTS, max_pixels=512 * 512)
    assert parse_spec({"prompt": "x", "width": 512, "height": 512}, limited).width == 512
    with pytest.raises(InvalidParameters, match="limit is 262144") as info:
        parse_spec({"prompt": "x", "width": 520, "height": 512}, limited)
    assert info.value.field == "width"


def test_size_shorthand() -> None:
    spec = parse(size="768x512")
    assert (spec.width, spec.height) == (768, 512)
    assert parse_size("640 X 480") == (640, 480)
    assert "look like 512x512" in rejects("size", size="big").message
    assert "not both" in rejects("size", size="512x512", width=512).message
    rejects("size", size="513x512")


def test_missing_size_means_the_models_native_size() -> None:
    spec = parse(width=768)
    assert (spec.width, spec.height) == (768, None)


# -- numbers -------------------------------------------------------------------------


def test_steps_edges() -> None:
    assert parse(steps=1).steps == 1
    assert parse(steps=150).steps == 150
    assert "between 1 and 150, got 0" in rejects("steps", steps=0).message
    rejects("steps", steps=151)
    rejects("steps", steps="25")


def test_guidance_edges() -> None:
    assert parse(guidance_scale=0).guidance_scale == 0.0
    assert parse(guidance_scale=30).guidance_scale == 30.0
    assert parse(guidance_scale=7).guidance_scale == 7.0
    rejects("guidance_scale", guidance_scale=-0.01)
    rejects("guidance_scale", guidance_scale=30.01)
    rejects("guidance_scale", guidance_scale=float("nan"))
    rejects("guidance_scale", guidance_scale=float("inf"))
    rejects("guidance_scale", guidance_scale=False)


def test_seed_edges_and_random() -> None:
    assert parse(seed=0).seed == 0
    assert parse(seed=2**32 - 1).seed == 2**32 - 1
    assert parse(seed=-1).seed is None
    assert parse(seed=-1.0).seed is None  # JSON's -1.0 is -1
    assert parse(seed=None).seed is None
    rejects("seed", seed=2**32)
    rejects("seed", seed=-2)
    rejects("seed", seed="42")


def test_random_seed_is_drawn_once_and_recorded() -> None:
    spec = parse(n=3)
    seeded = spec.with_seed()
    assert seeded.seed is not None and 0 <= seeded.seed <= 2**32 - 1
    assert seeded.with_seed() == seeded
    with pytest.raises(ValueError):
        spec.image_seeds()
    start = seeded.seed
    assert seeded.image_seeds() == [(start + i) % 2**32 for i in range(3)]


def test_image_seeds_wrap_at_2_32() -> None:
    assert parse(seed=2**32 - 1, n=2).image_seeds() == [2**32 - 1, 0]


def test_n_edges_and_alias() -> None:
    assert parse(n=1).n == 1
    assert parse(n=16).n == 16
    assert parse(num_images=4).n == 4
    rejects("n", n=0)
    rejects("n", n=17)
    assert "num_images" in rejects("num_images", num_images=17).message
    assert "not both" in rejects("num_images", n=2, num_images=2).message


def test_priority_edges() -> None:
    assert parse(priority=-100).priority == -100
    assert parse(priority=100).priority == 100
    rejects("priority", priority=101)
    rejects("priority", priority=-101)


# -- names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("euler_a", "euler_a"),
        ("Euler a", "euler_a"),
        ("DPM++ 2M Karras", "dpm++_2m_karras"),
        ("dpmpp_sde", "dpm++_sde"),
        ("UniPC", "unipc"),
        ("dpm++-sde-karras", "dpm++_sde_karras"),
        ("Euler a Karras", "euler_a_karras"),
        ("DDIM Normal", "ddim_normal"),
        ("dpmpp_2m_sde", "dpm++_2m_sde"),
        ("DPM++ 2M SDE Exponential", "dpm++_2m_sde_exponential"),
        ("PLMS", "pndm"),
        ("k_euler_a", "euler_a"),
    ],
)
def test_scheduler_spellings(given: str, expected: str) -> None:
    assert normalise_scheduler(given) == expected
    assert parse(scheduler=given).scheduler == expected


def test_every_design_scheduler_is_accepted() -> None:
    assert {parse(scheduler=name).scheduler for name in SCHEDULERS} == set(SCHEDULERS)
    assert len(SCHEDULERS) == 15 * 10  # each sampler alone and with each schedule type


def test_unknown_scheduler_suggests_the_nearest() -> None:
    error = rejects("scheduler", scheduler="eulr_a")
    assert "did you mean 'euler_a'" in error.message
    assert "dpm++_2m_sde" in error.message and "sgm_uniform" in error.message  # the choices


@pytest.mark.parametrize(
    ("given", "expected"),
    [("tiny", "sd/tiny"), ("sd/tiny", "sd/tiny"), (" sd/v1-5 ", "sd/v1-5"), ("", None)],
)
def test_model_ids(given: str, expected: str | None) -> None:
    assert parse(model=given).model == expected


@pytest.mark.parametrize("bad", ["sd/../etc", "../x", "a/b", "sd/.hidden", "sd/", "a\\b", "x\x01"])
def test_model_ids_are_one_safe_path_component(bad: str) -> None:
    rejects("model", model=bad)


# -- the object ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [None, [], "prompt", 3, [{"prompt": "x"}]])
def test_request_must_be_an_object(bad: Any) -> None:
    with pytest.raises(InvalidParameters, match="JSON object"):
        parse_spec(bad)


def test_unknown_fields_are_rejected_with_a_suggestion() -> None:
    error = rejects("stpes", stpes=20)
    assert "did you mean 'steps'" in error.message
    rejects("temperature", temperature=0.7)
    rejects("id", id="k")  # only a request envelope may carry an id


def test_request_id_is_the_idempotency_key() -> None:
    request = parse_request({"prompt": "x", "id": "nightly-001"})
    assert request.idempotency_key == "nightly-001"
    assert parse_request({"prompt": "x"}).idempotency_key is None
    with pytest.raises(InvalidParameters) as info:
        parse_request({"prompt": "x", "id": ""})
    assert info.value.field == "id"
    with pytest.raises(InvalidParameters):
        parse_request({"prompt": "x", "id": "k" * 256})


def test_round_trip_through_storage() -> None:
    spec = parse(prompt="p", negative_prompt="n", model="m", size="512x768", seed=9, n=2)
    assert JobSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_fingerprint_tells_requests_apart_but_not_repeats() -> None:
    assert parse(steps=10).fingerprint() == parse(steps=10).fingerprint()
    assert parse(steps=10).fingerprint() != parse(steps=11).fingerprint()
    # A request for a random seed is the same request each time it is sent.
    assert parse().fingerprint() == parse(seed=-1).fingerprint()


# -- nothing but SpoolError -------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    [
        "prompt",
        "negative_prompt",
        "model",
        "width",
        "height",
        "size",
        "steps",
        "guidance_scale",
        "seed",
        "scheduler",
        "n",
        "num_images",
        "priority",
        "id",
        "bogus",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(json_values, st.dictionaries(field_names, json_values, max_size=8)))
def test_no_input_crashes_the_parser(data: Any) -> None:
    try:
        request = parse_request(data)
    except SpoolError as exc:
        assert exc.message
        return
    spec = request.spec
    assert 1 <= len(spec.prompt) <= 4000
    assert 1 <= spec.n <= 16 and 1 <= spec.steps <= 150
    assert spec.scheduler in SCHEDULERS


near_valid = st.fixed_dictionaries(
    {"prompt": st.text(min_size=1, max_size=60)},
    optional={
        "width": st.integers(0, 3000) | st.floats(),
        "height": st.integers(0, 3000),
        "steps": st.integers(-5, 200),
        "guidance_scale": st.floats() | st.integers(-5, 40),
        "seed": st.integers(-3, 2**33) | st.none(),
        "scheduler": st.sampled_from([*SCHEDULERS, "Euler a", "nope", ""]),
        "n": st.integers(-1, 20),
        "priority": st.integers(-200, 200),
        "model": st.text(max_size=20),
        "size": st.text(max_size=12),
    },
)


@settings(max_examples=300, deadline=None)
@given(near_valid)
def test_near_valid_requests_parse_within_limits_or_fail_cleanly(data: dict[str, Any]) -> None:
    try:
        spec = parse_spec(data)
    except InvalidParameters as exc:
        assert exc.field is not None or "JSON object" in exc.message
        return
    for size in (spec.width, spec.height):
        assert size is None or (64 <= size <= 2048 and size % 8 == 0)
    assert spec.seed is None or 0 <= spec.seed < 2**32
    assert -100 <= spec.priority <= 100 and 0 <= spec.guidance_scale <= 30
    assert spec.model is None or spec.model.startswith("sd/")


IMAGE = "sha256:" + "ab" * 32  # an init image as the door's intake leaves it


@pytest.mark.parametrize(
    ("steps", "strength"),
    [(1, 0.75), (3, 0.2), (4, 0.2), (1, 0.999), (9, 0.1), (49, 1 / 49), (150, 0.006)],
)
def test_img2img_that_leaves_no_denoising_step_is_refused(steps: int, strength: float) -> None:
    """diffusers runs int(steps * strength) steps of an img2img or inpainting request
    (its get_timesteps); with none it fails on every try. 49 * (1 / 49) is 0.999...: the
    float product decides, as it does in diffusers."""
    assert int(steps * strength) == 0
    for mask in ({}, {"mask_image": IMAGE}):
        error = rejects("strength", init_image=IMAGE, steps=steps, strength=strength, **mask)
        assert "steps" in error.message and "strength" in error.message


@pytest.mark.parametrize(
    ("steps", "strength"), [(2, 0.75), (5, 0.2), (10, 0.1), (1, 1.0), (150, 0.007), (50, 1 / 49)]
)
def test_img2img_with_one_denoising_step_or_more_is_taken(steps: int, strength: float) -> None:
    spec = parse(init_image=IMAGE, steps=steps, strength=strength)
    assert denoising_steps(spec.steps, float(spec.strength or 0)) >= 1


def test_the_steps_check_uses_the_default_steps_and_strength() -> None:
    """With no steps given, the check waits for the model's (its family's, or the
    server's): the door makes it when it knows the model (registry.for_family)."""
    from pathlib import Path

    from alice_spool.library.registry import ModelInfo, for_family

    few = replace(BUILTIN_DEFAULTS, default_steps=1)
    left = parse_spec({"prompt": "x", "init_image": IMAGE}, few)  # 1 step at 0.75
    assert left.left_to_model == ("steps", "guidance_scale", "scheduler")
    sd = ModelInfo("sd/m", "m", Path("m"), "diffusers", "sd1", 0, 512)
    with pytest.raises(InvalidParameters) as info:
        for_family(left, sd)
    assert info.value.field == "strength" and "raise steps to at least 2" in info.value.message
    schnell = replace(sd, family="flux", variant="schnell")  # 4 steps at 0.75: 3 run
    assert for_family(left, schnell).steps == 4
    assert parse_spec({"prompt": "x", "init_image": IMAGE, "steps": 2}, few).strength == 0.75
    assert parse_spec({"prompt": "x", "steps": 1, "strength": 0.2}).strength is None  # txt2img


def test_a_priority_above_the_cap_names_priority() -> None:
    check_priority_cap(0, 0)
    check_priority_cap(-100, 0)
    check_priority_cap(10, 10)
    with pytest.raises(InvalidParameters) as info:
        check_priority_cap(1, 0)
    assert info.value.field == "priority" and "users.max_priority" in info.value.message


def test_client_fields_are_the_doors_to_set_never_a_requests() -> None:
    """What a client's own API asked for is recorded with the spec by the door; a request
    cannot set it, it round-trips, an older record without it reads as none, and it
    never keeps jobs from sharing a call."""
    plain = parse_spec({"prompt": "a fox"})
    recorded = replace(plain, client_fields=(("model", "dall-e-3"), ("user", "u")))
    shown = recorded.to_dict()
    assert shown["client_fields"] == {"model": "dall-e-3", "user": "u"}
    assert JobSpec.from_dict(shown) == recorded
    older = {k: v for k, v in plain.to_dict().items() if k != "client_fields"}
    assert JobSpec.from_dict(older) == plain and plain.to_dict()["client_fields"] == {}
    assert "client_fields" not in SPEC_FIELDS
    rejects("client_fields", client_fields={"user": "u"})
    assert recorded.fingerprint() != plain.fingerprint()
    assert (recorded.batch_key(), recorded.batch_digest()) == (
        plain.batch_key(),
        plain.batch_digest(),
    )


def test_a_prompt_may_be_empty_only_with_an_input_image() -> None:
    image = "sha256:" + "0" * 64
    assert parse_spec({"init_image": image}).prompt == ""
    assert parse_spec({"prompt": " ", "init_image": image}).prompt == ""
    rejects("prompt", prompt="")
    with pytest.raises(InvalidParameters, match="prompt is required"):
        parse_spec({"steps": 3})
