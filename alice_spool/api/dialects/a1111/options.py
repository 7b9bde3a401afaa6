"""AUTOMATIC1111's API (`/sdapi/v1/`): its error shape, checkpoint titles and options
object.

`GET /sdapi/v1/options` answers A1111 1.10's whole options object with its default
values (`options.json`, as a fresh A1111 answers it), overlaid with what this
owner set. `POST` takes any part of it, or all of it back: the options this server
understands take effect for the owner's A1111 requests (`sd_model_checkpoint`,
`CLIP_stop_at_last_layers`, `samples_format`, `jpeg_quality`, `webp_lossless`,
`sd_vae`); the others are kept and echoed, never refused. A value of the wrong type for
an understood option is a 422 in FastAPI's shape, as A1111's request validation gives;
a checkpoint or VAE that is not installed (or could not be: not a name) is a 404.
Options live in the `client_options` table, per owner: every API node sees them."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from pydantic import BaseModel, RootModel
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .... import errors
from ....spec import CLIP_SKIP_MAX, MODEL_PREFIX, normalise_model_id, normalise_vae_id
from ....states import Source
from ...edge.context import Api, owner_of, route
from ...edge.contract import Answer, Contract, ErrorBody
from ..pipeline import Dialect
from .numeric import number_schema, whole_of
from .rules import all_text
from .spellings import words

CHECKPOINT = "a1111.sd_model_checkpoint"  # the client option: A1111's current checkpoint
OPTIONS = "a1111.options"  # the client option: the rest of the options object it set
ERROR_NAMES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound"}

# A1111's explanations shown in its settings page: never saved, ignored when sent back.
_LABELS = frozenset(
    ("profiling_explanation", "sd_vae_explanation", "infotext_explanation", "settings_in_ui",
     "hypertile_explanation")
)  # fmt: skip
# What A1111 writes itself when it loads a model: sent back, it changes nothing.
_STATE = frozenset(("sd_checkpoint_hash",))
SAMPLES_FORMATS = ("png", "jpg", "jpeg", "webp")
TAG = "AUTOMATIC1111"  # the API these routes are, in /openapi.json


class OptionRefused(errors.InvalidParameters):
    """An understood option given a value of the wrong type or range (422)."""


class A1111FieldFault(BaseModel):
    """One refused value, as FastAPI names it: `["body", field]`."""

    loc: list[str]
    msg: str
    type: str


class A1111Error(BaseModel):
    """A1111's error body: `error` (the status's name, `BadRequest`, or the error's),
    `detail` and `errors` (what is wrong), `body` (the field, "" for none), and this
    server's `code`; a refused option value (422) has FastAPI's `detail`, a list."""

    error: str
    detail: str | list[A1111FieldFault]
    body: str
    errors: str
    code: str


class A1111ErrorAnswer(RootModel[A1111Error | ErrorBody]):
    """An error from an A1111 route in its shape; the refusals made before any route
    runs (another host or site, a body that is not JSON) in this server's own."""


def _error_body(exc: errors.SpoolError, status: int) -> Response:
    """An error as A1111's API answers one: `{error, detail, body, errors}`; a refused
    option value as FastAPI's 422 (`detail`: a list of `{loc, msg, type}`)."""
    if isinstance(exc, OptionRefused):
        field = str(exc.details.get("field") or "")
        return JSONResponse(
            {
                "detail": [{"loc": ["body", field], "msg": exc.message, "type": "type_error"}],
                "error": "ValidationError",
                "body": field,
                "errors": exc.message,
                "code": exc.code,
            },
            status_code=status,
        )
    headers = {"WWW-Authenticate": "Basic"} if status == 401 else {}
    body = {
        "error": ERROR_NAMES.get(status, type(exc).__name__),
        "detail": exc.message,
        "body": exc.details.get("field") or "",
        "errors": exc.message,
        "code": exc.code,
    }
    return JSONResponse(body, status_code=status, headers=headers)


A1111 = Dialect(
    "a1111",
    Source.A1111,
    statuses={OptionRefused: 422},
    error_body=_error_body,
    error_model=A1111ErrorAnswer,
)


def model_of(checkpoint: Any, field: str = "sd_model_checkpoint") -> str | None:
    """A model id from A1111's checkpoint title (`name`, `name.safetensors [hash]`); a
    title that is no model's name names none installed (404)."""
    if checkpoint is None or checkpoint == "":
        return None
    if not isinstance(checkpoint, str):
        raise OptionRefused(f"{field} must be a string", field=field)
    title = checkpoint.strip()
    if title.endswith("]") and " [" in title:
        title = title[: title.rindex(" [")]
    for suffix in (".safetensors", ".ckpt"):
        title = title.removesuffix(suffix)
    try:
        return normalise_model_id(title if title.startswith(MODEL_PREFIX) else MODEL_PREFIX + title)
    except errors.InvalidParameters:
        raise errors.ModelNotFound(
            f"no checkpoint is titled {checkpoint!r} (GET /sdapi/v1/sd-models)", field=field
        ) from None


