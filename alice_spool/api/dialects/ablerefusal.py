"""The AbleRefusal API: a thin
translator. A generation is queued (source `ablerefusal`) and answered at once with its
id; its status, progress and results are read from the job; its `/outputs/` are the
spool's `/images/`. Its own limits (width and
height required, steps 1..150, cfg_scale 1..30, batch_size 1..4) and error bodies: 400
with the details, 404 with the list of models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, RootModel
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ... import errors
from ...config import Settings
from ...records import JobRecord
from ...spec import parse_spec, request_json_schema
from ...states import JobStatus, Source
from ..edge.context import Api, route, scope_of
from ..edge.contract import Answer, Contract, ErrorBody
from ..edge.http import bounded, refuse_unknown, require_object
from ..edge.services import image_url
from .pipeline import Dialect, submit

TAG = "AbleRefusal"
STATES = {
    JobStatus.QUEUED: "queued",
    JobStatus.RUNNING: "processing",
    JobStatus.SUCCEEDED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}
State = Literal["queued", "processing", "completed", "failed", "cancelled"]
_FIELDS = {"prompt", "negative_prompt", "width", "height", "steps", "cfg_scale", "sampler",
           "seed", "batch_size", "model"}  # fmt: skip
# AbleRefusal's own limits (within the spool's, which may be lower: generation.max_*).
STEPS = (1, 150)
CFG_SCALE = (1.0, 30.0)
BATCH_SIZE = (1, 4)


class AbleRefusalError(BaseModel):
    """AbleRefusal's error body; a missing model's adds `models`, what is installed."""

    error: str
    code: str
    details: dict[str, Any] = Field(description="the field at fault, and what else is known")
    models: list[str] | None = None


class AbleRefusalErrors(RootModel[AbleRefusalError | ErrorBody]):
    """Its error answers: its own body; what is refused before any of its routes runs
    (an unknown path's 404, the guard's 403, 415 and 421) has the server's own."""


def _error_body(exc: errors.SpoolError, status: int) -> Response:
    """`{"error", "details"}`; a missing model's 404 adds `models`, what is installed."""
    body: dict[str, Any] = {"error": exc.message, "code": exc.code, "details": dict(exc.details)}
    if "models" in exc.details:
        body["models"] = exc.details["models"]
    return JSONResponse(body, status_code=status)


ABLEREFUSAL = Dialect(
    "ablerefusal", Source.ABLEREFUSAL, error_body=_error_body, error_model=AbleRefusalErrors
)


class AbleRefusalQueued(BaseModel):
    id: str
    status: Literal["queued"]


class AbleRefusalMetadata(BaseModel):
    prompt: str
    negative_prompt: str
    width: int | None
    height: int | None
    steps: int
    cfg_scale: float
    sampler: str
    model: str | None


class AbleRefusalResult(BaseModel):
    image_url: str = Field(description="/outputs/<secret>/<file>: no key needed")
    seed: int | None
    metadata: AbleRefusalMetadata


class AbleRefusalGeneration(BaseModel):
    id: str
    status: State
    progress: int = Field(ge=0, le=100)
    results: list[AbleRefusalResult]
    error: str | None = Field(None, description="why it failed (only then)")


class AbleRefusalCancelled(BaseModel):
    id: str
    status: State


class AbleRefusalJob(BaseModel):
    id: str
    status: State


class AbleRefusalQueue(BaseModel):
    queued: int
    processing: int
    jobs: list[AbleRefusalJob] = Field(description="this client's unfinished generations")


class AbleRefusalModel(BaseModel):
    id: str
    name: str
    family: str | None


class AbleRefusalModels(BaseModel):
    models: list[AbleRefusalModel]


class AbleRefusalHealth(BaseModel):
    status: Literal["healthy"]


def _body(settings: Settings) -> dict[str, Any]:
    """AbleRefusal's generation body: its names and limits over the request's rules."""
    generation = settings.generation
    request = request_json_schema(generation)["properties"]

    def limited(schema: dict[str, Any], low: float, high: float, default: float) -> Any:
        return {**schema, "minimum": low, "maximum": high, "default": default}

    sampler = request["scheduler"]
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["prompt", "width", "height"],
        "properties": {
            "prompt": request["prompt"],
            "negative_prompt": request["negative_prompt"],
            "width": {**request["width"], "type": "integer"},
            "height": {**request["height"], "type": "integer"},
            "steps": limited(request["steps"], STEPS[0], min(STEPS[1], generation.max_steps), 20),
            "cfg_scale": limited(request["guidance_scale"], *CFG_SCALE, 7.5),
            "sampler": {
                **sampler,
                "enum": [*sampler["enum"], "", None],
                "default": "euler_a",
                "description": "euler_a when null or empty; " + sampler["description"],
            },
            "seed": request["seed"],
            "batch_size": limited(
                request["n"], BATCH_SIZE[0], min(BATCH_SIZE[1], generation.max_n), 1
            ),
            "model": request["model"],
        },
    }


