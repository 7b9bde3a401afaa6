"""The sections of config.toml as typed models: each key's type, default and limits,
and the rules between keys."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import Field, ValidationInfo, field_validator, model_validator

from .. import spec
from ..errors import ConfigError, InvalidParameters
from ..memory_plan import CACHES, MEMORY_MODES, OFFLOAD, QUANTIZE, MemoryChoice
from .section import Section, fail, number, one_of

_Positive = Annotated[float, Field(gt=0)]


def _spec_rule(check: Any, value: Any, key: str) -> Any:
    """spec.py's own check of a value, its refusal a ConfigError naming the key."""
    try:
        return check(value, key)
    except InvalidParameters as exc:
        raise ConfigError(exc.message, key=key) from None


class ServerSettings(Section, frozen=True):
    section: ClassVar[str] = "server"

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    public_url: str = ""
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1_048_576
    max_image_body_bytes: int = 33_554_432  # routes whose requests may carry images
    request_timeout_s: _Positive = 600.0
    body_timeout_s: _Positive = 30.0
    header_timeout_s: _Positive = 10.0
    max_streams_per_client: Annotated[int, Field(ge=1)] = 8
    max_connections: Annotated[int, Field(ge=1)] = 1000
    cors_origins: list[str] = Field(default_factory=list)
    rate_limit_per_minute: Annotated[int, Field(ge=0)] = 0
    auth_failures_per_minute: Annotated[int, Field(ge=0)] = 30
    trusted_proxies: list[str] = Field(default_factory=list)
    allowed_hosts: list[str] = Field(default_factory=list)
    registration: Literal["disabled", "invite", "open"] = "disabled"  # POST /v1/auth/register
    session_idle_s: _Positive = 900.0  # a web session unused this long ends
    session_max_s: float = 86400.0  # and any ends this long after its login
    api_keys: dict[str, str] = Field(default_factory=dict)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        if value and re.match(r"https?://[^/\s]+", value) is None:
            raise ValueError(f"must be empty or an http(s):// URL, got {value!r}")
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name.strip() or "/" in name or " " in name:
                raise ValueError(f"{name!r} is not a host name")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, value: list[str]) -> list[str]:
        for address in value:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"{address!r} is not an IP address") from None
        return value

    @field_validator("api_keys")
    @classmethod
    def _api_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for name, key in value.items():
            if not name.strip():
                raise ValueError("a key's name must not be empty")
            if not key.strip():
                fail(f"server.api_keys.{name}", "the key must not be empty")
        return value

    @model_validator(mode="after")
    def _between_keys(self) -> Self:
        if self.session_max_s < self.session_idle_s:
            fail("server.session_max_s", "must be at least server.session_idle_s")
        if self.max_image_body_bytes < self.max_body_bytes:
            fail("server.max_image_body_bytes", "must be at least server.max_body_bytes")
        return self


class PathsSettings(Section, frozen=True):
    """Paths as given; `resolved()` makes them absolute and fills the derived defaults."""

    section: ClassVar[str] = "paths"

    data_dir: str = "./var"
    database_url: str = ""
    inbox: str = ""
    outbox: str = ""
    models: str = ""

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

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


