"""AUTOMATIC1111's API (`/sdapi/v1/`, DESIGN section 14): a thin translator. Its bodies
become a `JobSpec` queued like every other door's (source `a1111`), the answer waits
for the job and is shaped as A1111 shapes it (base64 PNGs, `parameters`, `info` as a
JSON string with the seeds and infotexts). The only state of its own is A1111's
"current checkpoint" option, a client option per owner in the database."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import __version__, errors
from ..models import JobStatus, Source
from ..outbox import SAMPLER_NAMES, infotext
from ..records import JobRecord
from ..spec import MODEL_PREFIX, JobSpec, parse_spec
from .context import Api, owner_of, route
from .http import STATUS, require_object, wait_for_job
from .openai import finished_or_raise

# A1111's sampler names and the schedule types it pairs them with, onto ours.
SAMPLERS = {
    "Euler": "euler",
    "Euler a": "euler_a",
    "DDIM": "ddim",
    "PLMS": "pndm",
    "LMS": "lms",
    "Heun": "heun",
    "DPM++ 2M": "dpm++_2m",
    "DPM++ SDE": "dpm++_sde",
    "UniPC": "unipc",
}
KARRAS = {"dpm++_2m": "dpm++_2m_karras", "dpm++_sde": "dpm++_sde_karras"}
SCHEDULE_TYPES = {"automatic": "Automatic", "karras": "Karras"}
_BY_LOWER = {name.lower(): ours for name, ours in SAMPLERS.items()}
# A1111's own defaults for what a body leaves out.
DEFAULTS: dict[str, Any] = {
    "prompt": "",
    "negative_prompt": "",
    "seed": -1,
    "sampler_name": "DPM++ 2M",
    "scheduler": "Automatic",
    "batch_size": 1,
    "n_iter": 1,
    "steps": 50,
    "cfg_scale": 7.0,
    "width": 512,
    "height": 512,
    "denoising_strength": 0.75,
}
# What A1111 can do and this server cannot: refused when asked for, never ignored.
_UNSUPPORTED = {
    "enable_hr": "hires fix",
    "restore_faces": "face restoration",
    "tiling": "tiling",
    "script_name": "scripts",
    "alwayson_scripts": "extensions' scripts",
    "refiner_checkpoint": "a refiner",
    "subseed_strength": "variation seeds",
    "inpainting_mask_invert": "an inverted mask",
}
ERROR_NAMES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound"}


def error_answer(exc: errors.SpoolError) -> Response:
    """An error as A1111's API answers one: `{error, detail, body, errors}`."""
    status = STATUS.get(exc.code, 400)
    headers = {"WWW-Authenticate": "Basic"} if status == 401 else {}
    body = {
        "error": ERROR_NAMES.get(status, type(exc).__name__),
        "detail": exc.message,
        "body": exc.details.get("field") or "",
        "errors": exc.message,
        "code": exc.code,
    }
    return JSONResponse(body, status_code=status, headers=headers)


def scheduler_of(sampler: Any, schedule: Any) -> str:
    """Our scheduler for A1111's `sampler_name` (old style `DPM++ 2M Karras` too) and
    its `scheduler` (schedule type)."""
    if not isinstance(sampler, str) or not isinstance(schedule, str):
        raise errors.InvalidParameters("sampler_name and scheduler must be strings")
    name, karras = sampler.strip(), schedule.strip().lower() == "karras"
    if name.lower().endswith(" karras"):
        name, karras = name[: -len(" karras")], True
    ours = _BY_LOWER.get(name.lower())
    if ours is None:
        raise errors.InvalidParameters(
            f"sampler {sampler!r} is not known; choose one of: {', '.join(SAMPLERS)}",
            field="sampler_name",
        )
    if schedule.strip().lower() not in SCHEDULE_TYPES:
        raise errors.InvalidParameters(
            f"schedule type {schedule!r} is not known; choose Automatic or Karras",
            field="scheduler",
        )
    if karras:
        if ours not in KARRAS:
            raise errors.InvalidParameters(
                f"{name} has no Karras schedule here; it has: "
                + ", ".join(n for n, o in SAMPLERS.items() if o in KARRAS),
                field="scheduler",
            )
        return KARRAS[ours]
    return ours


