"""OpenAI's model routes as this server answers them: the model list (with ALICE's
family defaults), one model or alias, the LoRAs, the default model, a rescan."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .... import aliases, errors
from ....library.registry import ModelInfo
from ....spec import normalise_model_id
from ...edge.context import Api, route
from ...edge.contract import Answer, Contract, Query
from ...edge.schemas import MODEL_ID
from ...routes import catalog
from .chat import TAG


class LoraView(BaseModel):
    """An installed LoRA: ours (`family`, `size_bytes`, `status`) and ALICE's names."""

    object: Literal["lora"]
    id: str
    name: str
    family: str | None
    size_bytes: int
    status: Literal["ok", "broken"]
    reason: str | SkipJsonSchema[None] = Field(None, description="why it is broken")
    created: int
    sizeMb: float
    baseModel: str


class LoraList(BaseModel):
    object: Literal["list"]
    data: list[LoraView]


@route(contract=Contract(answers={200: Answer(LoraList)}, tag=TAG))
async def list_loras(request: Request, api: Api, client: str | None) -> Response:
    """The installed LoRAs (`<models>/loras/*.safetensors`) with the model family each
    was made for; a request names them in `loras` or as `<lora:name:scale>` tags."""
    loras = await run_in_threadpool(api.registry.loras.scan)
    return JSONResponse({"object": "list", "data": catalog.lora_views(loras)})


class FamilyDefaults(BaseModel):
    """What a model runs with when a request gives none (None: the server's)."""

    steps: int | None
    guidance_scale: float | None
    scheduler: str | None


