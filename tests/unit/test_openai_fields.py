"""OpenAI's image-API fields (api/dialects/openai/fields.py), its model names (aliases.py)
and the answer's image formats (api/edge/formats.py): every value OpenAI documents taken
or refused with the field named, the quality table, the infotext kept in each format; the
chat's image parameters; and the request bodies' schemas, which take what the fields take
and refuse what they refuse."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image, PngImagePlugin

from alice_spool import aliases
from alice_spool.api.dialects.openai import fields as openai_fields
from alice_spool.api.edge import formats as image_formats
from alice_spool.config import Settings
from alice_spool.errors import InvalidParameters
from alice_spool.spec import BUILTIN_DEFAULTS

jsonschema_rs = pytest.importorskip("jsonschema_rs")

# -- model names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("dall-e-2", "dall-e"),
        ("DALL-E-3", "dall-e"),
        ("gpt-image-1", "gpt-image"),
        ("gpt-image-1-mini", "gpt-image"),
        ("gpt-image-2.5-flare-2026-09-08", "gpt-image"),
        ("chatgpt-image-latest", "gpt-image"),
        ("dall-e-4", None),
        ("gpt-4o", None),
        ("sd/tiny", None),
        ("gpt-image-", None),
    ],
)
def test_openai_kind_knows_openais_image_model_names(name: str, kind: str | None) -> None:
    assert aliases.openai_kind(name) == kind


def test_a_configured_alias_wins_and_openai_names_mean_the_default_model() -> None:
    configured = {"dall-e-3": "sd/other", "House": "sd/tiny"}
    assert aliases.resolve("dall-e-3", configured) == aliases.Resolved(
        "sd/other", "dall-e-3", "dall-e"
    )
    assert aliases.resolve("gpt-image-1", configured) == aliases.Resolved(
        None, "gpt-image-1", "gpt-image"
    )
    assert aliases.resolve("house", configured) == aliases.Resolved("sd/tiny", "house", None)
    assert aliases.resolve("sd/tiny", configured) == aliases.Resolved("sd/tiny", None, None)
    assert aliases.resolve("  ", configured) == aliases.Resolved(None, None, None)
    long = "gpt-image-" + "x" * 80  # not a name OpenAI gives: a model name like any other
    assert aliases.resolve(long, configured) == aliases.Resolved(long, None, None)
    assert aliases.resolve(None, configured) == aliases.Resolved(None, None, None)


# -- the fields -----------------------------------------------------------------------------


def test_every_documented_value_is_taken_and_the_recorded_ones_are_kept() -> None:
    body = {
        "prompt": "a fox",
        "steps": 3,
        "quality": "hd",
        "style": "vivid",
        "moderation": "low",
        "background": "opaque",
        "output_format": "webp",
        "output_compression": 40,
        "user": "user-17",
        "safety_identifier": "hash-17",
        "input_fidelity": "high",
        "complexity": "low",
        "response_format": "b64_json",
        "stream": True,
        "partial_images": 2,
    }
    fields, rest = openai_fields.take(body)
    assert rest == {"prompt": "a fox", "steps": 3}
    assert (fields.output_format, fields.output_compression, fields.suffix) == ("webp", 40, "webp")
    assert (fields.quality, fields.background, fields.response_format) == (
        "hd",
        "opaque",
        "b64_json",
    )
    assert (fields.stream, fields.partial_images) == (True, 2)
    assert dict(fields.recorded) == {
        "quality": "hd",
        "style": "vivid",
        "moderation": "low",
        "background": "opaque",
        "output_format": "webp",
        "output_compression": 40,
        "user": "user-17",
        "safety_identifier": "hash-17",
        "input_fidelity": "high",
        "complexity": "low",
    }
    assert list(fields.recorded) == sorted(fields.recorded)


def test_nothing_given_is_png_at_full_quality_and_null_is_left_out() -> None:
    fields, rest = openai_fields.take({"prompt": "x", "quality": None, "user": None})
    assert fields == openai_fields.OpenAIFields()
    assert rest == {"prompt": "x"}
    jpg, _ = openai_fields.take({"output_format": "jpg"})
    assert jpg.suffix == "jpeg"


def test_numbers_and_flags_are_json_numbers_and_flags() -> None:
    """A JSON body's "55" is text, not a number (a form's fields arrive as the numbers
    they spell); digits of other scripts are refused, never a 500."""
    fields, _ = openai_fields.take({"output_compression": 55, "stream": True})
    assert (fields.output_compression, fields.stream) == (55, True)
    whole, _ = openai_fields.take({"output_compression": 55.0, "partial_images": 2.0})
    assert (whole.output_compression, whole.partial_images) == (55, 2)  # JSON's 55.0 is 55
    for name, value in [("output_compression", "55"), ("output_compression", "\u00b2"),
                        ("partial_images", "--5"), ("stream", "true")]:  # fmt: skip
        with pytest.raises(InvalidParameters) as refused:
            openai_fields.take({name: value})
        assert refused.value.details["field"] == name


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("quality", "ultra", "quality must be one of"),
        ("quality", 3, "quality must be one of"),
        ("style", "cartoon", "style must be one of"),
        ("moderation", "off", "moderation must be one of"),
        ("background", "green", "background must be one of"),
        ("input_fidelity", "medium", "input_fidelity must be one of"),
        ("complexity", "max", "complexity must be one of"),
        ("response_format", "gif", "response_format must be one of"),
        ("output_format", "bmp", "output_format must be one of"),
        ("output_format", "gif", "gif is not made here"),
        ("output_format", "svg", "svg is not made here"),
        ("output_compression", 101, "from 0 to 100"),
        ("output_compression", -1, "from 0 to 100"),
        ("output_compression", 50.5, "from 0 to 100"),
        ("output_compression", True, "from 0 to 100"),
        ("partial_images", 4, "from 0 to 3"),
        ("stream", "yes", "stream must be true or false"),
        ("user", "u" * 513, "the limit is 512"),
        ("user", 17, "must be a string"),
        ("safety_identifier", "a\x00b", "NUL"),
        ("user", "\ud800", "not valid Unicode"),
        ("frame_count", 9, "gif or svg"),
        ("frame_duration_ms", 200, "gif or svg"),
        ("svg", {"model": "x"}, "gif or svg"),
        ("markup", "x", "gif or svg"),
    ],
)
def test_a_value_openai_would_refuse_is_a_400_naming_the_field(
    field: str, value: Any, says: str
) -> None:
    with pytest.raises(InvalidParameters, match=says) as refused:
        openai_fields.take({"prompt": "x", field: value})
    assert refused.value.details["field"] == field


# -- quality --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quality", "steps"),
    [
        (None, None),
        ("auto", None),
        ("standard", None),
        ("low", 12),
        ("medium", 20),
        ("high", 30),
        ("hd", 40),
        ("xhigh", 40),
        ("max", 50),
    ],
)
def test_quality_maps_onto_the_sd_families_steps(quality: str | None, steps: int) -> None:
    """SD 1.x, 2.x and XL share one row (a model of no known family too); `auto`,
    `standard` and none leave the steps to the model (None)."""
    for family in ("sd1", "sd2", "sdxl", None):
        assert openai_fields.quality_steps(quality, family, None, 150) == steps


@pytest.mark.parametrize(
    ("quality", "flow", "schnell"),
    [("low", 14, 1), ("medium", 20, 2), ("high", 28, 4), ("hd", 40, 4), ("max", 50, 4),
     ("auto", None, None)],
)  # fmt: skip
def test_flow_families_have_rows_of_their_own(
    quality: str, flow: int | None, schnell: int | None
) -> None:
    assert openai_fields.quality_steps(quality, "sd3", None, 150) == flow
    assert openai_fields.quality_steps(quality, "flux", "dev", 150) == flow
    assert openai_fields.quality_steps(quality, "flux", "schnell", 150) == schnell
    assert openai_fields.quality_of(4, "flux", "schnell") == "max"
    assert openai_fields.quality_of(28, "flux", "dev") == "high"


def test_quality_never_asks_more_steps_than_the_server_allows() -> None:
    assert openai_fields.quality_steps("max", "sd1", None, 30) == 30


@pytest.mark.parametrize(
    ("steps", "quality"),
    [(1, "low"), (12, "low"), (19, "low"), (20, "medium"), (25, "medium"), (30, "high"),
     (40, "xhigh"), (50, "max"), (150, "max")],
)  # fmt: skip
def test_the_answer_says_the_highest_quality_its_steps_reached(steps: int, quality: str) -> None:
    assert openai_fields.quality_of(steps, "sd1") == quality


# -- formats --------------------------------------------------------------------------------


def _png(text: str = "a fox\nSteps: 3, Seed: 5") -> bytes:
    image = Image.new("RGB", (32, 24), (200, 40, 10))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    out = io.BytesIO()
    image.save(out, "PNG", pnginfo=info)
    return out.getvalue()


def _comment(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        raw = image.getexif().get_ifd(0x8769)[0x9286]
    assert raw.startswith(b"UNICODE\x00")
    return bytes(raw[8:]).decode("utf-16-be")


def test_png_is_the_file_as_written() -> None:
    png = _png()
    assert image_formats.convert(png, "png", 10) is png
    assert image_formats.infotext(png) == "a fox\nSteps: 3, Seed: 5"


@pytest.mark.parametrize(("kind", "pillow"), [("jpeg", "JPEG"), ("jpg", "JPEG"), ("webp", "WEBP")])
def test_jpeg_and_webp_keep_the_infotext_in_exif(kind: str, pillow: str) -> None:
    made = image_formats.convert(_png(), kind, 90)
    with Image.open(io.BytesIO(made)) as image:
        assert (image.format, image.size) == (pillow, (32, 24))
    assert _comment(made) == "a fox\nSteps: 3, Seed: 5"


def test_compression_is_the_encoders_quality() -> None:
    noisy = Image.effect_noise((128, 128), 80).convert("RGB")
    out = io.BytesIO()
    noisy.save(out, "PNG")
    small = image_formats.convert(out.getvalue(), "jpeg", 5)
    large = image_formats.convert(out.getvalue(), "jpeg", 100)
    assert len(small) * 3 < len(large)


# -- the chat's image parameters --------------------------------------------------------------


def test_each_parameter_object_is_checked_and_a_later_one_wins() -> None:
    """sam_config, samConfig, then metadata: a later object's field replaces an earlier
    one's and its other spellings; keys that are no request field are left alone."""
    body = {
        "sam_config": {"n": 2, "width": 64, "height": 96, "steps": 3, "loras": ["ink"]},
        "samConfig": {"num_images": 3, "size": "128x128", "lora_paths": ["a/grain.safetensors"]},
        "metadata": {"steps": 5, "user_id": "x", "prompt": 7},
    }
    merged = openai_fields.chat_parameters(body, BUILTIN_DEFAULTS)
    assert merged == {
        "num_images": 3,
        "size": "128x128",
        "lora_paths": ["a/grain.safetensors"],
        "steps": 5,
        "prompt": 7,  # the messages' text takes its place
    }
    assert openai_fields.chat_parameters({"metadata": None}, BUILTIN_DEFAULTS) == {}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"samConfig": {"steps": 0}, "metadata": {"steps": 7}}, "steps"),
        ({"sam_config": {"n": 1, "num_images": 2}}, "num_images"),
        ({"metadata": {"model": "a/b"}}, "model"),
        ({"metadata": [1]}, "metadata"),
    ],
)  # fmt: skip
def test_a_bad_parameter_is_refused_even_where_a_later_object_gives_another(
    body: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidParameters) as refused:
        openai_fields.chat_parameters(body, BUILTIN_DEFAULTS)
    assert refused.value.details["field"] == field