class DatabaseSettings(Section, frozen=True):
    section: ClassVar[str] = "database"

    synchronous: Literal["normal", "full"] = "normal"  # any case
    busy_timeout_s: _Positive = 30.0

    @field_validator("synchronous", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class GenerationSettings(  # (strict and extra restated: a base's own config never wins)
    Section, spec.BuiltinDefaults, frozen=True, strict=True, extra="forbid"
):
    """`[generation]`: the request defaults and limits (their names, types and built-in
    values are spec.py's `BuiltinDefaults`, the one place they are defined), and the
    queue's size."""

    section: ClassVar[str] = "generation"
    # The most each of spec's limits may be set to, and the least.
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        "max_steps": (1, spec.STEPS_MAX),
        "default_guidance_scale": (0, spec.GUIDANCE_MAX),
        "max_pixels": (spec.SIZE_MIN**2, spec.PIXELS_MAX),
        "max_n": (1, spec.N_MAX),
        "max_loras": (0, spec.LORAS_LIMIT),
    }

    max_queue: Annotated[int, Field(ge=1)] = 10_000
    max_input_pixels: Annotated[int, Field(ge=4096)] = 4_194_304  # an input image's width x height

    @field_validator("default_model")
    @classmethod
    def _model(cls, value: str) -> str:
        return value and _spec_rule(spec.normalise_model_id, value, "generation.default_model")

    @field_validator("default_scheduler")
    @classmethod
    def _scheduler(cls, value: str) -> str:
        return str(_spec_rule(spec.normalise_scheduler, value, "generation.default_scheduler"))

    @field_validator(*RANGES)
    @classmethod
    def _within(cls, value: float, info: ValidationInfo) -> float:
        low, high = cls.RANGES[str(info.field_name)]
        if not low <= value <= high:
            raise ValueError(f"must be {number(low)}..{number(high)}, got {value}")
        return value

    @model_validator(mode="after")
    def _default_steps(self) -> Self:
        if not 1 <= self.default_steps <= self.max_steps:
            fail(
                "generation.default_steps",
                f"must be 1..max_steps ({self.max_steps}), got {self.default_steps}",
            )
        return self


class RunnerSettings(Section, frozen=True):
    section: ClassVar[str] = "runner"

    device: str = "auto"
    max_batch: Annotated[int, Field(ge=1, le=64)] = 8
    lease_s: Annotated[float, Field(ge=1)] = 60.0
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    job_timeout_s: _Positive = 300.0
    preload: bool = True
    compile: bool = False
    compile_sizes: list[str] = Field(default_factory=list)  # "WxH"; empty: native size
    memory: Annotated[str, one_of(MEMORY_MODES)] = "auto"
    # FLUX.1 and SD 3.x: their transformer and T5 quantized (CUDA), and how they are
    # offloaded ("auto": as memory and the card's free memory say; memory_plan.py).
    quantize: Annotated[str, one_of(QUANTIZE)] = "none"
    offload: Annotated[str, one_of(OFFLOAD)] = "auto"
    # FLUX.1 and SD 3.x: diffusers' step caching, off by default (engine/caching.py).
    cache: Annotated[str, one_of(CACHES)] = "none"
    keep_in_ram: bool = False
    name: str = ""
    switch_model_after_s: Annotated[float, Field(ge=0)] = 30.0
    png_compress_level: Annotated[int, Field(ge=0, le=9)] = 1
    max_cached_loras: Annotated[int, Field(ge=1, le=64)] = 8  # LoRA adapters kept loaded (LRU)
    # serve's runners: [] one on `device`; a list, one per device; "all", one per CUDA
    # device found (the TOML string "all" is the list ["all"]).
    devices: list[str] = Field(default_factory=list)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value) is None:
            raise ValueError(f"must be auto, cuda, cuda:N, mps or cpu, got {value!r}")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if value and re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value) is None:
            raise ValueError(
                "must be 1..64 letters, digits, '.', '_' or '-' (or empty for the host name)"
            )
        return value

    @field_validator("compile_sizes")
    @classmethod
    def _compile_sizes(cls, value: list[str]) -> list[str]:
        for size in value:
            _spec_rule(spec.parse_size, size, "runner.compile_sizes")
        return value

    @field_validator("devices", mode="before")
    @classmethod
    def _all_devices(cls, value: Any) -> Any:
        return ["all"] if value == "all" else value

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: list[str]) -> list[str]:
        if value == ["all"]:
            return value
        for device in value:
            if re.fullmatch(r"cpu|mps|cuda:\d+", device) is None:
                raise ValueError(
                    f'must be [], "all", or a list of cuda:N, mps or cpu, got {device!r}'
                )
        cuda = [d for d in value if d.startswith("cuda:")]
        if len(cuda) != len(set(cuda)):
            raise ValueError(f"names a GPU twice: {value}")
        return value

    @property
    def memory_choice(self) -> MemoryChoice:
        """memory, quantize, offload and cache, as the engine takes them."""
        return MemoryChoice(self.memory, self.quantize, self.offload, self.cache)

    @property
    def compile_size_pairs(self) -> list[tuple[int, int]]:
        """`compile_sizes` as (width, height) pairs."""
        return [spec.parse_size(size, "runner.compile_sizes") for size in self.compile_sizes]


