"""Where settings come from: config.toml, `ALICE_<SECTION>_<KEY>` environment variables
and command-line overrides, merged in that order (each beating the one before) over the
built-in defaults, then validated once by the sections' models.

Nothing is read at import time: `load_settings` is called by the edges (CLI, service).
"""

from __future__ import annotations

import json
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ConfigError
from .section import Section, fail, suggest
from .sections import PathsSettings
from .settings import SECTIONS, Settings

ENV_PREFIX = "ALICE_"
CONFIG_ENV = "ALICE_CONFIG"
DEFAULT_CONFIG_FILE = "config.toml"

# section -> key -> value, as given so far; and key ("server.port") -> where it was given.
Values = dict[str, dict[str, Any]]
Origins = dict[str, str]
S = TypeVar("S", bound=Section)


def _types(section: str) -> dict[str, Any]:
    """Each key of a section and its type (a Literal's, a list's or a dict's included)."""
    return {name: field.annotation for name, field in SECTIONS[section].model_fields.items()}


# -- text (environment variables, --set) -------------------------------------------------


def parse_text(where: str, kind: Any, text: str) -> Any:
    """A value given as text, parsed for the key's type; `where` names it in errors.
    What it parses to is then checked by the section's model like a value from the file."""
    origin = typing.get_origin(kind)
    raw = text.strip()
    if kind is bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        fail(where, f"must be true or false, got {text!r}")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            fail(where, f"must be an integer, got {text!r}")
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            fail(where, f"must be a number, got {text!r}")
    if origin is list:
        if raw.startswith("["):
            return _json(where, raw)
        return [part.strip() for part in raw.split(",") if part.strip()]
    if origin is dict:
        return _json(where, raw) if raw.startswith("{") else _entries(where, raw)
    return text


def _entries(where: str, raw: str) -> dict[str, str]:
    """`name=value,name2=value2`."""
    entries: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            fail(where, f"expected name=value entries separated by commas, got {part!r}")
        entries[name.strip()] = value.strip()
    return entries


def _json(where: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(where, f"is not valid JSON: {exc}")


# -- the three sources -------------------------------------------------------------------


def read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def merge_file(values: Values, origins: Origins, document: Mapping[str, Any], path: str) -> None:
    for section, table in document.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"{path}: unknown section [{section}]{suggest(section, SECTIONS)}", key=section
            )
        if not isinstance(table, Mapping):
            raise ConfigError(f"{path}: [{section}] must be a table", key=section)
        types = _types(section)
        for name, value in table.items():
            key = f"{section}.{name}"
            if name not in types:
                raise ConfigError(f"{path}: unknown key {key!r}{suggest(name, types)}", key=key)
            values[section][name] = value
            origins[key] = f"set in {path}"


def merge_env(values: Values, origins: Origins, env: Mapping[str, str]) -> None:
    for var, text in env.items():
        if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV:
            continue
        section, _, name = var[len(ENV_PREFIX) :].lower().partition("_")
        # Variables of other sections (e.g. test hooks) are not configuration.
        if section not in SECTIONS:
            continue
        types = _types(section)
        if name not in types:
            raise ConfigError(
                f"environment variable {var}: unknown key {section}.{name!r}{suggest(name, types)}",
                key=f"{section}.{name}",
            )
        values[section][name] = parse_text(var, types[name], text)
        origins[f"{section}.{name}"] = f"from {var}"


def merge_overrides(values: Values, origins: Origins, overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in SECTIONS:
            raise ConfigError(f"unknown setting {key!r}: no section [{section}]", key=key)
        types = _types(section)
        if name not in types:
            raise ConfigError(f"unknown setting {key!r}{suggest(name, types)}", key=key)
        kind = types[name]
        text = isinstance(value, str) and kind is not str
        values[section][name] = parse_text(key, kind, value) if text else value
        origins[key] = "from the command line"


# -- loading -----------------------------------------------------------------------------


def find_config_file(
    explicit: str | os.PathLike[str] | None, env: Mapping[str, str], cwd: Path
) -> Path | None:
    """`--config`, else `ALICE_CONFIG`, else `./config.toml` if it exists."""
    if explicit:
        return Path(explicit)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    candidate = cwd / DEFAULT_CONFIG_FILE
    return candidate if candidate.is_file() else None


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Build the settings once. `overrides` maps `section.key` to a value (CLI flags)."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    values: Values = {name: {} for name in SECTIONS}
    origins: Origins = {}
    path = find_config_file(config_file, env, cwd)
    if path is not None:
        merge_file(values, origins, read_file(path), str(path))
    merge_env(values, origins, env)
    merge_overrides(values, origins, overrides or {})
    built = {
        name: _build(cls, values[name], origins)
        for name, cls in SECTIONS.items()
        if name != "paths"
    }
    paths = _build(PathsSettings, values["paths"], origins).resolved(cwd)
    return Settings(**built, paths=paths, config_file=str(path) if path else None)


def _build(cls: type[S], values: dict[str, Any], origins: Origins) -> S:
    """One section from its values; a refusal says where the refused value was given."""
    try:
        return cls(**values)
    except ConfigError as exc:
        key = str(exc.details.get("key", ""))
        where = origins.get(key) or origins.get(".".join(key.split(".")[:2]))
        if where is None:
            raise
        raise ConfigError(f"{exc.message} ({where})", **exc.details) from None
