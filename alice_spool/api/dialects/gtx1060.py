"""The GTX 1060 API (`reference/gtx1060-api-design.md`, DESIGN section 14): a thin
translator. `POST /generate` queues the job (source `gtx1060`) and answers when it is
done with one base64 PNG and its metadata. Its own limits (prompt 1..500 characters,
steps 1..50, width and height 256..768 in multiples of 64, seed 0..2**32-1) and error
body `{"error", "details", "error_code"}`: 422 for what it refuses, 408 on timeout, 503
without a model."""

from __future__ import annotations

import base64
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ... import errors
from ...inputs import Staged
from ...spec import SEED_MAX, parse_spec
from ...states import Source
from ..edge.context import Api, owner_of, route
from ..edge.errors import status_of
from ..edge.http import bounded, refuse_unknown, require_object, wait_for_job
from .openai import finished_or_raise

_STATUS = {
    errors.InvalidParameters: 422,
    errors.InvalidJson: 422,
    errors.JobTimeout: 408,
    errors.ModelNotFound: 503,
}
_FIELDS = {"prompt", "steps", "width", "height", "seed"}


def error_answer(exc: errors.SpoolError) -> Response:
    status = status_of(exc, _STATUS)
    field = exc.details.get("field")
    body = {"error": exc.message, "details": f"field: {field}" if field else None}
    body["error_code"] = exc.code
    return JSONResponse(body, status_code=status)


def native(body: dict[str, Any]) -> dict[str, Any]:
    refuse_unknown(body, _FIELDS)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not 1 <= len(prompt) <= 500 or not prompt.strip():
        raise errors.InvalidParameters("prompt must be 1..500 characters", field="prompt")
    fields = {
        "prompt": prompt,
        "steps": bounded(body, "steps", 20, 1, 50, whole=True),
        "seed": bounded(body, "seed", None, 0, SEED_MAX, whole=True),
    }
    for name in ("width", "height"):
        value = bounded(body, name, 512, 256, 768, whole=True)
        if value % 64:
            raise errors.InvalidParameters(f"{name} must be a multiple of 64", field=name)
        fields[name] = value
    return fields


@route(shape=error_answer)
async def generate(request: Request, api: Api, client: str | None) -> Response:
    """One image: `{"image_base64", "metadata": {prompt, steps, width, height, seed,
    generation_time_seconds, model_version}}` when it is done."""
    body = require_object(await api.read_body(request))
    spec = parse_spec(native(body), api.settings.generation)
    queued = await run_in_threadpool(
        lambda: api.enqueue(
            spec, Staged(), source=Source.GTX1060, client=client, owner=owner_of(request)
        )
    )
    timeout = api.settings.server.request_timeout_s
    done = finished_or_raise(await wait_for_job(api.store, queued.job.id, timeout))
    (image,) = (done.result or {}).get("images") or [{}]
    png = await run_in_threadpool(api.image_path(image["file"]).read_bytes)
    timings = (done.result or {}).get("timings") or {}
    return JSONResponse(
        {
            "image_base64": base64.b64encode(png).decode(),
            "metadata": {
                "prompt": done.spec.prompt,
                "steps": done.spec.steps,
                "width": image.get("width"),
                "height": image.get("height"),
                "seed": image.get("seed"),
                "generation_time_seconds": timings.get("generate_s"),
                "model_version": done.model,
            },
        }
    )