def model_of(checkpoint: Any) -> str | None:
    """A model id from A1111's checkpoint title (`name`, `name.safetensors [hash]`)."""
    if checkpoint is None or checkpoint == "":
        return None
    if not isinstance(checkpoint, str):
        raise errors.InvalidParameters(
            "sd_model_checkpoint must be a string", field="sd_model_checkpoint"
        )
    title = checkpoint.strip()
    if title.endswith("]") and " [" in title:
        title = title[: title.rindex(" [")]
    for suffix in (".safetensors", ".ckpt"):
        title = title.removesuffix(suffix)
    return title if title.startswith(MODEL_PREFIX) else MODEL_PREFIX + title


def _count(body: dict[str, Any], name: str) -> int:
    value = body.get(name, DEFAULTS[name])
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise errors.InvalidParameters(f"{name} must be a whole number >= 1", field=name)
    return value


CHECKPOINT = "a1111.sd_model_checkpoint"  # the client option: A1111's current checkpoint


def native(body: dict[str, Any], *, img2img: bool, checkpoint: str | None) -> dict[str, Any]:
    """A1111's body as this server's request (`parse_spec` checks it)."""
    for name, what in _UNSUPPORTED.items():
        value = body.get(name)
        if value not in (None, False, "", 0, {}, []):
            raise errors.InvalidParameters(f"{what} ({name}) is not supported here", field=name)
    seed = body.get("seed", -1)
    override = body.get("override_settings") or {}
    if not isinstance(override, dict):
        raise errors.InvalidParameters(
            "override_settings must be an object", field="override_settings"
        )
    fields: dict[str, Any] = {
        "prompt": body.get("prompt", ""),
        "negative_prompt": body.get("negative_prompt") or "",
        "steps": body.get("steps", DEFAULTS["steps"]),
        "guidance_scale": body.get("cfg_scale", DEFAULTS["cfg_scale"]),
        "width": body.get("width", DEFAULTS["width"]),
        "height": body.get("height", DEFAULTS["height"]),
        "seed": None if seed in (-1, None) else seed,
        "scheduler": scheduler_of(
            body.get("sampler_name") or body.get("sampler_index") or DEFAULTS["sampler_name"],
            body.get("scheduler") or DEFAULTS["scheduler"],
        ),
        "n": _count(body, "batch_size") * _count(body, "n_iter"),
    }
    model = model_of(override.get("sd_model_checkpoint")) or checkpoint
    if model is not None:
        fields["model"] = model
    if img2img:
        given = body.get("init_images")
        if not isinstance(given, list) or not given:
            raise errors.InvalidParameters(
                "init_images must be a list with one base64 image", field="init_images"
            )
        if len(given) > 1:
            raise errors.InvalidParameters("one init image a request here", field="init_images")
        fields["init_image"] = given[0]
        if body.get("mask") is not None:
            fields["mask_image"] = body["mask"]
        fields["strength"] = body.get("denoising_strength", DEFAULTS["denoising_strength"])
    return fields


def _info(done: JobRecord, spec: JobSpec, body: dict[str, Any]) -> dict[str, Any]:
    images = (done.result or {}).get("images") or []
    loras = (done.result or {}).get("loras") or []
    seeds = [int(image.get("seed", 0)) for image in images]
    width = images[0].get("width", spec.width) if images else spec.width
    height = images[0].get("height", spec.height) if images else spec.height
    texts = [
        infotext(
            spec, seed, int(image.get("width") or 0), int(image.get("height") or 0), loras=loras
        )
        for seed, image in zip(seeds, images, strict=True)
    ]
    sampler = SAMPLER_NAMES.get(spec.scheduler, spec.scheduler)
    return {
        "prompt": spec.prompt,
        "all_prompts": [spec.prompt] * len(images),
        "negative_prompt": spec.negative_prompt,
        "all_negative_prompts": [spec.negative_prompt] * len(images),
        "seed": seeds[0] if seeds else spec.seed,
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * len(images),
        "subseed_strength": 0,
        "width": width,
        "height": height,
        "sampler_name": sampler,
        "cfg_scale": spec.guidance_scale,
        "steps": spec.steps,
        "batch_size": body.get("batch_size", 1),
        "restore_faces": False,
        "sd_model_name": (done.model or "").removeprefix(MODEL_PREFIX),
        "sd_model_hash": None,
        "denoising_strength": spec.strength,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": texts,
        "styles": [],
        "job_timestamp": done.created_at.strftime("%Y%m%d%H%M%S"),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": spec.mask_image is not None,
        "version": f"alice-spool {__version__}",
        "job_id": done.id,
    }


