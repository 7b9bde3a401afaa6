"""The request's typed model (spec/request.py): one model per configuration's limits,
made once; pydantic's errors turned back into the `InvalidParameters` that names the
field, in the words the parser has always used; a validated request normalised."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from alice_spool.errors import InvalidParameters
from alice_spool.fields import first_refusal
from alice_spool.hires import HiresFix, hires_model, parse_hires
from alice_spool.spec import (
    BUILTIN_DEFAULTS,
    GenerationRequest,
    JobRequest,
    parse_jsonl,
    parse_request,
    parse_spec,
    request_model,
    spec_model,
)

IMAGE = "sha256:" + "ab" * 32


@dataclass(frozen=True)
class Configured:
    default_model: str = "tiny"
    default_steps: int = 12
    default_guidance_scale: float = 4.0
    default_scheduler: str = "euler_a"
    max_steps: int = 50
    max_pixels: int = 512 * 512
    max_n: int = 4
    max_loras: int = 2


class SettingsModel(BaseModel, frozen=True):  # as the configuration's section is
    default_model: str = "tiny"
    default_steps: int = 12
    default_guidance_scale: float = 4.0
    default_scheduler: str = "euler_a"
    max_steps: int = 50
    max_pixels: int = 512 * 512
    max_n: int = 4
    max_loras: int = 2
    max_queue: int = 10


def refusal(body: Any, defaults: Any = BUILTIN_DEFAULTS) -> tuple[str | None, str]:
    with pytest.raises(InvalidParameters) as info:
        parse_request(body, defaults)
    assert type(info.value) is InvalidParameters
    return info.value.field, info.value.message


# -- one model per configuration ------------------------------------------------------------


def test_the_built_in_limits_are_the_declared_models_own() -> None:
    assert spec_model() is GenerationRequest and request_model() is JobRequest
    assert spec_model(BUILTIN_DEFAULTS) is GenerationRequest
    assert request_model(replace(BUILTIN_DEFAULTS)) is JobRequest  # equal settings


def test_a_configurations_model_is_made_once_and_carries_its_limits() -> None:
    model = request_model(Configured())
    assert request_model(Configured()) is model  # another object, the same settings
    assert request_model(SettingsModel()) is model  # whatever holds them
    assert issubclass(model, JobRequest) and spec_model(Configured()) is not model
    assert list(model.model_fields) == list(JobRequest.model_fields)  # the same order
    assert model.settings.max_steps == 50 and GenerationRequest.settings.max_steps == 150
    assert refusal({"prompt": "x", "steps": 51}, Configured()) == (
        "steps",
        "steps must be between 1 and 50, got 51",
    )
    assert parse_request({"prompt": "x", "steps": 51}).spec.steps == 51  # built-in: 150
    assert refusal({"prompt": "x", "num_images": 5}, SettingsModel())[0] == "num_images"
    assert refusal({"prompt": "x", "hires": {"steps": 51}}, Configured())[0] == "hires.steps"
    assert hires_model(50) is hires_model(50) and hires_model(150) is not hires_model(50)


def test_the_defaults_are_the_configurations() -> None:
    spec = parse_spec({"prompt": "x"}, Configured())
    assert (spec.model, spec.steps, spec.guidance_scale, spec.scheduler) == (
        "sd/tiny",
        12,
        4.0,
        "euler_a",
    )
    assert spec.left_to_model == ("steps", "guidance_scale", "scheduler")
    assert parse_spec({"prompt": "x", "model": " "}, Configured()).model == "sd/tiny"


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ([], None, "a request must be a JSON object, got a list"),
        ({"prompt": "x", "stpes": 2}, "stpes", "unknown field 'stpes' (did you mean 'steps'?)"),
        ({"prompt": "x", "idd": "k"}, "idd", "unknown field 'idd' (did you mean 'id'?)"),
        ({"steps": 5}, "prompt", "prompt is required"),
        ({"prompt": " "}, "prompt", "prompt must not be empty"),
        ({"prompt": 5}, "prompt", "prompt must be a string, got a number"),
        ({"prompt": "x", "n": 2, "num_images": 2}, "num_images", "give either 'n' or "
         "'num_images', not both"),
        ({"prompt": "x", "num_images": 2, "n": 2}, "n", "give either 'num_images' or 'n', "
         "not both"),
        ({"prompt": "x", "steps": 20.5}, "steps", "steps must be a whole number, got 20.5"),
        ({"prompt": "x", "steps": "20"}, "steps", "steps must be an integer, got a string"),
        ({"prompt": "x", "seed": -2}, "seed", "seed must be between -1 and 4294967295, got -2"),
        ({"prompt": "x", "guidance_scale": 31}, "guidance_scale", "guidance_scale must be "
         "between 0 and 30, got 31.0"),
        ({"prompt": "x", "width": 513}, "width", "width must be a multiple of 8, got 513"),
        ({"prompt": "x", "size": "512x512", "width": 512}, "size", "give either size or width "
         "and height, not both"),
        ({"prompt": "x", "loras": [7]}, "loras", "loras[0] must be an object with a name and "
         "a scale"),
        ({"prompt": "x", "loras": ["a"], "lora_paths": ["b"]}, "lora_paths", "give either "
         "loras or lora_paths, not both"),
        ({"prompt": "x <lora:a>", "loras": ["a"]}, "prompt", "lora/a is given more than once"),
        ({"prompt": "x", "mask_image": IMAGE}, "mask_image", "mask_image needs an init_image"),
        ({"prompt": "x", "init_image": "x"}, "init_image", "init_image is not taken here (no "
         "image inputs)"),
        ({"prompt": "x", "strength": 0}, "strength", "strength must be more than 0 and at most "
         "1, got 0"),
        ({"prompt": "x", "hires": {"hr_scale": 2}}, "hires.hr_scale", "unknown field "
         "'hires.hr_scale'; hires takes scale, width, height, upscaler, steps, strength, "
         "scheduler, prompt, negative_prompt"),
        ({"prompt": "x", "hires": {"scale": 2, "width": 1024}}, "hires.scale", "give either "
         "hires.scale or hires.width/height, not both"),
        ({"prompt": "x", "hires": "2x", "init_image": IMAGE}, "hires", "hires is for txt2img, "
         "not with an init_image"),
        ({"prompt": "x", "id": " "}, "id", "id must not be empty"),
    ],
)  # fmt: skip
def test_a_refusal_names_its_field_in_the_parsers_words(
    body: Any, field: str | None, message: str
) -> None:
    assert refusal(body) == (field, message)


def test_the_first_field_in_order_is_the_one_reported() -> None:
    """A request with several faults: the first field in the order they are checked
    (the model's field order) is reported, the rules between fields after them."""
    body = {"n": 0, "steps": 0, "prompt": "x", "width": 7}
    assert refusal(body)[0] == "width"  # width, then steps, then n
    assert refusal({"prompt": "x", "mask_image": IMAGE, "steps": 0})[0] == "steps"


def test_the_model_on_its_own_raises_pydantics_error_carrying_the_refusal() -> None:
    with pytest.raises(ValidationError) as info:
        JobRequest.model_validate({"prompt": "x", "steps": 0, "n": 0})
    assert [e["loc"] for e in info.value.errors()] == [("steps",), ("n",)]  # every field's
    first = first_refusal(info.value)
    assert (first.field, first.message) == ("steps", "steps must be between 1 and 150, got 0")
    with pytest.raises(ValidationError) as whole:
        JobRequest.model_validate({"prompt": "x", "bogus": 1})
    assert first_refusal(whole.value).field == "bogus"


def test_hires_refusals_come_from_its_own_model() -> None:
    with pytest.raises(InvalidParameters) as info:
        parse_hires({"steps": 30, "strength": 0.01})
    assert info.value.field == "hires.strength"
    assert "hires.strength must be 0 (the upscale alone) or from 0.151 to 1" in info.value.message
    with pytest.raises(InvalidParameters) as shown:
        parse_hires({"upscaler": "ESRGAN"})
    assert shown.value.message.startswith("hires.upscaler 'ESRGAN' is not known; choose one of:")
    assert parse_hires({"upscaler": "latent (NEAREST)", "prompt": ""}) == HiresFix(
        upscaler="Latent (nearest)"
    )


# -- the validated request -------------------------------------------------------------------


def test_a_validated_request_is_normalised() -> None:
    request = JobRequest.model_validate(
        {
            "prompt": "a fox <lora:b:0.5>",
            "lora_paths": ["/l/a.safetensors"],
            "lora_scales": [2, 3],
            "size": "768x512",
            "init_image": IMAGE,
            "seed": -1.0,
            "id": " k ",
        }
    )
    assert request.prompt == "a fox" and request.loras == (("lora/a", 2.0), ("lora/b", 0.5))
    assert (request.lora_paths, request.lora_scales, request.size) == (None, None, None)
    assert (request.width, request.height, request.strength) == (768, 512, 0.75)
    assert request.seed == -1 and request.id == "k"
    assert JobRequest.model_validate({"prompt": "x", "strength": 0.5}).strength is None


def test_a_jsonl_batch_names_the_bad_line() -> None:
    text = '{"prompt": "a"}\n\n{"prompt": "b", "id": "k"}\n{"prompt": "c", "steps": 0}\n'
    with pytest.raises(InvalidParameters) as info:
        parse_jsonl(text, "batch.jsonl")
    assert info.value.message == "batch.jsonl line 4: steps must be between 1 and 150, got 0"
    assert (info.value.field, info.value.details["line"]) == ("steps", 4)
    requests = parse_jsonl(text.rsplit("\n", 2)[0], "batch.jsonl", Configured())
    assert [r.idempotency_key for r in requests] == [None, "k"]
    assert [r.spec.steps for r in requests] == [12, 12]
