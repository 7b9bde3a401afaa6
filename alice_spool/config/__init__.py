"""Settings: config.toml + `ALICE_*` environment + CLI overrides -> frozen `Settings`.

Precedence: CLI override > environment (`ALICE_<SECTION>_<KEY>`) > file > built-in
defaults. Unknown sections and keys are errors naming them; every value is validated once,
by the sections' typed models. The modules: `section` (what every section model is, and
its errors said as `key: what it must be`), `sections` (the models), `settings` (the
whole), `sources` (file, environment, overrides; loading).
"""

from ..errors import ConfigError
from .sections import (
    SECRET_KEYS,
    DatabaseSettings,
    DownloadsSettings,
    GenerationSettings,
    InboxSettings,
    LoggingSettings,
    ModelsSettings,
    PathsSettings,
    RetentionSettings,
    RunnerSettings,
    ServerSettings,
    UsersSettings,
)
from .settings import SECTIONS, Settings
from .sources import CONFIG_ENV, DEFAULT_CONFIG_FILE, ENV_PREFIX, find_config_file, load_settings

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_FILE",
    "ENV_PREFIX",
    "SECRET_KEYS",
    "SECTIONS",
    "ConfigError",
    "DatabaseSettings",
    "DownloadsSettings",
    "GenerationSettings",
    "InboxSettings",
    "LoggingSettings",
    "ModelsSettings",
    "PathsSettings",
    "RetentionSettings",
    "RunnerSettings",
    "ServerSettings",
    "Settings",
    "UsersSettings",
    "find_config_file",
    "load_settings",
]
