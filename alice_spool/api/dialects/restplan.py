"""The REST plan's API: a thin
translator. txt2img and img2img queue the job (source `restplan`) and answer when it
is done with one base64 PNG, its seed, model and latency; the WebSocket
`/stream/generate/txt2img` sends the job's steps as they happen, then the image. The
spool's own limits apply (the plan's 512..1024 were its hardware's). Errors as FastAPI
gives them, `{"detail": ...}`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ... import errors
from ...records import JobRecord
from ...spec import MODEL_PREFIX, load_json, parse_spec
from ...states import Source
from ..edge.context import Api, admit, bucket_of, route
from ..edge.http import WAKE_AT_LEAST_S, refuse_unknown, require_object, watching
from .pipeline import Dialect, base64_text, finished, finished_or_raise, images_of, png_of, submit

log = logging.getLogger(__name__)

_FIELDS = {"prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "seed",
           "width", "height", "model_id", "lora_path", "lora_scale"}  # fmt: skip


def _error_body(exc: errors.SpoolError, status: int) -> Response:
    return JSONResponse({"detail": exc.message, "code": exc.code}, status_code=status)


RESTPLAN = Dialect(
    "restplan",
    Source.RESTPLAN,
    statuses={errors.InvalidParameters: 422, errors.InvalidJson: 422},  # FastAPI's
    error_body=_error_body,
)


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
    return (await submit(request, api, spec, RESTPLAN, client, staged)).id


async def _image(api: Api, done: JobRecord) -> dict[str, Any]:
    (image,) = images_of(done) or [{}]
    return {"image": base64_text(await png_of(api, image)), "seed": image.get("seed")}


async def _answer(request: Request, api: Api, client: str | None, img2img: bool) -> Response:
    started = time.monotonic()
    body = await api.read_body(request, images=img2img)
    job_id = await _queue(request, api, body, client, img2img)
    done = await finished(api, job_id)
    shown = await _image(api, done)
    latency = round((time.monotonic() - started) * 1000)
    return JSONResponse({**shown, "model_id": done.model, "latency_ms": latency})


@route(shape=RESTPLAN)
async def txt2img(request: Request, api: Api, client: str | None) -> Response:
    """One image: `{"image" (base64 PNG), "seed", "model_id", "latency_ms"}`."""
    return await _answer(request, api, client, img2img=False)


@route(shape=RESTPLAN)
async def img2img(request: Request, api: Api, client: str | None) -> Response:
    """txt2img with `image` (base64) and `strength`."""
    return await _answer(request, api, client, img2img=True)


@route(shape=RESTPLAN)
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


@route(shape=RESTPLAN)
async def list_loras(request: Request, api: Api, client: str | None) -> Response:
    """The installed LoRAs, by the names `lora_path` takes."""
    found = await run_in_threadpool(api.registry.loras.scan)
    return JSONResponse({"loras": sorted(lora.id.removeprefix("lora/") for lora in found)})


# Close codes (RFC 6455): a policy refused, a frame of the wrong kind, text that is not
# the JSON asked for, a message too big, try again later (a limit for now).
POLICY, WRONG_KIND, BAD_DATA, TOO_BIG, TRY_LATER = 1008, 1003, 1007, 1009, 1013
INTERNAL = 1011  # the server met something it did not expect
_REFUSED_AT_THE_DOOR = (errors.Unauthorized, errors.Forbidden, errors.CrossOriginRefused)


class _Closing(Exception):
    """The socket is to be closed with this code after this error message."""

    def __init__(self, code: int, error: errors.SpoolError) -> None:
        super().__init__(error.message)
        self.code, self.error = code, error


async def stream_txt2img(websocket: WebSocket) -> None:
    """The WebSocket: the client sends a txt2img body; the server sends `{"type":
    "progress", "step", "total"}` as the steps happen, then `{"type": "result", "image",
    "seed"}` (or `{"type": "error", "detail", "code"}`), and closes. Held to the limits
    HTTP has: a wrong key is refused at the handshake; the rate limit, the stream slots
    (an open socket is a stream), `server.max_connections` and the first message's
    deadline (`server.body_timeout_s`) answer an error message and close (1013, 1008);
    a binary frame closes with 1003, text that is no JSON with 1007."""
    api: Api = websocket.app.state.api
    if api.open_sockets >= api.settings.server.max_connections:
        busy = errors.RateLimited(
            f"{api.open_sockets} connections are open (server.max_connections); try again",
            retry_after=5,
        )
        await _refuse(websocket, TRY_LATER, busy)
        return
    api.open_sockets += 1  # on the event loop: no other task between the check and this
    try:
        await _serve_socket(websocket, api)
    finally:
        api.open_sockets -= 1


async def _refuse(websocket: WebSocket, code: int, error: errors.SpoolError) -> None:
    """Accept only to say why, then close."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the client left first
        if websocket.client_state is WebSocketState.CONNECTING:
            await websocket.accept()
        await _send_error(websocket, error)
        await websocket.close(code=code, reason=error.code)


