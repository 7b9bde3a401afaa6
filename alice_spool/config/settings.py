"""`Settings`: every section, validated, frozen; and how it is shown (secrets masked)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError

from ..errors import ConfigError
from ..masking import masked_urls
from .section import Frozen, Section, suggest
from .sections import (
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


class Settings(Frozen, frozen=True):
    server: ServerSettings = Field(default_factory=ServerSettings)
    paths: PathsSettings = Field(default_factory=PathsSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    runner: RunnerSettings = Field(default_factory=RunnerSettings)
    inbox: InboxSettings = Field(default_factory=InboxSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    downloads: DownloadsSettings = Field(default_factory=DownloadsSettings)
    users: UsersSettings = Field(default_factory=UsersSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    config_file: str | None = None

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            name = str(error["loc"][0])
            if error["type"] == "extra_forbidden":
                message = f"unknown section [{name}]{suggest(name, SECTIONS)}"
            else:
                message = f"{name}: {error['msg']}"
            raise ConfigError(message, key=name) from None

    @property
    def database_url(self) -> str:
        return self.paths.database_url

    def to_dict(self) -> dict[str, Any]:
        """Every section and key, as a TOML file would hold them (keys and tokens masked)."""
        out = {name: getattr(self, name).model_dump() for name in SECTIONS}
        out["server"]["api_keys"] = {name: "***" for name in self.server.api_keys}
        out["models"] = self.models.masked()
        # Every URL, in whichever setting (the database's, the Hub's, CivitAI's, one
        # added later), shown without the credentials it may carry.
        return {section: masked_urls(table) for section, table in out.items()}


# Each section's name (its [table] in config.toml) and model, in the file's order.
SECTIONS: dict[str, type[Section]] = {
    name: field.annotation
    for name, field in Settings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, Section)
}