async def _generate(request: Request, api: Api, client: str | None, *, img2img: bool) -> Response:
    body = require_object(await api.read_body(request, images=img2img))
    owner = owner_of(request)
    chosen = await run_in_threadpool(api.store.client_option, owner, CHECKPOINT)
    fields = native(body, img2img=img2img, checkpoint=chosen)
    fields, staged = await run_in_threadpool(api.take_images, fields)
    spec = parse_spec(fields, api.settings.generation)
    queued = await run_in_threadpool(
        lambda: api.enqueue(spec, staged, source=Source.A1111, client=client, owner=owner)
    )
    timeout = api.settings.server.request_timeout_s
    done = finished_or_raise(await wait_for_job(api.store, queued.job.id, timeout))
    images: list[str] = []
    if body.get("send_images", True) is not False:
        for image in (done.result or {}).get("images") or []:
            png = await run_in_threadpool(api.image_path(image["file"]).read_bytes)
            images.append(base64.b64encode(png).decode())
    parameters = {**DEFAULTS, **body, "init_images": None, "mask": None}
    made = done.spec
    return JSONResponse(
        {"images": images, "parameters": parameters, "info": json.dumps(_info(done, made, body))}
    )


@route(shape=error_answer)
async def txt2img(request: Request, api: Api, client: str | None) -> Response:
    """AUTOMATIC1111's txt2img: queued like any job, answered when it is done with the
    images as base64 PNGs, `parameters` and `info` (a JSON string)."""
    return await _generate(request, api, client, img2img=False)


@route(shape=error_answer)
async def img2img(request: Request, api: Api, client: str | None) -> Response:
    """AUTOMATIC1111's img2img: `init_images` (one), `mask` (white repaints),
    `denoising_strength`."""
    return await _generate(request, api, client, img2img=True)


@route(shape=error_answer)
async def sd_models(request: Request, api: Api, client: str | None) -> Response:
    """The installed models as A1111 lists checkpoints (`title` is what to set)."""
    models = await run_in_threadpool(api.registry.scan)
    return JSONResponse(
        [
            {
                "title": m.id.removeprefix(MODEL_PREFIX),
                "model_name": m.id.removeprefix(MODEL_PREFIX),
                "hash": None,
                "sha256": None,
                "filename": m.path.name,
                "config": None,
            }
            for m in sorted(models, key=lambda m: m.id)
            if m.ok
        ]
    )


@route(shape=error_answer)
async def samplers(request: Request, api: Api, client: str | None) -> Response:
    """The samplers, by A1111's names (a Karras schedule where one exists)."""
    return JSONResponse(
        [
            {
                "name": name,
                "aliases": [ours],
                "options": {"scheduler": "karras"} if ours in KARRAS else {},
            }
            for name, ours in SAMPLERS.items()
        ]
    )


@route(shape=error_answer)
async def schedulers(request: Request, api: Api, client: str | None) -> Response:
    """The schedule types: Automatic, and Karras (for the samplers that have one)."""
    return JSONResponse([_schedule(name, label) for name, label in SCHEDULE_TYPES.items()])


def _schedule(name: str, label: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "aliases": None,
        "default_rho": -1,
        "need_inner_model": False,
    }


@route(shape=error_answer)
async def loras(request: Request, api: Api, client: str | None) -> Response:
    """The installed LoRAs, for `<lora:name:scale>` tags in the prompt."""
    found = await run_in_threadpool(api.registry.loras.scan)
    names = sorted(lora.id.removeprefix("lora/") for lora in found)
    return JSONResponse(
        [
            {"name": name, "alias": name, "path": f"{name}.safetensors", "metadata": {}}
            for name in names
        ]
    )


