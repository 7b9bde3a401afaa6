"""The native, asynchronous API: jobs and batches, with progress as server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from ... import errors, inputs
from ...config import Settings
from ...records import NewJob
from ...spec import (
    PRIORITY_MAX,
    PRIORITY_MIN,
    parse_idempotency_key,
    parse_request,
    request_json_schema,
)
from ...states import JobStatus, Source
from ..edge.context import Api, bucket_of, check_priority, owner_of, route, scope_of
from ..edge.contract import Answer, Contract, Query
from ..edge.http import WAKE_AT_LEAST_S, require_object, watching
from .answers import Job

MAX_PAGE = 500


class CreatedJob(Job):
    created: bool  # false: the same request again (its idempotency key), its first job


class JobPage(BaseModel):
    object: Literal["list"]
    data: list[Job]
    next_cursor: str | None


class JobsQuery(Query):
    status: list[JobStatus] | None = Field(None, description="repeatable")
    batch_id: str | None = None
    model: str | None = None
    source: Source | None = None
    limit: int = Field(50, ge=1, le=MAX_PAGE)
    before: str | None = Field(None, description="the next_cursor of the previous page")


class Priority(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: int = Field(
        ge=PRIORITY_MIN,
        le=PRIORITY_MAX,
        description="higher runs first; a user's key may set at most users.max_priority",
    )


class StatsQuery(Query):
    window_s: int = Field(3600, ge=60, le=86_400)


class Stats(BaseModel):
    object: Literal["stats"]
    window_s: int
    depth: dict[str, int]
    finished_in_window: dict[str, int]
    images_in_window: int
    jobs_per_minute: float
    images_per_minute: float
    mean_wait_s: float | None
    mean_run_s: float | None
    images_per_minute_series: list[float]


class Batch(BaseModel):
    object: Literal["batch"]
    id: str
    job_ids: list[str]
    created: bool


class BatchState(BaseModel):
    object: Literal["batch"]
    id: str
    counts: dict[str, int]
    finished: bool
    jobs: list[Job]


def _request(settings: Settings) -> dict[str, Any]:
    return request_json_schema(settings.generation)


def _batch(settings: Settings) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["requests"],
        "properties": {"requests": {"type": "array", "minItems": 1, "items": _request(settings)}},
    }


_JOB = Answer(Job)


@route(
    contract=Contract(
        body=_request,
        example={"prompt": "a lighthouse at dusk", "steps": 25, "seed": 7},
        answers={
            202: Answer(CreatedJob, "Queued"),
            200: Answer(CreatedJob, "The same request again: its first job"),
        },
        errors={
            404: "the model or a LoRA is not installed",
            409: "the idempotency key was used for another request",
            503: "the queue is full, or the database busy (Retry-After)",
        },
        link="job_id",
    )
)
async def create_job(request: Request, api: Api, client: str | None) -> Response:
    """Queue one job: 202 with the job and its `Location`; the same `Idempotency-Key`
    (or body `id`) with the same request answers the first job again (200)."""
    body = require_object(await api.read_body(request, images=True))
    body, staged = await api.submissions.stage_images(body)
    parsed = parse_request(body, api.settings.generation)
    check_priority(request, parsed.spec.priority)
    key = parsed.idempotency_key
    header = request.headers.get("idempotency-key")
    if header is not None:
        key = parse_idempotency_key(header, "Idempotency-Key")
    done = await run_in_threadpool(  # one trip to a worker thread: check, store, commit
        lambda: api.submissions.enqueue(
            parsed.spec,
            staged,
            source=Source.API,
            client=client,
            idempotency_key=key,
            owner=owner_of(request),
        )
    )
    view = {**api.job_view(request, done.job), "created": done.created}
    headers = {"Location": f"/v1/jobs/{done.job.id}"}
    return JSONResponse(view, status_code=202 if done.created else 200, headers=headers)


@route(contract=Contract(query=JobsQuery, answers={200: Answer(JobPage)}))
async def list_jobs(request: Request, api: Api, client: str | None, query: JobsQuery) -> Response:
    """Jobs, newest first: filter by `status` (repeatable), `batch_id`, `model`, `source`;
    page with `limit` and `before` (the `next_cursor` of the previous page)."""
    page = await run_in_threadpool(
        lambda: api.store.jobs.list_jobs(
            statuses=query.status or None,
            batch_id=query.batch_id,
            model=query.model,
            source=query.source,
            owner=scope_of(request),
            before=query.before,
            limit=query.limit,
        )
    )
    return JSONResponse(
        {
            "object": "list",
            "data": [api.job_view(request, job) for job in page.jobs],
            "next_cursor": page.next_cursor,
        }
    )


@route(contract=Contract(answers={200: _JOB}))
async def get_job(request: Request, api: Api, client: str | None) -> Response:
    """One job: its state, progress, request, result and `image_urls`."""
    job = await run_in_threadpool(api.visible_job, request, request.path_params["job_id"])
    return JSONResponse(api.job_view(request, job))


@route(contract=Contract(answers={200: Answer(description="the image", media="image/*")}))
async def job_input(request: Request, api: Api, client: str | None) -> Response:
    """An img2img or inpainting job's input as it was sent: `init` or `mask`."""
    job = await run_in_threadpool(api.visible_job, request, request.path_params["job_id"])
    role = f"{request.path_params['name']}_image"
    if role not in inputs.ROLES or getattr(job.spec, role) is None:
        raise errors.JobNotFound(f"job {job.id} has no {request.path_params['name']} image")
    path = await run_in_threadpool(
        inputs.stored_file, Path(api.settings.paths.data_dir), job.id, role
    )
    if path is None:
        raise errors.JobNotFound(f"the {request.path_params['name']} image of {job.id} is gone")
    kind = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}[path.suffix[1:]]
    return FileResponse(path, media_type=kind, headers={"Cache-Control": "max-age=86400"})


