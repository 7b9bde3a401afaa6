"""The sections as typed models: every key's refusals name it (and where it was set),
the models are frozen and compare by value, and [generation] builds on spec.py's
defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from alice_spool import spec
from alice_spool.config import (
    SECTIONS,
    ConfigError,
    DatabaseSettings,
    GenerationSettings,
    RunnerSettings,
    ServerSettings,
    Settings,
    load_settings,
)
from alice_spool.memory_plan import CACHES, MEMORY_MODES, OFFLOAD, QUANTIZE

KEYS = [(section, key) for section, cls in SECTIONS.items() for key in cls.model_fields]


def refused(tmp_path: Path, text: str = "", **kw: Any) -> ConfigError:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(cwd=tmp_path, **{"env": {}, **kw})
    return info.value


@pytest.mark.parametrize(("section", "key"), KEYS)
def test_a_value_of_no_type_any_key_takes_names_the_key(
    tmp_path: Path, section: str, key: str
) -> None:
    # A TOML date is no key's type: every key refuses it, by name, saying where it was.
    error = refused(tmp_path, f"[{section}]\n{key} = 1979-05-27\n")
    assert error.message.startswith(f"{section}.{key}: must be "), error.message
    assert error.message.endswith(f"(set in {tmp_path / 'config.toml'})")
    assert error.details["key"] == f"{section}.{key}"


def text_kind(section: str, key: str) -> Any:
    return SECTIONS[section].model_fields[key].annotation


@pytest.mark.parametrize(
    ("section", "key"),
    [(s, k) for s, k in KEYS if text_kind(s, k) in (bool, int, float)],
)
def test_an_environment_value_that_does_not_parse_names_the_variable(
    tmp_path: Path, section: str, key: str
) -> None:
    var = f"ALICE_{section.upper()}_{key.upper()}"
    error = refused(tmp_path, env={var: "not-a-value"})
    assert error.message.startswith(f"{var}: must be "), error.message


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("ALICE_SERVER_PORT", "70000", "server.port: must be 0..65535, got 70000"),
        ("ALICE_RUNNER_MAX_BATCH", "0", "runner.max_batch: must be 1..64, got 0"),
        ("ALICE_SERVER_BODY_TIMEOUT_S", "0", "server.body_timeout_s: must be positive, got 0"),
        ("ALICE_GENERATION_MAX_QUEUE", "0", "generation.max_queue: must be at least 1, got 0"),
        ("ALICE_INBOX_SETTLE_S", "61", "inbox.settle_s: must be positive and at most 60"),
        ("ALICE_SERVER_REGISTRATION", "all", "server.registration: must be disabled, invite"),
        ("ALICE_MODELS_HF_VARIANT", "bf16", 'models.hf_variant: must be auto, fp16 or ""'),
        ("ALICE_SERVER_CORS_ORIGINS", "[1]", "server.cors_origins: must be a list of strings"),
        ("ALICE_GENERATION_MAX_N", "17", "generation.max_n: must be 1..16, got 17"),
    ],
)
def test_an_environment_value_out_of_range_names_the_key_and_the_variable(
    tmp_path: Path, var: str, value: str, expected: str
) -> None:
    error = refused(tmp_path, env={var: value})
    assert error.message.startswith(expected), error.message
    assert error.message.endswith(f"(from {var})")


def test_a_command_line_value_says_so(tmp_path: Path) -> None:
    error = refused(tmp_path, overrides={"runner.max_batch": "65"})
    assert error.message == "runner.max_batch: must be 1..64, got 65 (from the command line)"
    error = refused(tmp_path, overrides={"runner.max_batch": 65})
    assert error.message.startswith("runner.max_batch: must be 1..64, got 65")


def test_the_later_source_is_the_one_named(tmp_path: Path) -> None:
    error = refused(tmp_path, "[server]\nport = 1\n", env={"ALICE_SERVER_PORT": "-1"})
    assert error.message.endswith("(from ALICE_SERVER_PORT)")


def test_a_rule_between_keys_names_the_key_it_refuses(tmp_path: Path) -> None:
    text = "[server]\nsession_idle_s = 60\nsession_max_s = 30\n"
    error = refused(tmp_path, text)
    assert error.details["key"] == "server.session_max_s"
    assert "must be at least server.session_idle_s" in error.message
    error = refused(tmp_path, "[server]\nmax_body_bytes = 2048\nmax_image_body_bytes = 1024\n")
    assert error.details["key"] == "server.max_image_body_bytes"


def test_sections_built_directly_are_checked_the_same_way() -> None:
    with pytest.raises(ConfigError, match=r"^server\.port: must be 0\.\.65535, got 70000$"):
        ServerSettings(port=70000)
    with pytest.raises(ConfigError, match=r"unknown setting 'server\.prot' \(did you mean 'port'"):
        ServerSettings(prot=1)
    with pytest.raises(ConfigError, match=r"unknown section \[sever\]"):
        Settings(sever=ServerSettings())
    with pytest.raises(ConfigError, match=r"^runner\.devices: names a GPU twice"):
        RunnerSettings(devices=["cuda:0", "cuda:0"])


def test_models_are_frozen_and_compare_by_value() -> None:
    database = DatabaseSettings(synchronous="FULL")
    assert database == DatabaseSettings(synchronous="full")
    assert hash(database) == hash(DatabaseSettings(synchronous="full"))
    assert database != DatabaseSettings()
    for target, name in [(database, "synchronous"), (Settings(), "server")]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(target, name, None)
    assert Settings() == Settings()
    changed = Settings().model_copy(update={"config_file": "x.toml"})
    assert changed.config_file == "x.toml" and changed.server == Settings().server


def test_runner_memory_choices_are_memory_plans() -> None:
    for key, choices in [
        ("memory", MEMORY_MODES),
        ("quantize", QUANTIZE),
        ("offload", OFFLOAD),
        ("cache", CACHES),
    ]:
        for choice in choices:
            assert getattr(RunnerSettings(**{key: choice}), key) == choice
        with pytest.raises(ConfigError) as info:
            RunnerSettings(**{key: "other"})
        assert info.value.message.startswith(f"runner.{key}: must be {choices[0]}, ")


def test_generation_builds_on_the_builtin_defaults() -> None:
    assert issubclass(GenerationSettings, spec.BuiltinDefaults)
    # What the request parser reads of them (spec.GenerationDefaults' properties).
    built_in = [n for n, v in vars(spec.GenerationDefaults).items() if isinstance(v, property)]
    assert len(built_in) >= 8
    ours = GenerationSettings()
    assert set(built_in) <= set(GenerationSettings.model_fields)
    for name in built_in:
        assert getattr(ours, name) == getattr(spec.BUILTIN_DEFAULTS, name), name
    limited = GenerationSettings(max_steps=40, default_steps=30)
    assert (limited.max_steps, limited.default_steps) == (40, 30)
    with pytest.raises(ConfigError, match=r"^generation\.max_steps: must be 1\.\.150, got 151"):
        GenerationSettings(max_steps=151)


def test_values_are_taken_as_toml_types_them(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[server]\nrequest_timeout_s = 60\n")
    settings = load_settings(env={}, cwd=tmp_path)
    assert settings.server.request_timeout_s == 60.0
    assert isinstance(settings.server.request_timeout_s, float)
    assert (
        "server.port: must be an integer, got 80.0"
        in refused(tmp_path, "[server]\nport = 80.0\n").message
    )