def checkpoint_title(model_id: str) -> str:
    """A model's A1111 checkpoint title: what `sd-models` lists and `options` sets."""
    return model_id.removeprefix(MODEL_PREFIX)


def _defaults() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("options.json").read_text("utf-8")
    return dict(json.loads(text))


DEFAULTS: Mapping[str, Any] = _defaults()


def _whole(name: str, value: Any, low: int, high: int) -> int:
    """An integer option: a number (A1111 answers them as floats: 2.0) or its decimal
    text (numeric.py); never null."""
    try:
        number = whole_of(name, value)
    except errors.InvalidParameters:
        raise OptionRefused(f"{name} must be a number, got {value!r}", field=name) from None
    if number is None:
        raise OptionRefused(f"{name} must be a number, not null", field=name)
    if isinstance(number, float) or not low <= number <= high:  # (whole_of made 2.0 an int)
        raise OptionRefused(f"{name} must be a whole number from {low} to {high}", field=name)
    return int(number)


def _format(name: str, value: Any) -> str:
    if not isinstance(value, str) or value.strip().lower() not in SAMPLES_FORMATS:
        raise OptionRefused(f"{name} must be one of: {', '.join(SAMPLES_FORMATS)}", field=name)
    return value.strip().lower()


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise OptionRefused(f"{name} must be true or false", field=name)
    return value


def _vae(name: str, value: Any) -> str:
    """`Automatic` or `None` (the model's own VAE), or an installed VAE's name (checked
    installed when kept, and again when a request uses it; one no VAE can have names
    none installed)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "Automatic"
    if not isinstance(value, str):
        raise OptionRefused(f"{name} must be a string", field=name)
    try:
        normalise_vae_id(value, name)
    except errors.InvalidParameters:
        raise errors.VaeNotFound(
            f"no VAE is named {value!r} (GET /sdapi/v1/sd-vae)", field=name
        ) from None
    return value.strip()


# The options this server understands, each with what checks (and normalises) its value.
UNDERSTOOD: dict[str, Callable[[str, Any], Any]] = {
    "CLIP_stop_at_last_layers": lambda n, v: _whole(n, v, 1, CLIP_SKIP_MAX),
    "samples_format": _format,
    "jpeg_quality": lambda n, v: _whole(n, v, 1, 100),
    "webp_lossless": _flag,
    "sd_vae": _vae,
}


_CHECKPOINT_TEXT = (
    "a checkpoint's title (GET /sdapi/v1/sd-models), `name [hash]` and `name.safetensors` "
    "too; null or empty: none chosen. One not installed: 404"
)
_VAE_TEXT = (
    "Automatic or None (any case), blank or null: the model's own; else an installed VAE's "
    "file name (GET /sdapi/v1/sd-vae). One not installed: 404"
)


def changes_schema() -> dict[str, Any]:
    """Options as POST options and `override_settings` take them: any of A1111's (an
    extension's too), the understood ones of their types."""
    return {
        "type": "object",
        "properties": {
            "sd_model_checkpoint": {"type": ["string", "null"], "description": _CHECKPOINT_TEXT},
            "CLIP_stop_at_last_layers": number_schema(1, CLIP_SKIP_MAX, whole=True, nullable=False),
            "samples_format": {"type": "string", "pattern": words(SAMPLES_FORMATS)},
            "jpeg_quality": number_schema(1, 100, whole=True, nullable=False),
            "webp_lossless": {"type": "boolean"},
            "sd_vae": {"type": ["string", "null"], "description": _VAE_TEXT},
        },
        "description": "any of A1111's options (GET /sdapi/v1/options); those this server "
        "understands take effect (a value of the wrong type: 422), the rest are kept and "
        "answered back",
        "examples": [{"sd_model_checkpoint": "tiny", "CLIP_stop_at_last_layers": 2}],
    }


def answer_schema() -> dict[str, Any]:
    """GET options' answer: every option A1111 1.10 has, and any other a client set."""
    return {
        "type": "object",
        "required": sorted(DEFAULTS),
        "properties": {
            "sd_model_checkpoint": {
                "type": ["string", "null"],
                "description": "the title of the model this client's requests use (null: "
                "none installed)",
            },
            "CLIP_stop_at_last_layers": {"type": "number", "minimum": 1, "maximum": CLIP_SKIP_MAX},
            "samples_format": {"enum": list(SAMPLES_FORMATS)},
            "jpeg_quality": {"type": "number", "minimum": 1, "maximum": 100},
            "webp_lossless": {"type": "boolean"},
            "sd_vae": {"type": "string"},
        },
        "description": "A1111 1.10's options: its defaults, overlaid with what this client set",
    }