class InboxSettings(Section, frozen=True):
    section: ClassVar[str] = "inbox"

    enabled: bool = True
    polling: bool = False
    rescan_interval_s: _Positive = 5.0
    max_file_bytes: Annotated[int, Field(ge=1)] = 1_048_576
    after_accept: Literal["move", "delete"] = "move"
    settle_s: Annotated[float, Field(gt=0, le=60)] = 0.5


class RetentionSettings(Section, frozen=True):
    section: ClassVar[str] = "retention"

    days: Annotated[float, Field(ge=0)] = 7.0  # 0: keep forever
    max_storage_gb: Annotated[float, Field(ge=0)] = 100.0  # 0: no limit


SECRET_KEYS = ("hf_token", "civitai_token")


class ModelsSettings(Section, frozen=True):
    section: ClassVar[str] = "models"

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
    hf_variant: Literal["auto", "fp16", ""] = "auto"
    # CivitAI's public REST API and a token (needed for most downloads; header only).
    civitai_url: str = "https://civitai.com"
    civitai_token: str = ""
    # A whole fetch of an image URL (input_image_urls), redirects and a body that
    # trickles in included, must be over within this; and how many of them one client
    # (API key, else address) may have going at once (more: 429).
    fetch_timeout_s: _Positive = 60.0
    max_fetches_per_client: Annotated[int, Field(ge=1)] = 4
    # Other names for installed models, as OpenAI's clients send them:
    # [models.aliases] "dall-e-3" = "sd/flux-schnell" (aliases.py).
    aliases: dict[str, str] = Field(default_factory=dict)

    @field_validator("hf_endpoint", "civitai_url")
    @classmethod
    def _endpoint(cls, value: str, info: ValidationInfo) -> str:
        if value == "" and info.field_name == "hf_endpoint":
            return value
        if re.fullmatch(r"https?://[^/\s]+(/[^\s]*)?", value) is None:
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, value: dict[str, str]) -> dict[str, str]:
        for alias, target in value.items():
            if not alias.strip():
                raise ValueError("an alias must not be empty")
            _spec_rule(spec.normalise_model_id, target, f"models.aliases.{alias}")
        return value

    def masked(self) -> dict[str, Any]:
        out = self.model_dump()
        for key in SECRET_KEYS:
            if out[key]:
                out[key] = "***"
        return out


class DownloadsSettings(Section, frozen=True):
    section: ClassVar[str] = "downloads"

    enabled: bool = True  # run download workers inside `serve` and `api`
    concurrency: Annotated[int, Field(ge=1, le=16)] = 2  # downloads at once


class UsersSettings(Section, frozen=True):
    """`[users]`: what a user's key (role user) may ask for; admins are not held to it."""

    section: ClassVar[str] = "users"

    # The highest job priority a user's key may set (-100..100, higher runs first):
    # above it, 400. 0 keeps users from jumping the fair-share queue.
    max_priority: Annotated[int, Field(ge=0, le=spec.PRIORITY_MAX)] = 0


class LoggingSettings(Section, frozen=True):
    section: ClassVar[str] = "logging"

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"  # any case
    format: Literal["text", "json"] = "text"
    file: str = ""
    file_max_bytes: Annotated[int, Field(ge=1024)] = 10_485_760
    file_backups: Annotated[int, Field(ge=0, le=100)] = 5

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value
