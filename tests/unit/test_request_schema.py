"""The request's JSON schema (spec.request_json_schema, what /openapi.json shows): made
from the same model that validates, with the configured limits, in the flat shape the
web form reads, and agreeing with the parser on what is taken and what is refused."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from typing import Any

import pytest

from alice_spool.errors import InvalidParameters
from alice_spool.hires import UPSCALERS, min_strength
from alice_spool.spec import (
    BUILTIN_DEFAULTS,
    SCHEDULERS,
    GenerationDefaults,
    parse_request,
    request_json_schema,
)

jsonschema_rs = pytest.importorskip("jsonschema_rs")


@dataclass(frozen=True)
class Configured:
    default_model: str = "tiny"
    default_steps: int = 12
    default_guidance_scale: float = 4.0
    default_scheduler: str = "euler_a"
    max_steps: int = 50
    max_pixels: int = 1024 * 1024
    max_n: int = 4
    max_loras: int = 2


def keys_anywhere(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys_anywhere(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys_anywhere(v)}
    return set()


def test_the_schema_is_a_flat_object_of_the_requests_fields() -> None:
    schema = request_json_schema()
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["required"] == ["prompt"]
    fields = schema["properties"]
    assert {"prompt", "negative_prompt", "model", "width", "height", "size", "steps"} <= set(fields)
    assert {"hires", "loras", "lora_paths", "lora_scales", "vae", "true_cfg_scale", "id"} <= set(
        fields
    )
    # input images come in each door's own forms (inputs.py), which this schema leaves out
    assert "init_image" not in fields and "mask_image" not in fields
    # embeddable anywhere in /openapi.json: no references, no titles, no code's docstrings
    assert not keys_anywhere(schema) & {"$ref", "$defs", "title"}
    assert "description" not in schema and "description" not in fields["hires"]["anyOf"][0]
    json.dumps(schema)  # plain JSON


def test_the_web_forms_fields_read_as_before() -> None:
    """web/app.js reads properties.<name>.minimum/maximum/default/multipleOf/enum/maxLength."""
    fields = request_json_schema()["properties"]
    assert fields["steps"] == {
        "type": ["integer", "null"],
        "minimum": 1,
        "maximum": 150,
        "default": 25,
        "description": fields["steps"]["description"],
    }
    assert fields["width"]["multipleOf"] == 8 and fields["width"]["minimum"] == 64
    assert fields["guidance_scale"]["default"] == 7.5 and fields["guidance_scale"]["maximum"] == 30
    # the form's options (it leaves null out), and null: the server's default
    assert fields["scheduler"]["enum"] == [*SCHEDULERS, None]
    assert fields["scheduler"]["default"] == "dpm++_sde_karras"
    assert fields["prompt"]["maxLength"] == 4000 and fields["prompt"]["type"] == "string"
    assert fields["seed"]["minimum"] == -1  # -1: random, as the server takes it
    assert fields["n"]["default"] == 1 and fields["priority"]["default"] == 0
    assert fields["true_cfg_scale"]["type"] == ["number", "null"]


def test_the_limits_and_defaults_are_the_configurations() -> None:
    schema = request_json_schema(Configured())
    fields = schema["properties"]
    assert (fields["steps"]["maximum"], fields["steps"]["default"]) == (50, 12)
    assert fields["n"]["maximum"] == 4 and fields["num_images"]["maximum"] == 4
    assert fields["loras"]["maxItems"] == 2 and fields["lora_paths"]["maxItems"] == 2
    assert fields["guidance_scale"]["default"] == 4.0
    assert fields["scheduler"]["default"] == "euler_a"
    settings = fields["hires"]["anyOf"][0]["properties"]
    assert settings["steps"]["maximum"] == 50
    assert settings["strength"]["anyOf"][1]["minimum"] == min_strength(50)
    assert settings["upscaler"]["enum"] == [u.name for u in UPSCALERS] + [None]
    # and the built-in ones, untouched by another configuration's model
    assert request_json_schema(BUILTIN_DEFAULTS)["properties"]["steps"]["maximum"] == 150


# -- the schema and the parser agree ---------------------------------------------------------

# Values of each field, good and bad, in the spellings the schema names (the parser also
# takes others: `Euler a`, ` sd/x `, `512 X 512`, any case of an upscaler).
VALUES: dict[str, list[Any]] = {
    "prompt": ["a cat", " a cat ", "", "   ", 5, None, "x" * 4001, "a\x00b"],
    "negative_prompt": ["", None, "blurry", 3, "y" * 4001, "\x00"],
    "model": ["tiny", "sd/tiny", "", None, "../x", 5, "sd/", "sd/.x", "a/b"],
    "width": [512, 512.0, 512.5, 56, 2056, 513, "512", True, None, 2048, 64],
    "height": [768, None, 100, 2048.0, False],
    "size": ["512x512", "513x512", "big", None, 5, "2048x2048"],
    "steps": [1, 20, 20.0, 20.5, 0, 151, 50, 51, "25", None, True, 150],
    "guidance_scale": [0, 7, 7.5, 30, 30.01, -1, False, None, "7"],
    "seed": [0, -1, -1.0, -2, 2**32, 2**32 - 1, "42", None, 1.5],
    "scheduler": ["euler_a", "dpm++_2m_karras", "eulr_a", "", 7],  # (null: see below)
    "n": [1, 4, 5, 0, 17, 2.0, None, "2"],
    "num_images": [1, 16, 17, None],
    "priority": [0, -100, 100, 101, 5.5, None],
    "loras": [["a"], [{"name": "c", "scale": 2}], "a", [7], [{"name": "a", "weight": 1}],
              [{"name": "a", "scale": 4.5}], None, [], [{"name": "../a"}], ["a", "b", "c"],
              ["a", "b", "c", "d", "e"], [{"name": "lora/d", "scale": None}]],
    "lora_paths": [["C:\\l\\e.safetensors"], ["/x/f"], "a", [5], None, [""], ["g", "h", "i"]],
    "lora_scales": [[0.25], 1, ["x"], None, [None], [9]],
    "strength": [0.5, 1, 0, -0.1, 1.5, None, "0.5"],
    "hires": ["2x", "1.5x", "1024x768", True, False, None, 2, 0.5, [2], {"scale": 1.5},
              {"steps": 10, "strength": 0.5}, {"scale": 2, "width": 1024},
              {"width": 0, "height": 768}, {"scale": 2, "width": 0},
              {"strength": 0.01, "steps": 30}, {"denoise": 1}, {"upscaler": "Latent (bicubic)"},
              {"upscaler": "x"}, {"scheduler": "warp"}, {"scheduler": None}, {"prompt": 7},
              " 2x", "0x0", "4.5x", {"strength": 0.1}, {"strength": 0}, {"steps": 151},
              {"steps": 50, "strength": 0.2}, {"upscaler": None}, {"width": 32}],
    "clip_skip": [1, 2, 12, 13, 0, None, 2.0, "2"],
    "vae": ["Automatic", "None", "vae/x", "x.safetensors", "../x", None, 5, ""],
    "true_cfg_scale": [1, 3.5, 0.5, 31, None, "2"],
    "max_sequence_length": [1, 256, 512, 513, 0, None],
    "id": ["k", "", "  ", None, 5, "k" * 256],
    "bogus": [1],
}  # fmt: skip


def bodies(count: int, seed: int) -> list[Any]:
    """Every field's every value alone, then `count` random mixes of a few fields."""
    found: list[Any] = [{"prompt": "a cat", name: value}
                        for name, values in VALUES.items() for value in values]  # fmt: skip
    found[0:0] = [{}, [], "x", {"steps": 5}]
    rng = random.Random(seed)
    for _ in range(count):
        body = {name: rng.choice(VALUES[name]) for name in rng.sample(list(VALUES), 3)}
        body.setdefault("prompt", "a fox")
        found.append(body)
    return found


