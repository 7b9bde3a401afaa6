"""The sampler and schedule-type names: canonical names, A1111's names as A1111 1.10 runs
them, and the lists the A1111 API answers with."""

from __future__ import annotations

import pytest

from alice_spool import samplers
from alice_spool.errors import InvalidParameters
from alice_spool.samplers import (
    NAMES,
    a1111_samplers,
    a1111_schedules,
    from_a1111,
    normalise,
    parse,
    to_a1111,
)

LEGACY = (
    *("euler", "euler_a", "ddim", "pndm", "lms", "heun"),
    *("dpm++_2m", "dpm++_2m_karras", "dpm++_sde", "dpm++_sde_karras", "unipc"),
)


def test_the_lists_form_a_full_product() -> None:
    sampler_keys = [s.key for s in samplers.SAMPLERS]
    schedule_keys = [s["name"] for s in a1111_schedules() if s["name"] != "automatic"]
    assert len(NAMES) == len(set(NAMES)) == len(sampler_keys) * (1 + len(schedule_keys))
    assert set(NAMES) == {
        *sampler_keys,
        *(f"{sampler}_{schedule}" for sampler in sampler_keys for schedule in schedule_keys),
    }
    for sampler in a1111_samplers():
        for schedule in a1111_schedules():
            assert from_a1111(sampler["name"], schedule["label"]) in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_canonical_name_round_trips(name: str) -> None:
    assert normalise(name) == name
    key, schedule = parse(name)
    assert name == (key if schedule is None else f"{key}_{schedule}")
    sampler, label = to_a1111(name)
    expected = name if schedule is not None else from_a1111(sampler, None)
    assert from_a1111(sampler, label) == expected
    if schedule is not None:  # A1111's spelling of it reads back as the same name
        assert normalise(f"{sampler} {label}") == name


def test_the_longest_sampler_key_wins() -> None:
    assert parse("dpm++_2m_sde") == ("dpm++_2m_sde", None)
    assert parse("dpm++_2m_sde_heun_karras") == ("dpm++_2m_sde_heun", "karras")
    assert parse("dpm2_a_beta") == ("dpm2_a", "beta")
    assert parse("euler_a_sgm_uniform") == ("euler_a", "sgm_uniform")
    assert parse("ddim_ddim") == ("ddim", "ddim")
    with pytest.raises(KeyError):
        parse("dpm++_3m")


def test_the_old_names_keep_their_meaning() -> None:
    assert {name: parse(name) for name in LEGACY} == {
        "euler": ("euler", None),
        "euler_a": ("euler_a", None),
        "ddim": ("ddim", None),
        "pndm": ("pndm", None),
        "lms": ("lms", None),
        "heun": ("heun", None),
        "dpm++_2m": ("dpm++_2m", None),
        "dpm++_2m_karras": ("dpm++_2m", "karras"),
        "dpm++_sde": ("dpm++_sde", None),
        "dpm++_sde_karras": ("dpm++_sde", "karras"),
        "unipc": ("unipc", None),
    }
    assert to_a1111("pndm") == ("PLMS", "Automatic")
    assert to_a1111("dpm++_2m_karras") == ("DPM++ 2M", "Karras")