async def _send_error(websocket: WebSocket, error: errors.SpoolError) -> None:
    await websocket.send_json({"type": "error", "detail": error.message, "code": error.code})


async def _serve_socket(websocket: WebSocket, api: Api) -> None:
    try:  # a wrong key counts against the address, as on every route
        principal = await admit(api, websocket)
    except _REFUSED_AT_THE_DOOR as exc:
        await websocket.close(code=POLICY, reason=exc.message[:120])
        return
    except errors.SpoolError as exc:  # the rate limit
        await _refuse(websocket, TRY_LATER, exc)
        return
    holder = bucket_of(api, websocket)  # the key's id, never its name
    try:
        api.streams.take(holder)  # server.max_streams_per_client
    except errors.SpoolError as exc:
        await _refuse(websocket, TRY_LATER, exc)
        return
    try:
        await websocket.accept()
        client = principal.name if principal else None
        body = await _first_message(websocket, api)
        # Until the job ends or the client leaves: a socket closed early gives its
        # stream slot back at once (its job stays queued, as an HTTP request's does).
        generating = asyncio.create_task(_generate(websocket, api, body, client))
        leaving = asyncio.create_task(_until_closed(websocket))
        await asyncio.wait((generating, leaving), return_when=asyncio.FIRST_COMPLETED)
        leaving.cancel()
        if not generating.done():
            generating.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
            await generating
    except _Closing as closing:
        await _refuse(websocket, closing.code, closing.error)
    except WebSocketDisconnect:
        return
    finally:
        api.streams.give_back(holder)


async def _first_message(websocket: WebSocket, api: Api) -> Any:
    """The request: one JSON text message, within `server.body_timeout_s` and
    `server.max_body_bytes`."""
    server = api.settings.server
    try:
        async with asyncio.timeout(server.body_timeout_s):  # a silent socket holds a slot
            message = await websocket.receive()
    except TimeoutError:
        late = errors.RequestTimeout(
            f"no request within {server.body_timeout_s:g} s (server.body_timeout_s)"
        )
        raise _Closing(POLICY, late) from None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    if text is None:
        kind = errors.InvalidJson("send the request as a text message (JSON), not binary")
        raise _Closing(WRONG_KIND, kind)
    if len(text.encode()) > server.max_body_bytes:
        large = errors.BodyTooLarge(f"the request is over {server.max_body_bytes} bytes")
        raise _Closing(TOO_BIG, large)
    try:
        return load_json(text)
    except ValueError as exc:  # not JSON, nested too deeply, a number too long
        raise _Closing(BAD_DATA, errors.InvalidJson(str(exc))) from None


async def _until_closed(websocket: WebSocket) -> None:
    """Returns when the client closes the socket (anything more it sends is ignored)."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass


async def _generate(websocket: WebSocket, api: Api, body: Any, client: str | None) -> None:
    """Queue the job, send its steps as they happen, then the image (or the error)."""
    try:
        job_id = await _queue(websocket, api, body, client, img2img=False)
        last = None
        with watching(api.store, jobs=[job_id]) as changes:
            while True:
                job = await run_in_threadpool(api.store.jobs.get, job_id)
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
        await _send_error(websocket, exc)
    except WebSocketDisconnect:
        raise
    except Exception:  # a bug: its trace in the log, and the client told, not dropped
        log.exception("the WebSocket's request failed")
        failed = errors.SpoolError("internal error; see the server's log")
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the client left
            await _send_error(websocket, failed)
            await websocket.close(code=INTERNAL, reason=failed.code)
        return
    await websocket.close()
