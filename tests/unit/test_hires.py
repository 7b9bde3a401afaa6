"""Hires fix and clip skip as request fields: parsing, shorthands, limits, the target
size in A1111's three ways, the second pass's steps, and plain jobs' fingerprints and
batch keys unchanged."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest

from alice_spool.errors import InvalidParameters
from alice_spool.hires import (
    UPSCALERS,
    HiresFix,
    check_hires,
    cover_size,
    img2img_steps,
    parse_hires,
    second_pass_steps,
    target_size,
)
from alice_spool.spec import JobSpec, denoising_steps, parse_spec


def parse(**fields: Any) -> JobSpec:
    return parse_spec({"prompt": "a cat", **fields})


def refused(field: str, value: Any, **fields: Any) -> str:
    with pytest.raises(InvalidParameters) as info:
        parse(hires=value, **fields)
    assert info.value.field == field, info.value.message
    assert field in info.value.message
    return info.value.message


def test_an_object_takes_every_setting_and_defaults_the_rest() -> None:
    hires = parse_hires(
        {
            "scale": 1.5,
            "upscaler": "latent (BICUBIC antialiased)",
            "steps": 10,
            "strength": 0.55,
            "scheduler": "Euler a",
            "prompt": "a cat, detailed",
            "negative_prompt": "blurry",
        }
    )
    assert hires == HiresFix(
        scale=1.5,
        upscaler="Latent (bicubic antialiased)",  # A1111's spelling, whatever the case given
        steps=10,
        strength=0.55,
        scheduler="euler_a",
        prompt="a cat, detailed",
        negative_prompt="blurry",
    )
    assert parse_hires({}) == HiresFix(scale=2.0, upscaler="Latent", steps=0, strength=0.7)
    # A1111's "" prompts and 0 sides mean "the same" / "from the other side"
    assert parse_hires({"prompt": "", "width": 0, "height": 768}) == HiresFix(
        scale=None, height=768
    )
    assert parse_hires(None) is None and parse_hires(False) is None
    assert parse_hires(True) == HiresFix()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2x", HiresFix(scale=2.0)),
        ("1.5x", HiresFix(scale=1.5)),
        ("4X", HiresFix(scale=4.0)),
        ("1024x768", HiresFix(scale=None, width=1024, height=768)),
        ("1000\u00d7600", HiresFix(scale=None, width=1000, height=600)),
    ],
)
def test_shorthands(text: str, expected: HiresFix) -> None:
    assert parse_hires(text) == expected
    assert parse_hires(2) == HiresFix(scale=2.0)


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("2", "hires"),
        ("twice", "hires"),
        ([2], "hires"),
        ("0.5x", "hires"),
        ("4.5x", "hires"),
        ({"scale": 0.9}, "hires.scale"),
        ({"scale": "2"}, "hires.scale"),
        ({"scale": 2, "width": 1024}, "hires.scale"),
        ({"width": 32}, "hires.width"),
        ({"height": 4096}, "hires.height"),
        ("4096x512", "hires"),
        (" 2x", "hires"),
        ("0x0", "hires"),
        ({"upscaler": "ESRGAN_4x"}, "hires.upscaler"),
        ({"steps": -1}, "hires.steps"),
        ({"steps": 151}, "hires.steps"),
        ({"strength": -0.1}, "hires.strength"),
        ({"strength": 1.5}, "hires.strength"),
        ({"scheduler": "warp drive"}, "hires.scheduler"),
        ({"prompt": 7}, "hires.prompt"),
        ({"denoise": 0.5}, "hires.denoise"),
    ],
)
def test_refusals_name_the_field(value: Any, field: str) -> None:
    refused(field, value)


def test_the_unknown_key_is_named_with_the_known_ones() -> None:
    message = refused("hires.hr_scale", {"hr_scale": 2})
    assert "'hires.hr_scale'" in message and "upscaler" in message


def test_the_target_must_fit_the_size_limits_and_the_scheduler() -> None:
    # The target is checked when the job runs (check_hires, with the first pass's size):
    # the door takes what the request schema says it takes.
    for hires, width, height in [("4x", 1024, 1024), ({"height": 2048}, 512, 128),
                                 ({"width": 64}, 512, 64)]:  # fmt: skip
        parsed = parse(hires=hires, width=width, height=height).hires
        assert parsed is not None
        with pytest.raises(InvalidParameters) as too_big:
            check_hires(parsed, width, height, 20)
        assert too_big.value.field == "hires"
    refused("hires.strength", {"steps": 30, "strength": 0.01})  # 3000 scheduler steps
    refused("hires.strength", {"strength": 5e-324})  # no overflow, a refusal
    # (every second pass a request may ask fits: 150 steps at 0.151 need 994)
    assert parse(hires={"steps": 150, "strength": 0.151}).hires is not None
    refused("hires.strength", {"steps": 10, "strength": 0.15})  # under the least, however few
    assert parse(hires="4x", width=512, height=512).hires is not None  # 2048 a side: fits
    assert parse(hires="4x").hires is not None  # the native size: checked when it runs


def test_scale_1_is_a_second_pass_at_the_same_size_and_strength_0_the_upscale_alone() -> None:
    same = parse_hires("1x")
    assert same is not None and target_size(same, 512, 768) == (512, 768)
    assert second_pass_steps(same, 20) == 20
    alone = parse_hires({"strength": 0, "steps": 30})
    assert alone is not None and second_pass_steps(alone, 20) == 0
    assert parse(hires={"strength": 0, "steps": 150}).hires == alone.__class__(
        strength=0.0, steps=150
    )  # no scheduler steps to run out of


def test_hires_is_for_txt2img_only() -> None:
    image = "sha256:" + "0" * 64
    message = refused("hires", "2x", init_image=image)
    assert "init_image" in message
    assert parse(hires="2x").mode == "hires" and parse().mode == "txt2img"


def test_target_size_by_scale_rounds_down_to_the_latent_cell() -> None:
    assert target_size(HiresFix(scale=2.0), 512, 768) == (1024, 1536)
    assert target_size(HiresFix(scale=1.5), 520, 512) == (776, 768)  # 780 -> 776
    assert target_size(HiresFix(scale=1.3), 512, 512, multiple=64) == (640, 640)


def test_target_size_from_one_side_keeps_the_first_pass_aspect() -> None:
    assert target_size(HiresFix(scale=None, width=1024), 512, 768) == (1024, 1536)
    assert target_size(HiresFix(scale=None, height=1000), 768, 512) == (1496, 1000)  # 1500
    assert target_size(HiresFix(scale=None, width=1000), 512, 512) == (1000, 1000)


def test_both_sides_in_another_aspect_cover_then_crop_the_middle() -> None:
    wide = HiresFix(scale=None, width=1024, height=512)
    assert cover_size(wide, 512, 512) == (1024, 1024)  # covers 1024x512 in the first's aspect
    assert target_size(wide, 512, 512) == (1024, 512)
    tall = HiresFix(scale=None, width=600, height=1004)
    assert cover_size(tall, 512, 768) == (664, 1000)  # 669x1004, on the 8-cell
    assert target_size(tall, 512, 768) == (600, 1000)


def test_the_second_pass_runs_its_own_steps_or_the_first_pass_s() -> None:
    assert second_pass_steps(HiresFix(steps=0), 20) == 20
    assert second_pass_steps(HiresFix(steps=7), 20) == 7
    for run, strength in [(10, 0.7), (20, 0.75), (3, 0.33), (150, 1.0), (1, 0.01), (7, 0.999)]:
        total = img2img_steps(run, strength)
        assert denoising_steps(total, strength) == run  # diffusers runs exactly `run`
    assert img2img_steps(10, 0.7) == 15  # A1111's int(10 / 0.7) = 14 would run 9


def test_upscalers_are_a1111_s_latent_modes_then_image_upscalers() -> None:
    names = [u.name for u in UPSCALERS if u.latent]
    assert names[0] == "Latent" and "Latent (nearest-exact)" in names and len(names) == 6
    assert [u.name for u in UPSCALERS if not u.latent] == ["None", "Lanczos", "Nearest"]
    assert all(u.mode for u in UPSCALERS if u.latent)


def test_clip_skip_1_is_no_skip_and_12_the_most() -> None:
    assert parse(clip_skip=1).clip_skip is None
    assert parse(clip_skip=2).clip_skip == 2
    with pytest.raises(InvalidParameters) as info:
        parse(clip_skip=13)
    assert info.value.field == "clip_skip"


# Computed before hires and clip skip existed: plain jobs keep their identity.
PLAIN = {
    "prompt": "a lighthouse",
    "steps": 20,
    "seed": 7,
    "width": 512,
    "height": 512,
    "model": "sd/tiny",
    "scheduler": "euler",
    "guidance_scale": 7.0,
}
PLAIN_FINGERPRINT = "08adae4942be62544dbf2498235315c039798eb2442846a72fde26b98fd2091c"
PLAIN_BATCH_DIGEST = "f006b74b9f3ff526e8fd1254132f879a"


def test_plain_fingerprints_and_batch_digests_are_unchanged() -> None:
    plain = parse_spec(PLAIN)
    assert plain.fingerprint() == PLAIN_FINGERPRINT
    assert plain.batch_digest() == PLAIN_BATCH_DIGEST
    assert parse_spec({**PLAIN, "clip_skip": 1}).fingerprint() == PLAIN_FINGERPRINT
    assert parse_spec({**PLAIN, "hires": None}).batch_digest() == PLAIN_BATCH_DIGEST


def test_hires_and_clip_skip_count_in_fingerprints_and_batch_keys() -> None:
    plain = parse_spec(PLAIN)
    hires = parse_spec({**PLAIN, "hires": "2x"})
    other = parse_spec({**PLAIN, "hires": {"scale": 2, "steps": 5}})
    skip = parse_spec({**PLAIN, "clip_skip": 2})
    prints = {s.fingerprint() for s in (plain, hires, other, skip)}
    digests = {s.batch_digest() for s in (plain, hires, other, skip)}
    assert len(prints) == 4 and len(digests) == 4
    # prompts (the hires ones too) may differ within a batch, as the first pass's may
    reworded = parse_spec({**PLAIN, "prompt": "a boat", "hires": {"prompt": "a boat, sharp"}})
    assert reworded.batch_key() == hires.batch_key()
    assert parse_spec({**PLAIN, "hires": {"scale": 2.0}}).batch_key() == hires.batch_key()


# {**PLAIN, "hires": {"width": 1024, "steps": 5}}: hashed as
# ("hires", (("scale", None), ("steps", 5), ("width", 1024))), the settings off their defaults
HIRES_FINGERPRINT = "9035ad5966c7ea78baa411d4b3dfaf9ca998ed026d974fc1b9b29c9969165368"


def test_a_hires_fingerprint_holds_its_settings_off_their_defaults() -> None:
    hires = parse_spec({**PLAIN, "hires": {"width": 1024, "steps": 5}})
    assert hires.fingerprint() == HIRES_FINGERPRINT
    short = parse_spec({**PLAIN, "hires": {"scale": 2}})
    spelled = parse_spec({**PLAIN, "hires": {"scale": 2, "steps": 0, "upscaler": "Latent"}})
    assert short.fingerprint() == spelled.fingerprint()

    # A field added to HiresFix later, with a default, keeps the stored jobs' fingerprints.
    @dataclass(frozen=True)
    class Later(HiresFix):
        sharpen: float = 0.0

    later = replace(hires, hires=Later(scale=None, width=1024, steps=5))
    assert later.fingerprint() == HIRES_FINGERPRINT
    assert replace(later, hires=Later(sharpen=0.5)).fingerprint() != short.fingerprint()


def test_a_stored_spec_comes_back_whole() -> None:
    spec = parse_spec({**PLAIN, "hires": {"width": 1024, "upscaler": "Nearest"}, "clip_skip": 3})
    data = spec.to_dict()
    assert data["hires"]["upscaler"] == "Nearest" and data["clip_skip"] == 3
    again = JobSpec.from_dict(data)
    assert again == spec and again.fingerprint() == spec.fingerprint()
    older = {
        k: v for k, v in parse_spec(PLAIN).to_dict().items() if k not in ("hires", "clip_skip")
    }
    assert JobSpec.from_dict(older) == parse_spec(PLAIN)  # records from before