class ModelView(BaseModel):
    """An installed model (or an alias: `alias_of` the model it stands for), as OpenAI
    lists models, with what it is."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    family: str | None
    variant: str | None
    defaults: FamilyDefaults
    schedulers: list[str] | None = Field(description="the ones it takes; null: every one")
    native_size: int | None
    size_bytes: int
    format: str
    status: Literal["ok", "broken"]
    default: bool | SkipJsonSchema[None] = Field(None, description="in the list, models only")
    smoke_test: bool
    reason: str | SkipJsonSchema[None] = Field(None, description="why it is broken")
    note: str | SkipJsonSchema[None] = Field(None, description="a smoke-test model's")
    alias: bool | SkipJsonSchema[None] = Field(None, description="aliases only: true")
    alias_of: str | SkipJsonSchema[None] = None


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelView]


class ModelsQuery(Query):
    include_broken: str = Field(
        "false",
        pattern="^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|1|0)$",
        description="true (or 1, any case): the unusable models too, with the reason",
    )

    @property
    def broken_too(self) -> bool:
        return self.include_broken.lower() in ("true", "1")


@route(contract=Contract(query=ModelsQuery, answers={200: Answer(ModelList)}, tag=TAG))
async def list_models(
    request: Request, api: Api, client: str | None, query: ModelsQuery
) -> Response:
    """The installed models, as OpenAI lists models (plus what they are), then the
    aliases (`alias_of`: the model each stands for): the configured ones
    (`[models.aliases]`) and OpenAI's image model names, which stand for the default
    model; `?include_broken=true` lists the unusable models too, with the reason."""
    include_broken = query.broken_too
    models = await run_in_threadpool(api.registry.scan)
    try:
        default = (
            await run_in_threadpool(api.registry.default, api.settings.generation.default_model)
        ).id
    except errors.ModelNotFound:
        default = None
    configured = api.settings.models.aliases

    def entries() -> list[dict[str, Any]]:  # each model's folder is read: in a thread
        shown = [m for m in sorted(models, key=lambda m: m.id) if m.ok or include_broken]
        listed = [_model_entry(model, default) for model in shown]
        return listed + _alias_entries(models, default, configured)

    return JSONResponse({"object": "list", "data": await run_in_threadpool(entries)})


def _model_entry(model: ModelInfo, default: str | None) -> dict[str, Any]:
    entry = {
        "id": model.id,
        "object": "model",
        "created": _created(model),
        "owned_by": "alice",
        "family": model.family,
        "variant": model.variant,
        # what a request that gives none runs (None: the server's), and the schedulers
        # it takes (None: every one)
        **{key: value for key, value in model.to_dict().items() if key in _FAMILY_KEYS},
        "native_size": model.native_size,
        "size_bytes": model.size_bytes,
        "format": model.format,
        "status": "ok" if model.ok else "broken",
        "default": model.id == default,
        "smoke_test": model.smoke_test,
    }
    if model.broken:
        entry["reason"] = model.broken
    if model.smoke_test:
        entry["note"] = "smoke-test model with random weights: its images are noise"
    return entry


_FAMILY_KEYS = ("defaults", "schedulers")


def _created(model: ModelInfo) -> int:
    try:
        return int(model.path.stat().st_mtime)
    except OSError:  # gone since the scan
        return 0


def _alias_entries(
    models: list[ModelInfo], default: str | None, configured: Mapping[str, str]
) -> list[dict[str, Any]]:
    """The aliases whose model is installed and usable, as OpenAI lists models."""
    usable = {model.id: model for model in models if model.ok}
    names = {name.lower(): name for name in aliases.OPENAI_IMAGE_MODELS}
    names.update({name.lower(): name for name in configured})  # as configured, once
    entries = []
    for name in sorted(names.values()):
        resolved = aliases.resolve(name, configured)
        target = default if resolved.model is None else normalise_model_id(resolved.model)
        if target not in usable:
            continue
        entry = _model_entry(usable[target], None)
        entry.update(id=name, alias=True, alias_of=target)
        del entry["default"]
        entries.append(entry)
    return entries


@route(contract=Contract(answers={200: Answer(ModelView)}, tag=TAG))
async def retrieve_model(request: Request, api: Api, client: str | None) -> Response:
    """One model or alias as OpenAI's `models.retrieve` reads it: an installed model by
    its name (`tiny` for sd/tiny), or an alias (OpenAI's image model names included)."""
    name = request.path_params["name"]
    resolved = aliases.resolve(name, api.settings.models.aliases)
    settings = api.settings

    def find() -> ModelInfo:
        if resolved.model is None:
            return api.registry.default(settings.generation.default_model)
        try:
            return api.registry.get(resolved.model)
        except errors.InvalidParameters:  # not a name a model can have: none has it
            raise errors.ModelNotFound(f"no model or alias {name!r}", model=name) from None

    model = await run_in_threadpool(find)
    entry = await run_in_threadpool(_model_entry, model, None)
    del entry["default"]
    if resolved.alias is not None:
        entry.update(id=resolved.alias, alias=True, alias_of=model.id)
    return JSONResponse(entry)


class DefaultModel(BaseModel):
    model: str = Field(pattern=MODEL_ID, examples=["sd/tiny"], description="an installed model")


class DefaultChosen(BaseModel):
    object: Literal["model"]
    id: str
    default: Literal[True]


@route(
    manage=True,
    contract=Contract(
        takes_body=DefaultModel,
        example={"model": "sd/tiny"},
        answers={200: Answer(DefaultChosen)},
        errors={
            404: "the model is not installed, or cannot be used",
            409: "generation.default_model in the configuration pins the default",
        },
        tag=TAG,
    ),
)
async def set_default_model(
    request: Request, api: Api, client: str | None, body: DefaultModel
) -> Response:
    """Make an installed model the default for requests that name none:
    `{"model": "sd/<name>"}`. Refused while config.toml pins `generation.default_model`."""
    wanted = body.model
    pinned = api.settings.generation.default_model
    if pinned:
        raise errors.IllegalTransition(
            f"the default model is {pinned}, set by generation.default_model in the "
            "configuration; change it there",
            field="model",
        )
    model = await run_in_threadpool(api.registry.set_default, wanted.strip())
    return JSONResponse({"object": "model", "id": model.id, "default": True})


class Rescanned(BaseModel):
    status: Literal["ok"]
    models_found: int = Field(description="the usable ones")


@route(contract=Contract(answers={200: Answer(Rescanned)}, tag=TAG))
async def refresh_models(request: Request, api: Api, client: str | None) -> Response:
    """Rescan the models directory (as ALICE does)."""
    models = await run_in_threadpool(api.registry.scan, force=True)
    return JSONResponse({"status": "ok", "models_found": sum(1 for m in models if m.ok)})