@route(contract=Contract(answers={200: _JOB}, errors={409: "the job has finished"}))
async def cancel_job(request: Request, api: Api, client: str | None) -> Response:
    """Queued: cancelled at once. Running: stops at its next step."""
    job = await run_in_threadpool(api.visible_job, request, request.path_params["job_id"])
    job = await run_in_threadpool(api.store.jobs.cancel, job.id)
    return JSONResponse(api.job_view(request, job))


@route(contract=Contract(answers={200: _JOB}, errors={409: "the job is not failed or cancelled"}))
async def retry_job(request: Request, api: Api, client: str | None) -> Response:
    """Queue a failed or cancelled job again (409 for a job in another state)."""
    job = await run_in_threadpool(api.visible_job, request, request.path_params["job_id"])
    job = await run_in_threadpool(api.store.jobs.retry, job.id)
    return JSONResponse(api.job_view(request, job))


@route(
    contract=Contract(
        takes_body=Priority,
        example={"priority": 10},
        answers={200: _JOB},
        errors={409: "the job is no longer queued"},
    )
)
async def set_priority(request: Request, api: Api, client: str | None, body: Priority) -> Response:
    """Change a queued job's priority: `{"priority": N}`, -100..100, higher runs first."""
    # Another's job first: its id gets the 404 of an unknown one, whatever the body asks.
    job = await run_in_threadpool(api.visible_job, request, request.path_params["job_id"])
    check_priority(request, body.priority)
    job = await run_in_threadpool(lambda: api.store.jobs.set_priority(job.id, body.priority))
    return JSONResponse(api.job_view(request, job))


@route(contract=Contract(query=StatsQuery, answers={200: Answer(Stats)}))
async def stats(request: Request, api: Api, client: str | None, query: StatsQuery) -> Response:
    """The queue now (jobs by state) and the last hour: jobs finished by state, images
    made, mean wait and run times, and images per minute (`images_per_minute_series`,
    60 numbers, oldest minute first)."""
    window = query.window_s

    def read() -> dict[str, Any]:
        return {
            **api.store.jobs.stats(window_s=window).to_dict(),
            "images_per_minute_series": api.store.jobs.images_timeline(
                window_s=window, bucket_s=window / 60
            ),
        }

    return JSONResponse({"object": "stats", **await run_in_threadpool(read)})