async def _current_checkpoint(request: Request, api: Api) -> str | None:
    chosen = await run_in_threadpool(api.store.client_option, owner_of(request), CHECKPOINT)
    if chosen is not None:
        return chosen
    try:
        model = await run_in_threadpool(api.registry.default, api.settings.generation.default_model)
    except errors.ModelNotFound:
        return None
    return model.id


@route(shape=error_answer)
async def get_options(request: Request, api: Api, client: str | None) -> Response:
    """A1111's options this server has: `sd_model_checkpoint` (this client's)."""
    current = await _current_checkpoint(request, api)
    return JSONResponse(
        {
            "sd_model_checkpoint": current.removeprefix(MODEL_PREFIX) if current else None,
            "sd_checkpoint_hash": None,
            "samples_format": "png",
        }
    )


@route(shape=error_answer)
async def set_options(request: Request, api: Api, client: str | None) -> Response:
    """`{"sd_model_checkpoint": title}`: the model of this client's A1111 requests that
    name none (checked installed: 404 otherwise). Other options are refused."""
    body = require_object(await api.read_body(request))
    unknown = sorted(set(body) - {"sd_model_checkpoint"})
    if unknown:
        raise errors.InvalidParameters(
            f"option {unknown[0]!r} is not one this server has", field=unknown[0]
        )
    model = model_of(body.get("sd_model_checkpoint"))
    if model is None:
        raise errors.InvalidParameters(
            "sd_model_checkpoint is required", field="sd_model_checkpoint"
        )
    spec = await api.resolve_model(JobSpec(prompt="check", model=model))  # 404 if missing
    await run_in_threadpool(
        api.store.set_client_option, owner_of(request), CHECKPOINT, str(spec.model)
    )
    return JSONResponse(None)


@route(shape=error_answer)
async def progress(request: Request, api: Api, client: str | None) -> Response:
    """This client's newest running job: `progress` 0..1, `eta_relative` seconds,
    `state` (`job_count`: its jobs queued or running; sampling step and steps)."""
    owner = owner_of(request)

    def read() -> tuple[JobRecord | None, int]:
        running = api.store.list_jobs(statuses=[JobStatus.RUNNING], owner=owner, limit=1)
        counts = api.store.counts(owner=owner)  # one count, however many are queued
        return (running.jobs[0] if running.jobs else None), (
            counts[JobStatus.QUEUED] + counts[JobStatus.RUNNING]
        )

    job, count = await run_in_threadpool(read)
    step, total = (job.progress_step or 0, job.progress_total or 0) if job else (0, 0)
    done = step / total if total else 0.0
    eta = 0.0
    if job is not None and job.started_at is not None and done > 0:
        elapsed = time.time() - job.started_at.timestamp()
        eta = max(0.0, elapsed / done - elapsed)
    return JSONResponse(
        {
            "progress": round(done, 4),
            "eta_relative": round(eta, 2),
            "state": {
                "skipped": False,
                "interrupted": bool(job and job.cancel_requested),
                "job": job.id if job else "",
                "job_count": count,
                "job_timestamp": job.created_at.strftime("%Y%m%d%H%M%S") if job else "0",
                "job_no": 0,
                "sampling_step": step,
                "sampling_steps": total,
            },
            "current_image": None,
            "textinfo": None,
        }
    )


@route(shape=error_answer)
async def interrupt(request: Request, api: Api, client: str | None) -> Response:
    """Stop this client's running jobs (each at its next step)."""
    owner = owner_of(request)

    def stop() -> int:
        running = api.store.list_jobs(statuses=[JobStatus.RUNNING], owner=owner, limit=500)
        for job in running.jobs:
            api.store.cancel(job.id)
        return len(running.jobs)

    await run_in_threadpool(stop)
    return JSONResponse(None)


@route(shape=error_answer)
async def refresh_checkpoints(request: Request, api: Api, client: str | None) -> Response:
    """Rescan the models directory."""
    await run_in_threadpool(lambda: api.registry.scan(force=True))
    return JSONResponse(None)


@route(shape=error_answer)
async def refresh_loras(request: Request, api: Api, client: str | None) -> Response:
    """Rescan the LoRAs."""
    await run_in_threadpool(api.registry.loras.scan)
    return JSONResponse(None)