def taken(body: Any, defaults: GenerationDefaults) -> bool:
    try:
        parse_request(body, defaults)
    except InvalidParameters:
        return False
    return True


@pytest.mark.parametrize("defaults", [BUILTIN_DEFAULTS, Configured()], ids=["built-in", "set"])
def test_what_the_schema_takes_the_server_takes_and_what_it_refuses_the_server_refuses(
    defaults: GenerationDefaults,
) -> None:
    validator = jsonschema_rs.validator_for(request_json_schema(defaults))
    disagree = []
    for body in bodies(1500, seed=7):
        if isinstance(defaults, Configured) and isinstance(body, dict):
            sides = [body.get(name) for name in ("width", "height")]
            if body.get("size") or all(isinstance(side, int | float) for side in sides):
                continue  # width x height over max_pixels: more than a schema can say
        if validator.is_valid(body) != taken(body, defaults):
            disagree.append(body)
    assert not disagree, disagree[:5]


def test_what_the_schema_cannot_say() -> None:
    """Rules between values the schema leaves to the server (a 400 naming the field):
    a prompt's LoRA tags, one LoRA named twice, and the scheduler's other spellings,
    which the form's list leaves out."""
    validator = jsonschema_rs.validator_for(request_json_schema())
    for body in (
        {"prompt": "x <lora:a:big>"},
        {"prompt": "<lora:a>"},
        {"prompt": "x", "loras": ["a", "lora/a"]},
        {"prompt": "x <lora:a> <lora:b> <lora:c>", "loras": ["d", "e"]},
    ):
        assert validator.is_valid(body) and not taken(body, BUILTIN_DEFAULTS), body
    body = {"prompt": "x", "scheduler": "Euler a"}
    assert taken(body, BUILTIN_DEFAULTS) and not validator.is_valid(body), body
    body = {"prompt": "x", "scheduler": None}  # the default, as the schema says too
    assert taken(body, BUILTIN_DEFAULTS) and validator.is_valid(body), body


def test_every_combination_of_the_instead_of_rules() -> None:
    validator = jsonschema_rs.validator_for(request_json_schema())
    pairs = [("size", "512x512"), ("width", 512), ("height", 512), ("n", 2),
             ("num_images", 2), ("loras", ["a"]), ("lora_paths", ["b"])]  # fmt: skip
    for count in range(4):
        for chosen in itertools.combinations(pairs, count):
            for nulls in itertools.product((False, True), repeat=count):
                body = {"prompt": "x"}
                body.update(
                    {k: None if null else v for (k, v), null in zip(chosen, nulls, strict=True)}
                )
                assert validator.is_valid(body) == taken(body, BUILTIN_DEFAULTS), body