@route(
    contract=Contract(
        answers={200: Answer(description="progress events, then done", media="text/event-stream")},
        errors={429: "too many open streams (server.max_streams_per_client)"},
    )
)
async def job_events(request: Request, api: Api, client: str | None) -> Response:
    """Server-sent events: `progress` whenever the job's status or step changes, then
    one `done` with the whole job when it ends."""
    job = await run_in_threadpool(api.visible_job, request, request.path_params["job_id"])
    holder = bucket_of(api, request)  # the key's id, never its name
    api.streams.take(holder)  # server.max_streams_per_client: 429 past it
    return EventSourceResponse(_events(api, request, job.id, holder), ping=15)


async def _events(
    api: Api, request: Request, job_id: str, holder: str
) -> AsyncIterator[dict[str, Any]]:
    try:
        async for event in _progress_events(api, request, job_id):
            yield event
    finally:  # the job ended, or the client went away
        api.streams.give_back(holder)


async def _progress_events(
    api: Api, request: Request, job_id: str
) -> AsyncIterator[dict[str, Any]]:
    last: tuple[Any, ...] = ()
    with watching(api.store, jobs=[job_id]) as changes:
        while True:
            job = await run_in_threadpool(api.store.jobs.get, job_id)
            state = (job.status, job.progress_step, job.progress_total)
            if state != last:
                last = state
                progress = {
                    "id": job.id,
                    "status": job.status.value,
                    "step": job.progress_step,
                    "total": job.progress_total,
                }
                yield {"event": "progress", "data": json.dumps(progress)}
            if job.finished:
                yield {"event": "done", "data": json.dumps(api.job_view(request, job))}
                return
            await changes.wait_async(WAKE_AT_LEAST_S)


@route(
    contract=Contract(
        body=_batch,
        example={"requests": [{"prompt": "one"}, {"prompt": "two", "id": "two-1"}]},
        answers={
            202: Answer(Batch, "Queued"),
            200: Answer(Batch, "The same batch again: its first jobs"),
        },
        errors={
            404: "a model or LoRA is not installed",
            409: "an idempotency key was used for another request",
            413: "more requests than generation.max_batch_requests",
        },
        link="batch_id",
    )
)
async def create_batch(request: Request, api: Api, client: str | None) -> Response:
    """Queue several jobs as one batch, all or nothing: `{"requests": [...]}`."""
    body = require_object(await api.read_body(request, images=True))
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise errors.InvalidParameters("requests must be a non-empty list", field="requests")
    items = []
    for index, item in enumerate(requests):
        try:
            item, staged = await api.submissions.stage_images(item)
            parsed = parse_request(item, api.settings.generation)
            check_priority(request, parsed.spec.priority)
            spec = await api.submissions.resolve_model(parsed.spec)
        except errors.SpoolError as exc:
            details = {**exc.details, "index": index}
            raise type(exc)(f"requests[{index}]: {exc.message}", **details) from None
        items.append(
            (NewJob(spec, parsed.idempotency_key, client, owner=owner_of(request)), staged)
        )
    batch = await run_in_threadpool(api.submissions.enqueue_batch, items, Source.API)
    view = {
        "object": "batch",
        "id": batch.batch_id,
        "job_ids": batch.job_ids,
        "created": batch.created,
    }
    headers = {"Location": f"/v1/batches/{batch.batch_id}"}
    return JSONResponse(view, status_code=202 if batch.created else 200, headers=headers)


@route(contract=Contract(answers={200: Answer(BatchState)}))
async def get_batch(request: Request, api: Api, client: str | None) -> Response:
    """A batch: its jobs, and how many are in each state."""
    batch_id = request.path_params["batch_id"]
    job_ids = await run_in_threadpool(api.store.jobs.batch_job_ids, batch_id)
    jobs = await run_in_threadpool(api.store.jobs.get_many, job_ids)
    scope = scope_of(request)
    if scope is not None and any(job.owner != scope for job in jobs):  # one owner's
        raise errors.BatchNotFound(f"no batch {batch_id}", batch_id=batch_id)
    counts = {status.value: 0 for status in JobStatus}
    for job in jobs:
        counts[job.status.value] += 1
    return JSONResponse(
        {
            "object": "batch",
            "id": batch_id,
            "counts": counts,
            "finished": all(job.finished for job in jobs),
            "jobs": [api.job_view(request, job) for job in jobs],
        }
    )