# -- the bodies' schemas ----------------------------------------------------------------------


def test_the_generations_schema_takes_what_the_door_takes() -> None:
    schema = openai_fields.generations_schema(Settings())
    valid = jsonschema_rs.validator_for(schema).is_valid
    assert valid({"prompt": "x", "model": " dall-e-3 ", "size": "auto", "width": 64})
    assert valid({"prompt": "x", "quality": "hd", "output_format": "jpg", "user": None})
    assert valid({"prompt": "x", "model": "", "background": "auto", "partial_images": 3})
    for refused in (
        {"prompt": "x", "size": "512x512", "width": 64},  # size and width: one of them
        {"prompt": "x", "background": "transparent"},
        {"prompt": "x", "output_format": "gif"},
        {"prompt": "x", "model": "a/b"},
        {"prompt": "x", "frame_count": 2},
        {"prompt": "x", "id": "a"},
        {"size": "auto"},
    ):
        assert not valid(refused), refused


def test_the_forms_schemas_say_which_files_and_fields_each_takes() -> None:
    edits = openai_fields.edits_form(Settings())
    variations = openai_fields.variations_form(Settings())
    assert {"image", "image[]", "mask", "prompt"} <= set(edits["properties"])
    assert edits["properties"]["image"]["format"] == "binary"
    assert not {"mask", "prompt", "init_image"} & set(variations["properties"])
    assert variations["properties"]["strength"]["default"] == openai_fields.VARIATION_STRENGTH
    valid = jsonschema_rs.validator_for(variations).is_valid
    assert valid({"image": "…", "n": 2, "size": "auto", "stream": False})
    assert not valid({"image": "…", "stream": True})  # a variation is not streamed
    assert not valid({"image": "…", "image[]": "…"})  # one image
    assert not valid({"n": 2})
