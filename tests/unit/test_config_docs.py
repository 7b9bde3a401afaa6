"""config.toml and the README's key list hold every key the settings' models have, and
no key they lack: a key added without documentation, or documented without existing,
fails here."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from alice_spool.config import SECTIONS, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


def model_keys() -> dict[str, set[str]]:
    return {name: set(cls.model_fields) for name, cls in SECTIONS.items()}


def test_every_section_is_named_as_its_table() -> None:
    assert list(SECTIONS) == [n for n in Settings.model_fields if n != "config_file"]
    for name, cls in SECTIONS.items():
        assert cls.section == name, cls


def test_every_key_has_a_default() -> None:
    for name, cls in SECTIONS.items():
        for key, field in cls.model_fields.items():
            assert not field.is_required(), f"{name}.{key}"
    assert Settings().to_dict().keys() == SECTIONS.keys()


def test_config_toml_sets_every_key_and_no_other(tmp_path: Path) -> None:
    document = tomllib.loads((REPO / "config.toml").read_text())
    documented = {section: set(table) for section, table in document.items()}
    # The two tables of names (api keys, aliases) ship empty, as [section.key] tables.
    expected = model_keys()
    assert documented == expected
    # ...and each with its built-in default (load_settings refuses unknown keys).
    shipped = load_settings(REPO / "config.toml", env={}, cwd=tmp_path)
    assert shipped.to_dict() == load_settings(env={}, cwd=tmp_path).to_dict()


def readme_keys() -> dict[str, set[str]]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    found: dict[str, set[str]] = {}
    for row in re.findall(r"^\| `\[(\w+)\]` \| (.*) \|$", section, re.M):
        name, cell = row
        found[name] = set(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", cell)))
    return found


def test_the_readme_lists_every_key_and_no_other() -> None:
    assert readme_keys() == model_keys()
