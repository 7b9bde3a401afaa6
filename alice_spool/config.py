"""Settings: config.toml + `ALICE_*` environment + CLI overrides -> frozen `Settings`.

Precedence: CLI override > environment (`ALICE_<SECTION>_<KEY>`) > file > built-in
defaults. Unknown sections and keys are errors naming them; every value is validated once,
here. Nothing is read at import time: `load_settings` is called by the edges (CLI, service).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import spec
from .errors import ConfigError, InvalidParameters
from .masking import masked_urls
from .memory_plan import CACHES, MEMORY_MODES, OFFLOAD, QUANTIZE, MemoryChoice

ENV_PREFIX = "ALICE_"
CONFIG_ENV = "ALICE_CONFIG"
DEFAULT_CONFIG_FILE = "config.toml"


def _fail(key: str, message: str) -> typing.NoReturn:
    raise ConfigError(f"{key}: {message}", key=key)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        _fail(key, message)


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""
    max_body_bytes: int = 1_048_576
    max_image_body_bytes: int = 33_554_432  # routes whose requests may carry images
    request_timeout_s: float = 600.0
    body_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    max_streams_per_client: int = 8
    max_connections: int = 1000
    cors_origins: list[str] = field(default_factory=list)
    rate_limit_per_minute: int = 0
    auth_failures_per_minute: int = 30
    trusted_proxies: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=list)
    registration: str = "disabled"  # POST /v1/auth/register: disabled | invite | open
    session_idle_s: float = 900.0  # a web session unused this long ends
    session_max_s: float = 86400.0  # and any ends this long after its login
    api_keys: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(bool(self.host.strip()), "server.host", "must not be empty")
        _check(self.session_idle_s > 0, "server.session_idle_s", "must be positive")
        _check(
            self.session_max_s >= self.session_idle_s,
            "server.session_max_s",
            "must be at least server.session_idle_s",
        )
        _check(
            self.registration in ("disabled", "invite", "open"),
            "server.registration",
            f"must be disabled, invite or open, got {self.registration!r}",
        )
        _check(0 <= self.port <= 65535, "server.port", f"must be 0..65535, got {self.port}")
        _check(
            self.public_url == "" or re.match(r"https?://[^/\s]+", self.public_url) is not None,
            "server.public_url",
            f"must be empty or an http(s):// URL, got {self.public_url!r}",
        )
        _check(self.max_body_bytes >= 1024, "server.max_body_bytes", "must be at least 1024")
        _check(
            self.max_image_body_bytes >= self.max_body_bytes,
            "server.max_image_body_bytes",
            "must be at least server.max_body_bytes",
        )
        _check(self.request_timeout_s > 0, "server.request_timeout_s", "must be positive")
        _check(self.body_timeout_s > 0, "server.body_timeout_s", "must be positive")
        _check(self.header_timeout_s > 0, "server.header_timeout_s", "must be positive")
        _check(self.max_streams_per_client >= 1, "server.max_streams_per_client", "must be >= 1")
        _check(self.max_connections >= 1, "server.max_connections", "must be >= 1")
        _check(self.rate_limit_per_minute >= 0, "server.rate_limit_per_minute", "must be >= 0")
        _check(
            self.auth_failures_per_minute >= 0, "server.auth_failures_per_minute", "must be >= 0"
        )
        for name in self.allowed_hosts:
            _check(
                bool(name.strip()) and "/" not in name and " " not in name,
                "server.allowed_hosts",
                f"{name!r} is not a host name",
            )
        for address in self.trusted_proxies:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                _check(False, "server.trusted_proxies", f"{address!r} is not an IP address")
        for name, key in self.api_keys.items():
            _check(bool(name.strip()), "server.api_keys", "a key's name must not be empty")
            _check(bool(key.strip()), f"server.api_keys.{name}", "the key must not be empty")


@dataclass(frozen=True)
class PathsSettings:
    """Paths as given; `resolved()` makes them absolute and fills the derived defaults."""

    data_dir: str = "./var"
    database_url: str = ""
    inbox: str = ""
    outbox: str = ""
    models: str = ""

    def __post_init__(self) -> None:
        _check(bool(self.data_dir.strip()), "paths.data_dir", "must not be empty")

    def resolved(self, cwd: Path) -> PathsSettings:
        data = (cwd / Path(self.data_dir).expanduser()).resolve()

        def under(value: str, default: str) -> str:
            return str(
                (data / default) if not value else (cwd / Path(value).expanduser()).resolve()
            )

        return PathsSettings(
            data_dir=str(data),
            database_url=self.database_url or f"sqlite:///{data / 'alice.db'}",
            inbox=under(self.inbox, "inbox"),
            outbox=under(self.outbox, "outbox"),
            models=under(self.models, "models"),
        )


@dataclass(frozen=True)
class DatabaseSettings:
    synchronous: str = "normal"
    busy_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "synchronous", self.synchronous.lower())
        _check(
            self.synchronous in ("normal", "full"),
            "database.synchronous",
            f"must be normal or full, got {self.synchronous!r}",
        )
        _check(self.busy_timeout_s > 0, "database.busy_timeout_s", "must be positive")


@dataclass(frozen=True)
class GenerationSettings(spec.BuiltinDefaults):
    """`[generation]`: the request defaults and limits (their built-in values are
    spec.py's, the one place they are defined), and the queue's size."""

    max_queue: int = 10_000
    max_input_pixels: int = 4_194_304  # an input image's width x height, at most (inputs.py)

    def __post_init__(self) -> None:
        try:
            if self.default_model:
                model = spec.normalise_model_id(self.default_model, "generation.default_model")
                object.__setattr__(self, "default_model", model)
            scheduler = spec.normalise_scheduler(
                self.default_scheduler, "generation.default_scheduler"
            )
            object.__setattr__(self, "default_scheduler", scheduler)
        except InvalidParameters as exc:
            raise ConfigError(exc.message, key=exc.field) from None
        _check(
            1 <= self.max_steps <= spec.STEPS_MAX,
            "generation.max_steps",
            f"must be 1..{spec.STEPS_MAX}, got {self.max_steps}",
        )
        _check(
            1 <= self.default_steps <= self.max_steps,
            "generation.default_steps",
            f"must be 1..max_steps ({self.max_steps}), got {self.default_steps}",
        )
        _check(
            0 <= self.default_guidance_scale <= spec.GUIDANCE_MAX,
            "generation.default_guidance_scale",
            f"must be 0..{spec.GUIDANCE_MAX:g}, got {self.default_guidance_scale}",
        )
        _check(
            spec.SIZE_MIN**2 <= self.max_pixels <= spec.PIXELS_MAX,
            "generation.max_pixels",
            f"must be {spec.SIZE_MIN**2}..{spec.PIXELS_MAX}, got {self.max_pixels}",
        )
        _check(
            1 <= self.max_n <= spec.N_MAX,
            "generation.max_n",
            f"must be 1..{spec.N_MAX}, got {self.max_n}",
        )
        _check(self.max_queue >= 1, "generation.max_queue", "must be at least 1")
        _check(self.max_input_pixels >= 4096, "generation.max_input_pixels", "must be >= 4096")
        _check(
            0 <= self.max_loras <= spec.LORAS_LIMIT,
            "generation.max_loras",
            f"must be 0..{spec.LORAS_LIMIT}, got {self.max_loras}",
        )


@dataclass(frozen=True)
class RunnerSettings:
    device: str = "auto"
    max_batch: int = 8
    lease_s: float = 60.0
    max_attempts: int = 3
    job_timeout_s: float = 300.0
    preload: bool = True
    compile: bool = False
    compile_sizes: list[str] = field(default_factory=list)  # "WxH"; empty: native size
    memory: str = "auto"
    # FLUX.1 and SD 3.x: their transformer and T5 quantized (CUDA), and how they are
    # offloaded ("auto": as memory and the card's free memory say; memory_plan.py).
    quantize: str = "none"
    offload: str = "auto"
    # FLUX.1 and SD 3.x: diffusers' step caching, off by default (engine/caching.py).
    cache: str = "none"
    keep_in_ram: bool = False
    name: str = ""
    switch_model_after_s: float = 30.0
    png_compress_level: int = 1
    max_cached_loras: int = 8  # LoRA adapters kept loaded (least recently used unloaded)
    # serve's runners (DESIGN section 15): [] one on `device`; a list, one per device;
    # "all", one per CUDA device found (the TOML string "all" is the list ["all"]).
    devices: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check(
            re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device) is not None,
            "runner.device",
            f"must be auto, cuda, cuda:N, mps or cpu, got {self.device!r}",
        )
        _check(1 <= self.max_batch <= 64, "runner.max_batch", "must be 1..64")
        _check(self.lease_s >= 1, "runner.lease_s", "must be at least 1 second")
        _check(1 <= self.max_attempts <= 100, "runner.max_attempts", "must be 1..100")
        _check(self.job_timeout_s > 0, "runner.job_timeout_s", "must be positive")
        _check(
            self.memory in MEMORY_MODES,
            "runner.memory",
            f"must be auto, full, low or minimal, got {self.memory!r}",
        )
        _check(
            self.quantize in QUANTIZE,
            "runner.quantize",
            f"must be one of {', '.join(QUANTIZE)}, got {self.quantize!r}",
        )
        _check(
            self.cache in CACHES,
            "runner.cache",
            f"must be one of {', '.join(CACHES)}, got {self.cache!r}",
        )
        _check(
            self.offload in OFFLOAD,
            "runner.offload",
            f"must be one of {', '.join(OFFLOAD)}, got {self.offload!r}",
        )
        _check(
            self.name == "" or re.fullmatch(r"[A-Za-z0-9._-]{1,64}", self.name) is not None,
            "runner.name",
            "must be 1..64 letters, digits, '.', '_' or '-' (or empty for the host name)",
        )
        _check(self.switch_model_after_s >= 0, "runner.switch_model_after_s", "must be >= 0")
        _check(0 <= self.png_compress_level <= 9, "runner.png_compress_level", "must be 0..9")
        _check(1 <= self.max_cached_loras <= 64, "runner.max_cached_loras", "must be 1..64")
        if self.devices != ["all"]:
            for device in self.devices:
                _check(
                    re.fullmatch(r"cpu|mps|cuda:\d+", device) is not None,
                    "runner.devices",
                    f'must be [], "all", or a list of cuda:N, mps or cpu, got {device!r}',
                )
            cuda = [d for d in self.devices if d.startswith("cuda:")]
            _check(
                len(cuda) == len(set(cuda)),
                "runner.devices",
                f"names a GPU twice: {self.devices}",
            )
        for size in self.compile_sizes:
            try:
                spec.parse_size(size, "runner.compile_sizes")
            except InvalidParameters as exc:
                raise ConfigError(exc.message, key="runner.compile_sizes") from None

    @property
    def memory_choice(self) -> MemoryChoice:
        """memory, quantize, offload and cache, as the engine takes them."""
        return MemoryChoice(self.memory, self.quantize, self.offload, self.cache)

    @property
    def compile_size_pairs(self) -> list[tuple[int, int]]:
        """`compile_sizes` as (width, height) pairs."""
        return [spec.parse_size(size, "runner.compile_sizes") for size in self.compile_sizes]


@dataclass(frozen=True)
class InboxSettings:
    enabled: bool = True
    polling: bool = False
    rescan_interval_s: float = 5.0
    max_file_bytes: int = 1_048_576
    after_accept: str = "move"
    settle_s: float = 0.5

    def __post_init__(self) -> None:
        _check(self.rescan_interval_s > 0, "inbox.rescan_interval_s", "must be positive")
        _check(0 < self.settle_s <= 60, "inbox.settle_s", "must be 0..60 seconds")
        _check(self.max_file_bytes >= 1, "inbox.max_file_bytes", "must be at least 1")
        _check(
            self.after_accept in ("move", "delete"),
            "inbox.after_accept",
            f"must be move or delete, got {self.after_accept!r}",
        )


@dataclass(frozen=True)
class RetentionSettings:
    days: float = 7.0
    max_storage_gb: float = 100.0

    def __post_init__(self) -> None:
        _check(self.days >= 0, "retention.days", "must be 0 (keep forever) or more")
        _check(self.max_storage_gb >= 0, "retention.max_storage_gb", "must be 0 (no limit) or more")


@dataclass(frozen=True)
class ModelsSettings:
    # Let URLs (image inputs' input_image_urls) lead to loopback, private and other
    # non-public addresses: for a trusted network only (urls.py).
    allow_private_urls: bool = False
    # Install downloaded pickle checkpoints (.ckpt, .pt, .bin), which can run code when
    # they are loaded; off: only safetensors are installed (downloads/).
    allow_pickle: bool = False
    # The Hugging Face Hub: "" is the library's default (https://huggingface.co); a token
    # for gated and private repositories (sent only in the Authorization header).
    hf_endpoint: str = ""
    hf_token: str = ""
    # Which weights a diffusers repository gives: "fp16" takes its fp16 variant where it
    # has one, "" never; "auto" is fp16 unless runner.device is cpu.
    hf_variant: str = "auto"
    # CivitAI's public REST API and a token (needed for most downloads; header only).
    civitai_url: str = "https://civitai.com"
    civitai_token: str = ""
    # A whole fetch of an image URL (input_image_urls), redirects and a body that
    # trickles in included, must be over within this; and how many of them one client
    # (API key, else address) may have going at once (more: 429).
    fetch_timeout_s: float = 60.0
    max_fetches_per_client: int = 4
    # Other names for installed models, as OpenAI's clients send them:
    # [models.aliases] "dall-e-3" = "sd/flux-schnell" (aliases.py).
    aliases: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.fetch_timeout_s > 0, "models.fetch_timeout_s", "must be positive")
        for alias, target in self.aliases.items():
            _check(bool(alias.strip()), "models.aliases", "an alias must not be empty")
            try:
                spec.normalise_model_id(target, f"models.aliases.{alias}")
            except InvalidParameters as exc:
                raise ConfigError(exc.message, key=f"models.aliases.{alias}") from None
        _check(self.max_fetches_per_client >= 1, "models.max_fetches_per_client", "must be >= 1")
        for key in ("hf_endpoint", "civitai_url"):
            value = getattr(self, key)
            object.__setattr__(self, key, value.rstrip("/"))
            _check(
                (value == "" and key == "hf_endpoint")
                or re.fullmatch(r"https?://[^/\s]+(/[^\s]*)?", value) is not None,
                f"models.{key}",
                f"must be an http(s) URL, got {value!r}",
            )
        _check(
            self.hf_variant in ("auto", "fp16", ""),
            "models.hf_variant",
            f'must be auto, fp16 or "", got {self.hf_variant!r}',
        )

    def masked(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in SECRET_KEYS:
            if out[key]:
                out[key] = "***"
        return out


SECRET_KEYS = ("hf_token", "civitai_token")


@dataclass(frozen=True)
class DownloadsSettings:
    enabled: bool = True  # run download workers inside `serve` and `api`
    concurrency: int = 2  # downloads at once

    def __post_init__(self) -> None:
        _check(1 <= self.concurrency <= 16, "downloads.concurrency", "must be 1..16")


@dataclass(frozen=True)
class UsersSettings:
    """`[users]`: what a user's key (role user) may ask for; admins are not held to it."""

    # The highest job priority a user's key may set (-100..100, higher runs first):
    # above it, 400. 0 keeps users from jumping the fair-share queue.
    max_priority: int = 0

    def __post_init__(self) -> None:
        _check(
            0 <= self.max_priority <= spec.PRIORITY_MAX,
            "users.max_priority",
            f"must be 0..{spec.PRIORITY_MAX}",
        )


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "INFO"
    format: str = "text"
    file: str = ""
    file_max_bytes: int = 10_485_760
    file_backups: int = 5

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", self.level.upper())
        _check(self.file_max_bytes >= 1024, "logging.file_max_bytes", "must be at least 1024")
        _check(0 <= self.file_backups <= 100, "logging.file_backups", "must be 0..100")
        _check(
            self.level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
            "logging.level",
            f"must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {self.level!r}",
        )
        _check(
            self.format in ("text", "json"),
            "logging.format",
            f"must be text or json, got {self.format!r}",
        )


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    paths: PathsSettings = field(default_factory=PathsSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    runner: RunnerSettings = field(default_factory=RunnerSettings)
    inbox: InboxSettings = field(default_factory=InboxSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    models: ModelsSettings = field(default_factory=ModelsSettings)
    downloads: DownloadsSettings = field(default_factory=DownloadsSettings)
    users: UsersSettings = field(default_factory=UsersSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    config_file: str | None = None

    @property
    def database_url(self) -> str:
        return self.paths.database_url

    def to_dict(self) -> dict[str, Any]:
        """Every section and key, as a TOML file would hold them (keys and tokens masked)."""
        out = {s.name: dataclasses.asdict(getattr(self, s.name)) for s in _sections()}
        out["server"]["api_keys"] = {name: "***" for name in self.server.api_keys}
        out["models"] = self.models.masked()
        # Every URL, in whichever setting (the database's, the Hub's, CivitAI's, one
        # added later), shown without the credentials it may carry.
        return {section: masked_urls(table) for section, table in out.items()}


def _sections() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(Settings) if f.name != "config_file"]


def _section_types(section: str) -> dict[str, Any]:
    cls = typing.get_type_hints(Settings)[section]
    return typing.get_type_hints(cls)


def _suggest(name: str, choices: list[str]) -> str:
    hint = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


# -- converting values ------------------------------------------------------------------


# Lists that also take one word for themselves (as TOML strings).
_ONE_WORD_LISTS = {"runner.devices": ("all",)}


def _coerce(key: str, kind: Any, value: Any) -> Any:
    """A value from the TOML file (already typed) checked against the field's type."""
    origin = typing.get_origin(kind)
    if kind is bool:
        _check(isinstance(value, bool), key, f"must be true or false, got {value!r}")
    elif kind is int:
        _check(
            isinstance(value, int) and not isinstance(value, bool),
            key,
            f"must be an integer, got {value!r}",
        )
    elif kind is float:
        _check(
            isinstance(value, int | float) and not isinstance(value, bool),
            key,
            f"must be a number, got {value!r}",
        )
        value = float(value)
    elif kind is str:
        _check(isinstance(value, str), key, f"must be a string, got {value!r}")
    elif origin is list and key in _ONE_WORD_LISTS and value in _ONE_WORD_LISTS[key]:
        value = [value]  # runner.devices = "all"
    elif origin is list:
        _check(
            isinstance(value, list) and all(isinstance(v, str) for v in value),
            key,
            f"must be a list of strings, got {value!r}",
        )
        value = list(value)
    elif origin is dict:
        _check(
            isinstance(value, Mapping)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()),
            key,
            f'must be a table of name = "string" entries, got {value!r}',
        )
        value = dict(value)
    return value


def _parse_text(key: str, kind: Any, text: str) -> Any:
    """A value given as text (environment variable, `--set`), parsed for the field's type."""
    origin = typing.get_origin(kind)
    raw = text.strip()
    if kind is bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        _fail(key, f"must be true or false, got {text!r}")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            _fail(key, f"must be an integer, got {text!r}")
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            _fail(key, f"must be a number, got {text!r}")
    if origin is list:
        if raw.startswith("["):
            return _coerce(key, kind, _json(key, raw))
        return [part.strip() for part in raw.split(",") if part.strip()]
    if origin is dict:
        if raw.startswith("{"):
            return _coerce(key, kind, _json(key, raw))
        entries: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in raw.split(","))):
            name, sep, value = part.partition("=")
            _check(bool(sep), key, f"expected name=value entries separated by commas, got {part!r}")
            entries[name.strip()] = value.strip()
        return entries
    return text