@pytest.mark.parametrize(
    ("sampler", "schedule", "expected"),
    [
        # Automatic: the schedule A1111 1.10 picks for the sampler.
        ("DPM++ 2M", "Automatic", "dpm++_2m_karras"),
        ("DPM++ SDE", None, "dpm++_sde_karras"),
        ("DPM++ 2M SDE", "", "dpm++_2m_sde_exponential"),
        ("DPM++ 2M SDE Heun", "automatic", "dpm++_2m_sde_heun_exponential"),
        ("DPM++ 3M SDE", None, "dpm++_3m_sde_exponential"),
        ("DPM2", None, "dpm2_karras"),
        ("DPM2 a", None, "dpm2_a_karras"),
        ("Euler a", "Automatic", "euler_a_uniform"),
        ("Euler", None, "euler_uniform"),
        ("LMS", None, "lms_uniform"),
        ("Heun", None, "heun_uniform"),
        ("DDIM", "Automatic", "ddim"),
        ("PLMS", None, "pndm"),
        ("UniPC", None, "unipc"),
        ("LCM", None, "lcm"),
        # The clients': SillyTavern's DDIM + normal, Open WebUI's Euler a + Karras.
        ("DDIM", "normal", "ddim_normal"),
        ("Euler a", "Karras", "euler_a_karras"),
        # Labels, names and aliases, in any case.
        ("euler A", "SGM Uniform", "euler_a_sgm_uniform"),
        ("k_euler_a", "sgm_uniform", "euler_a_sgm_uniform"),
        ("k_dpmpp_2m", "SGMUniform", "dpm++_2m_sgm_uniform"),
        ("plms", "DDIM", "pndm_ddim"),
        ("dpm++ 2m sde heun", "beta", "dpm++_2m_sde_heun_beta"),
        # Old combined names; a schedule given as well wins, Automatic does not.
        ("DPM++ 2M Karras", None, "dpm++_2m_karras"),
        ("DPM++ 2M SDE Exponential", "Automatic", "dpm++_2m_sde_exponential"),
        ("DPM++ 2M SDE Karras", None, "dpm++_2m_sde_karras"),
        ("Euler a Karras", None, "euler_a_karras"),
        ("LMS Karras", None, "lms_karras"),
        ("DPM++ 2M Karras", "Exponential", "dpm++_2m_exponential"),
    ],
)
def test_a1111_names_map_as_a1111_runs_them(
    sampler: str, schedule: str | None, expected: str
) -> None:
    assert from_a1111(sampler, schedule) == expected


def test_unknown_a1111_names_are_refused_naming_the_field() -> None:
    with pytest.raises(InvalidParameters) as caught:
        from_a1111("DPM fast", "Automatic", sampler_field="hr_sampler_name")
    assert caught.value.field == "hr_sampler_name"
    assert "'DPM fast'" in caught.value.message and "Euler a" in caught.value.message
    with pytest.raises(InvalidParameters) as caught:
        from_a1111("Euler", "Align Your Steps")
    assert caught.value.field == "scheduler" and "Karras" in caught.value.message
    for bad in (None, 7, "", "Karras"):
        with pytest.raises(InvalidParameters) as caught:
            from_a1111(bad, None)
        assert caught.value.field == "sampler_name"
    with pytest.raises(InvalidParameters):
        from_a1111("Euler", 3)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("DPM++ 2M Karras", "dpm++_2m_karras"),
        ("Euler a", "euler_a"),
        ("dpmpp_2m_sde", "dpm++_2m_sde"),
        ("Euler a Karras", "euler_a_karras"),
        ("DDIM Normal", "ddim_normal"),
        ("dpm++-2m-sde-heun-exponential", "dpm++_2m_sde_heun_exponential"),
        ("PLMS SGM Uniform", "pndm_sgm_uniform"),
        ("k_dpmpp_sde", "dpm++_sde"),
        ("  LCM  ", "lcm"),
    ],
)
def test_normalise_takes_our_and_a1111_spellings(given: str, expected: str) -> None:
    assert normalise(given) == expected


def test_normalise_refuses_with_a_hint() -> None:
    with pytest.raises(InvalidParameters) as caught:
        normalise("euler_a_karas", "generation.default_scheduler")
    assert caught.value.field == "generation.default_scheduler"
    assert "did you mean 'euler_a_karras'" in caught.value.message
    for bad in ("", None, 3, "euler_automatic", "dpm_fast", "x" * 65):
        with pytest.raises(InvalidParameters):
            normalise(bad)


def test_the_a1111_lists_are_shaped_as_a1111_1_10_answers() -> None:
    listed = a1111_samplers()
    assert [s["name"] for s in listed] == [
        *("DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"),
        *("Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DDIM", "PLMS", "UniPC", "LCM"),
    ]
    assert listed[0] == {
        "name": "DPM++ 2M",
        "aliases": ["k_dpmpp_2m"],
        "options": {"scheduler": "karras"},
    }
    assert listed[5]["aliases"] == ["k_euler_a", "k_euler_ancestral"]
    schedules = a1111_schedules()
    assert [s["name"] for s in schedules] == [
        *("automatic", "uniform", "karras", "exponential", "polyexponential"),
        *("sgm_uniform", "simple", "normal", "ddim", "beta"),
    ]
    assert schedules[2] == {
        "name": "karras",
        "label": "Karras",
        "aliases": None,
        "default_rho": 7.0,
        "need_inner_model": False,
    }
    assert schedules[5]["aliases"] == ["SGMUniform"] and schedules[5]["need_inner_model"]
    assert schedules[4]["default_rho"] == 1.0
