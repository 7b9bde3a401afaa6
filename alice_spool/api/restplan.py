"""The REST plan's API (`reference/rest-api-plan.md`, DESIGN section 14): a thin
translator. txt2img and img2img queue the job (source `restplan`) and answer when it
is done with one base64 PNG, its seed, model and latency; the WebSocket
`/stream/generate/txt2img` sends the job's steps as they happen, then the image. The
spool's own limits apply (the plan's 512..1024 were its hardware's). Errors as FastAPI
gives them, `{"detail": ...}`."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from .. import errors
from ..models import Source
from ..records import JobRecord
from ..spec import MODEL_PREFIX, parse_spec
from .context import Api, identify, owner_of, route
from .http import (
    STATUS,
    WAKE_AT_LEAST_S,
    refuse_unknown,
    require_object,
    wait_for_job,
    watching,
)
from .openai import finished_or_raise

_FIELDS = {"prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "seed",
           "width", "height", "model_id", "lora_path", "lora_scale"}  # fmt: skip
_STATUS = {"invalid_parameters": 422, "invalid_json": 422}


def error_answer(exc: errors.SpoolError) -> Response:
    status = _STATUS.get(exc.code) or STATUS.get(exc.code, 400)
    return JSONResponse({"detail": exc.message, "code": exc.code}, status_code=status)


def _model(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise errors.InvalidParameters("model_id must be a string", field="model_id")
    return value if value.startswith(MODEL_PREFIX) else MODEL_PREFIX + value


def native(body: dict[str, Any], *, img2img: bool = False) -> dict[str, Any]:
    allowed = _FIELDS | ({"image", "strength"} if img2img else set())
    refuse_unknown(body, allowed)
    seed = body.get("seed", -1)
    fields: dict[str, Any] = {
        "prompt": body.get("prompt"),
        "negative_prompt": body.get("negative_prompt") or "",
        "seed": None if seed in (-1, None) else seed,
    }
    for theirs, ours in (("num_inference_steps", "steps"), ("guidance_scale", "guidance_scale"),
                         ("width", "width"), ("height", "height")):  # fmt: skip
        if body.get(theirs) is not None:
            fields[ours] = body[theirs]
    model = _model(body.get("model_id"))
    if model is not None:
        fields["model"] = model
    if body.get("lora_path"):
        lora = str(body["lora_path"])
        fields["loras"] = [{"name": lora, "scale": body.get("lora_scale", 1.0)}]
    if img2img:
        if not body.get("image"):
            raise errors.InvalidParameters("image (base64) is required", field="image")
        fields["init_image"] = body["image"]
        if body.get("strength") is not None:
            fields["strength"] = body["strength"]
    return fields


async def _queue(request: Any, api: Api, body: Any, client: str | None, img2img: bool) -> str:
    fields = native(require_object(body), img2img=img2img)
    fields, staged = await run_in_threadpool(api.take_images, fields)
    spec = parse_spec(fields, api.settings.generation)
    queued = await run_in_threadpool(
        lambda: api.enqueue(
            spec, staged, source=Source.RESTPLAN, client=client, owner=owner_of(request)
        )
    )
    return queued.job.id


async def _image(api: Api, done: JobRecord) -> dict[str, Any]:
    (image,) = (done.result or {}).get("images") or [{}]
    png = await run_in_threadpool(api.image_path(image["file"]).read_bytes)
    return {"image": base64.b64encode(png).decode(), "seed": image.get("seed")}


async def _answer(request: Request, api: Api, client: str | None, img2img: bool) -> Response:
    started = time.monotonic()
    body = await api.read_body(request, images=img2img)
    job_id = await _queue(request, api, body, client, img2img)
    timeout = api.settings.server.request_timeout_s
    done = finished_or_raise(await wait_for_job(api.store, job_id, timeout))
    shown = await _image(api, done)
    latency = round((time.monotonic() - started) * 1000)
    return JSONResponse({**shown, "model_id": done.model, "latency_ms": latency})


@route(shape=error_answer)
async def txt2img(request: Request, api: Api, client: str | None) -> Response:
    """One image: `{"image" (base64 PNG), "seed", "model_id", "latency_ms"}`."""
    return await _answer(request, api, client, img2img=False)


@route(shape=error_answer)
async def img2img(request: Request, api: Api, client: str | None) -> Response:
    """txt2img with `image` (base64) and `strength`."""
    return await _answer(request, api, client, img2img=True)


@route(shape=error_answer)
async def load_model(request: Request, api: Api, client: str | None) -> Response:
    """`{"model_id"}`: an idle runner loads that model now (within a second or so), so
    that its first job does not wait for the load; 404 if it is not installed."""
    body = require_object(await api.read_body(request))
    model = _model(body.get("model_id"))
    if model is None:
        raise errors.InvalidParameters("model_id is required", field="model_id")
    spec = await api.resolve_model(parse_spec({"prompt": "check", "model": model}))
    await run_in_threadpool(api.registry.request_preload, str(spec.model))
    return JSONResponse({"status": "ok", "model_id": spec.model})


@route(shape=error_answer)
async def list_loras(request: Request, api: Api, client: str | None) -> Response:
    """The installed LoRAs, by the names `lora_path` takes."""
    found = await run_in_threadpool(api.registry.loras.scan)
    return JSONResponse({"loras": sorted(lora.id.removeprefix("lora/") for lora in found)})


async def stream_txt2img(websocket: WebSocket) -> None:
    """The WebSocket: the client sends a txt2img body; the server sends `{"type":
    "progress", "step", "total"}` as the steps happen, then `{"type": "result", "image",
    "seed"}` (or `{"type": "error", "detail", "code"}`), and closes."""
    api: Api = websocket.app.state.api
    address = api.client_address(websocket)
    try:  # a wrong key counts against the address, as on every route
        principal = await run_in_threadpool(identify, api, websocket, address)
    except errors.SpoolError as exc:
        await websocket.close(code=1008, reason=exc.message[:120])
        return
    websocket.state.principal = principal
    await websocket.accept()
    try:
        body = json.loads(await websocket.receive_text())
        client = principal.name if principal else None
        job_id = await _queue(websocket, api, body, client, img2img=False)
        last = None
        with watching(api.store, jobs=[job_id]) as changes:
            while True:
                job = await run_in_threadpool(api.store.get, job_id)
                if job.progress_total and (job.progress_step, job.progress_total) != last:
                    last = (job.progress_step, job.progress_total)
                    await websocket.send_json(
                        {"type": "progress", "step": job.progress_step, "total": job.progress_total}
                    )
                if job.finished:
                    break
                await changes.wait_async(WAKE_AT_LEAST_S)
        done = finished_or_raise(job)
        await websocket.send_json({"type": "result", **await _image(api, done)})
    except errors.SpoolError as exc:
        await websocket.send_json({"type": "error", "detail": exc.message, "code": exc.code})
    except (ValueError, TypeError):
        await websocket.send_json(
            {"type": "error", "detail": "send one JSON object", "code": "invalid_json"}
        )
    except WebSocketDisconnect:
        return
    await websocket.close()