def _json(key: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(key, f"is not valid JSON: {exc}")


# -- loading ----------------------------------------------------------------------------


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _merge_file(
    values: dict[str, dict[str, Any]], document: Mapping[str, Any], origin: str
) -> None:
    sections = [s.name for s in _sections()]
    for section, table in document.items():
        if section not in sections:
            raise ConfigError(
                f"{origin}: unknown section [{section}]{_suggest(section, sections)}", key=section
            )
        if not isinstance(table, Mapping):
            raise ConfigError(f"{origin}: [{section}] must be a table", key=section)
        types = _section_types(section)
        for name, value in table.items():
            key = f"{section}.{name}"
            if name not in types:
                raise ConfigError(
                    f"{origin}: unknown key {key!r}{_suggest(name, list(types))}", key=key
                )
            values[section][name] = _coerce(key, types[name], value)


def _merge_env(values: dict[str, dict[str, Any]], env: Mapping[str, str]) -> None:
    sections = {s.name for s in _sections()}
    for var, text in env.items():
        if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV:
            continue
        rest = var[len(ENV_PREFIX) :].lower()
        section, _, name = rest.partition("_")
        # Variables of other sections (e.g. test hooks) are not configuration.
        if section not in sections:
            continue
        types = _section_types(section)
        if name not in types:
            raise ConfigError(
                f"environment variable {var}: unknown key {section}.{name!r}"
                f"{_suggest(name, list(types))}",
                key=f"{section}.{name}",
            )
        values[section][name] = _parse_text(var, types[name], text)


def _merge_overrides(values: dict[str, dict[str, Any]], overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in values:
            raise ConfigError(f"unknown setting {key!r}: no section [{section}]", key=key)
        types = _section_types(section)
        if name not in types:
            raise ConfigError(f"unknown setting {key!r}{_suggest(name, list(types))}", key=key)
        kind = types[name]
        values[section][name] = (
            _parse_text(key, kind, value)
            if isinstance(value, str) and kind is not str
            else _coerce(key, kind, value)
        )


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
    values: dict[str, dict[str, Any]] = {s.name: {} for s in _sections()}
    path = find_config_file(config_file, env, cwd)
    if path is not None:
        _merge_file(values, _read_file(path), str(path))
    _merge_env(values, env)
    _merge_overrides(values, overrides or {})
    hints = typing.get_type_hints(Settings)
    built = {name: hints[name](**entries) for name, entries in values.items()}
    built["paths"] = built["paths"].resolved(cwd)
    return Settings(**built, config_file=str(path) if path else None)