def checked(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Options as a client sent them, ready to keep: understood ones checked and
    normalised (422 otherwise; 404 for a VAE no file can be), A1111's labels and state
    left out, the model (`sd_model_checkpoint`) left to the caller."""
    kept: dict[str, Any] = {}
    for name, value in changes.items():
        if name in _LABELS or name in _STATE or name == "sd_model_checkpoint":
            continue
        check = UNDERSTOOD.get(name)
        kept[name] = check(name, value) if check is not None else value
    return kept


@dataclass(frozen=True)
class OwnerOptions:
    """What an owner's options change in its A1111 requests and answers."""

    checkpoint: str | None  # a model id, or None: the server's default model
    values: Mapping[str, Any]  # every option, defaults overlaid with the owner's

    @property
    def clip_skip(self) -> int:
        return int(self.values.get("CLIP_stop_at_last_layers") or 1)

    @property
    def vae(self) -> str | None:
        """The VAE this owner's requests use: None for the model's own."""
        return normalise_vae_id(self.values.get("sd_vae"), "sd_vae")

    @property
    def samples_format(self) -> str:
        return str(self.values.get("samples_format") or "png")

    @property
    def jpeg_quality(self) -> int:
        return int(self.values.get("jpeg_quality") or 80)

    @property
    def webp_lossless(self) -> bool:
        return bool(self.values.get("webp_lossless"))

    def overridden(self, override: Mapping[str, Any]) -> OwnerOptions:
        """These options with a request's `override_settings` applied (checked)."""
        model = model_of(override.get("sd_model_checkpoint"))
        return OwnerOptions(model or self.checkpoint, {**self.values, **checked(override)})


def owner_options(api: Api, owner: str | None) -> OwnerOptions:
    """The owner's options (blocking: run in a thread)."""
    chosen = api.store.options.client_option(owner, CHECKPOINT)
    return OwnerOptions(chosen, {**DEFAULTS, **api.store.options.client_options(owner, OPTIONS)})


@dataclass(frozen=True)
class Changes:
    """Options checked and ready to keep: the JSON object's keys, and the model."""

    options: dict[str, Any]
    plain: dict[str, str]  # client options of their own (the checkpoint)


async def check_changes(api: Api, changes: Mapping[str, Any]) -> Changes:
    """Options as `POST options` takes them, checked: the model and the VAE installed
    (404 otherwise), every understood value of its type (422). Nothing is kept yet."""
    kept = checked(changes)
    vae = normalise_vae_id(kept.get("sd_vae"), "sd_vae")
    if vae is not None:
        try:
            await run_in_threadpool(api.registry.vaes.get, vae)  # 404 if it is not installed
        except errors.VaeNotFound as exc:
            message = exc.message.replace("vae:", "sd_vae:", 1)
            raise errors.VaeNotFound(message, field="sd_vae") from None
    plain: dict[str, str] = {}
    model = model_of(changes.get("sd_model_checkpoint"))
    if model is not None:
        try:
            found = await run_in_threadpool(api.registry.get, model)
        except errors.ModelNotFound as exc:
            details = {**exc.details, "field": "sd_model_checkpoint"}
            raise errors.ModelNotFound(exc.message, **details) from None
        plain[CHECKPOINT] = found.id
    return Changes(kept, plain)


async def keep(api: Api, request: Request, changes: Changes) -> None:
    """Keep checked options for the request's owner, in one transaction."""
    owner = owner_of(request)
    await run_in_threadpool(
        lambda: api.store.options.merge_client_options(
            owner, OPTIONS, changes.options, also=changes.plain
        )
    )


async def _current_checkpoint(api: Api, chosen: str | None) -> str | None:
    if chosen is not None:
        return chosen
    try:
        model = await run_in_threadpool(api.registry.default, api.settings.generation.default_model)
    except errors.ModelNotFound:
        return None
    return model.id


@route(shape=A1111, contract=Contract(answers={200: Answer(answer_schema())}, tag=TAG))
async def get_options(request: Request, api: Api, client: str | None) -> Response:
    """A1111 1.10's options object: its defaults, overlaid with what this client set;
    `sd_model_checkpoint` is the title of the model its requests use."""
    options = await run_in_threadpool(owner_options, api, owner_of(request))
    current = await _current_checkpoint(api, options.checkpoint)
    values = dict(options.values)
    values["sd_model_checkpoint"] = checkpoint_title(current) if current else None
    for name, value in values.items():
        # A1111 answers the options whose default is a whole number as floats (80.0)
        if isinstance(DEFAULTS.get(name), float) and type(value) is int:
            values[name] = float(value)
    return JSONResponse(values)


@route(
    shape=A1111,
    contract=Contract(
        body=changes_schema(),
        answers={200: Answer({"type": "null"}, "Set (A1111 answers null)")},
        errors={
            404: "the checkpoint or VAE is not installed",
            422: "a value of the wrong type for an option this server understands",
        },
        example={"sd_model_checkpoint": "tiny"},
        tag=TAG,
    ),
)
async def set_options(request: Request, api: Api, client: str | None) -> Response:
    """Set any of the options, or send the whole object back: `sd_model_checkpoint`
    (checked installed: 404 otherwise) and the other options this server understands
    take effect for this client's A1111 requests; the rest are kept and echoed."""
    body = await api.read_body(request)
    if not isinstance(body, dict):
        raise OptionRefused("the options must be a JSON object", field="")
    all_text(body)  # (kept, and answered back by GET)
    await keep(api, request, await check_changes(api, body))
    return JSONResponse(None)
