"""The installed models and LoRAs, one at a time: details, ALICE's
`info` shape, delete (queued jobs for a deleted model fail `model_not_found`; a runner
that has it loaded unloads it), and ALICE's LoRA list."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ...library import removal
from ...library.loras import LoraInfo
from ...library.registry import FAMILY_NAMES, ModelInfo
from ..edge.context import Api, route
from ..edge.contract import Answer, Contract

RECOMMENDED = {
    "sd1": ["512x512", "512x768", "768x512"],
    "sd2": ["768x768", "768x1024", "1024x768"],
    "sdxl": ["1024x1024", "832x1216", "1216x832", "896x1152", "1152x896"],
}

ALICE = "OpenAI and ALICE"


class Model(BaseModel):
    """An installed model, usable or broken."""

    id: str  # sd/<name>
    object: Literal["model"]
    name: str
    created: int  # its folder's mtime
    owned_by: str
    family: str | None  # sd1, sd2, sdxl, ...; None: not known
    family_name: str | None
    native_size: int | None
    recommended_sizes: list[str]
    size_bytes: int
    format: Literal["diffusers", "single_file", "transformer_file"]
    status: Literal["ok", "broken"]
    reason: str | None = None  # why it is broken
    smoke_test: bool  # the tiny random-weight model: its images are noise
    default: bool


class AliceModelInfo(BaseModel):
    """ALICE's model info."""

    id: str
    name: str
    model_type: str
    native_resolution: int
    recommended_resolutions: list[str]
    size_mb: float
    created: int


class DeletedModel(BaseModel):
    id: str
    object: Literal["model"]
    deleted: bool
    failed_jobs: list[str]  # its queued jobs, failed model_not_found


class Lora(BaseModel):
    """A LoRA: ALICE's fields (`created`, `sizeMb`, `baseModel`) beside ours."""

    object: Literal["lora"]
    id: str  # lora/<name>
    name: str
    family: str | None
    size_bytes: int
    status: Literal["ok", "broken"]
    reason: str | None = None  # why it is broken
    created: int  # the file's mtime
    sizeMb: float
    baseModel: str


class LoraList(BaseModel):
    object: Literal["list"]
    data: list[Lora]


class DeletedLora(BaseModel):
    id: str
    object: Literal["lora"]
    deleted: bool


def _details(model: ModelInfo, api: Api) -> dict[str, Any]:
    try:
        created = int(model.path.stat().st_mtime)
    except OSError:
        created = 0
    default = api.registry.chosen_default() or api.settings.generation.default_model or None
    return {
        "id": model.id,
        "object": "model",
        "name": model.name,
        "created": created,
        "owned_by": "alice",
        "family": model.family,
        "family_name": FAMILY_NAMES.get(model.family or ""),
        "native_size": model.native_size,
        "recommended_sizes": RECOMMENDED.get(model.family or "", []),
        "size_bytes": model.size_bytes,
        "format": model.format,
        "status": "ok" if model.ok else "broken",
        **({"reason": model.broken} if model.broken else {}),
        "smoke_test": model.smoke_test,
        "default": model.id == default,
    }


@route(contract=Contract(answers={200: Answer(Model)}, tag=ALICE))
async def get_model(request: Request, api: Api, client: str | None) -> Response:
    """One installed model (`sd/<name>`, or the name alone), usable or broken."""
    model = await run_in_threadpool(
        removal.find_model, api.registry, "sd/" + request.path_params["name"]
    )
    return JSONResponse(_details(model, api))


@route(contract=Contract(answers={200: Answer(AliceModelInfo)}, tag=ALICE))
async def model_info(request: Request, api: Api, client: str | None) -> Response:
    """ALICE's `GET /v1/models/{id}/info`."""
    model = await run_in_threadpool(
        removal.find_model, api.registry, "sd/" + request.path_params["name"]
    )
    native = model.native_size or 512
    return JSONResponse(
        {
            "id": model.id,
            "name": model.name,
            "model_type": FAMILY_NAMES.get(model.family or "", "unknown"),
            "native_resolution": native,
            "recommended_resolutions": RECOMMENDED.get(model.family or "", [f"{native}x{native}"]),
            "size_mb": round(model.size_bytes / 1_048_576, 1),
            "created": _details(model, api)["created"],
        }
    )


@route(manage=True, contract=Contract(answers={200: Answer(DeletedModel)}, tag=ALICE))
async def delete_model(request: Request, api: Api, client: str | None) -> Response:
    """Delete an installed model: its queued jobs fail `model_not_found` first."""
    model, failed = await run_in_threadpool(
        removal.delete_model, api.registry, api.store, "sd/" + request.path_params["name"]
    )
    return JSONResponse({"id": model.id, "object": "model", "deleted": True, "failed_jobs": failed})


def lora_views(loras: list[LoraInfo]) -> list[dict[str, Any]]:
    """The LoRA list of `/v1/loras` and `/v1/models/loras`, by id: ALICE's fields
    (`created`, the file's mtime; `sizeMb`; `baseModel`, the family as ALICE names
    it) beside our own (`family`, `size_bytes`, `status`, a broken one's `reason`)."""
    views = []
    for lora in sorted(loras, key=lambda x: x.id):
        view = {"object": "lora", **lora.to_dict()}
        del view["path"]  # where the server keeps its files is not the client's business
        view["created"] = lora.modified
        view["sizeMb"] = round(lora.size_bytes / 1_048_576, 2)
        view["baseModel"] = FAMILY_NAMES.get(lora.family or "", "unknown")
        views.append(view)
    return views


@route(contract=Contract(answers={200: Answer(LoraList)}, tag=ALICE))
async def alice_list_loras(request: Request, api: Api, client: str | None) -> Response:
    """ALICE's `GET /v1/models/loras` (as `GET /v1/loras`): `{id, name, created, sizeMb,
    baseModel}` with our own fields beside them."""
    loras = await run_in_threadpool(api.registry.loras.scan)
    return JSONResponse({"object": "list", "data": lora_views(loras)})


@route(manage=True, contract=Contract(answers={200: Answer(DeletedLora)}))
async def delete_lora(request: Request, api: Api, client: str | None) -> Response:
    """Delete an installed LoRA (its file); jobs queued with it fail when they run."""
    lora = await run_in_threadpool(
        removal.delete_lora, api.registry, request.path_params["lora_id"]
    )
    return JSONResponse({"id": lora.id, "object": "lora", "deleted": True})