def native(body: dict[str, Any]) -> dict[str, Any]:
    """AbleRefusal's body as this server's request."""
    refuse_unknown(body, _FIELDS)
    for name in ("prompt", "width", "height"):
        if body.get(name) is None:
            raise errors.InvalidParameters(f"{name} is required", field=name)
    seed = body.get("seed", -1)
    fields = {
        "prompt": body["prompt"],
        "negative_prompt": body.get("negative_prompt"),
        "width": body["width"],
        "height": body["height"],
        "steps": bounded(body, "steps", 20, *STEPS, whole=True),
        "guidance_scale": bounded(body, "cfg_scale", 7.5, *CFG_SCALE, whole=False),
        "scheduler": body.get("sampler") if body.get("sampler") not in (None, "") else "euler_a",
        "seed": None if seed == -1 else seed,
        "n": bounded(body, "batch_size", 1, *BATCH_SIZE, whole=True),
    }
    if body.get("model") is not None:
        fields["model"] = body["model"]
    return fields


def _view(job: JobRecord) -> dict[str, Any]:
    step, total = job.progress_step or 0, job.progress_total or 0
    done = job.status is JobStatus.SUCCEEDED
    images = (job.result or {}).get("images") or [] if done else []
    view: dict[str, Any] = {
        "id": job.id,
        "status": STATES[job.status],
        "progress": 100 if done else (round(100 * step / total) if total else 0),
        "results": [
            {
                "image_url": image_url("", image["file"], job.image_secret, "outputs"),
                "seed": image.get("seed"),
                "metadata": {
                    "prompt": job.spec.prompt,
                    "negative_prompt": job.spec.negative_prompt,
                    "width": image.get("width"),
                    "height": image.get("height"),
                    "steps": job.spec.steps,
                    "cfg_scale": job.spec.guidance_scale,
                    "sampler": job.spec.scheduler,
                    "model": job.model,
                },
            }
            for image in images
            if "file" in image and not image.get("deleted")
        ],
    }
    if job.error_code:
        view["error"] = job.error_message
    return view


@route(
    shape=ABLEREFUSAL,
    contract=Contract(
        body=_body,
        example={
            "prompt": "a beautiful sunset over mountains",
            "width": 512,
            "height": 512,
            "steps": 20,
            "cfg_scale": 7.5,
        },
        answers={202: Answer(AbleRefusalQueued, "Queued")},
        errors={404: "the model (its answer lists the installed ones) or a LoRA is not installed"},
        tag=TAG,
        link="job_id",
    ),
)
async def generate(request: Request, api: Api, client: str | None) -> Response:
    """Queue a generation: `{"id", "status": "queued"}` at once (202)."""
    body = require_object(await api.read_body(request))
    spec = parse_spec(native(body), api.settings.generation)
    try:
        spec = await api.submissions.resolve_model(spec)
    except errors.ModelNotFound as exc:
        models = await run_in_threadpool(api.registry.scan)
        raise errors.ModelNotFound(
            exc.message, **exc.details, models=sorted(m.id for m in models if m.ok)
        ) from None
    job = await submit(request, api, spec, ABLEREFUSAL, client)
    return JSONResponse({"id": job.id, "status": "queued"}, status_code=202)


@route(shape=ABLEREFUSAL, contract=Contract(answers={200: Answer(AbleRefusalGeneration)}, tag=TAG))
async def get_generation(request: Request, api: Api, client: str | None) -> Response:
    """A generation's status (queued, processing, completed, failed, cancelled),
    progress 0..100 and results."""
    job = await run_in_threadpool(api.visible_job, request, request.path_params["job_id"])
    return JSONResponse(_view(job))


@route(
    shape=ABLEREFUSAL,
    contract=Contract(
        answers={200: Answer(AbleRefusalCancelled)},
        errors={409: "the generation has finished"},
        tag=TAG,
    ),
)
async def cancel(request: Request, api: Api, client: str | None) -> Response:
    """Cancel a generation: queued at once, processing at its next step."""
    job = await run_in_threadpool(api.visible_job, request, request.path_params["job_id"])
    job = await run_in_threadpool(api.store.jobs.cancel, job.id)
    return JSONResponse({"id": job.id, "status": STATES[job.status]})


@route(shape=ABLEREFUSAL, contract=Contract(answers={200: Answer(AbleRefusalQueue)}, tag=TAG))
async def queue(request: Request, api: Api, client: str | None) -> Response:
    """The queue: how many wait and run, and this client's unfinished generations."""
    scope = scope_of(request)

    def read() -> dict[str, Any]:
        counts = api.store.jobs.counts()
        mine = api.store.jobs.list_jobs(
            statuses=[JobStatus.QUEUED, JobStatus.RUNNING], owner=scope, limit=100
        )
        return {
            "queued": counts[JobStatus.QUEUED],
            "processing": counts[JobStatus.RUNNING],
            "jobs": [{"id": j.id, "status": STATES[j.status]} for j in mine.jobs],
        }

    return JSONResponse(await run_in_threadpool(read))


@route(shape=ABLEREFUSAL, contract=Contract(answers={200: Answer(AbleRefusalModels)}, tag=TAG))
async def models(request: Request, api: Api, client: str | None) -> Response:
    """The installed models."""
    found = await run_in_threadpool(api.registry.scan)
    return JSONResponse(
        {
            "models": [
                {"id": m.id, "name": m.id.removeprefix("sd/"), "family": m.family}
                for m in sorted(found, key=lambda m: m.id)
                if m.ok
            ]
        }
    )


@route(auth=False, contract=Contract(answers={200: Answer(AbleRefusalHealth)}, tag=TAG))
async def health(request: Request, api: Api, client: str | None) -> Response:
    """Always `{"status": "healthy"}` while the server answers (no key needed)."""
    return JSONResponse({"status": "healthy"})
