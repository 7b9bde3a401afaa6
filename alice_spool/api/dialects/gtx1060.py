"""The GTX 1060 API: a thin
translator. `POST /generate` queues the job (source `gtx1060`) and answers when it is
done with one base64 PNG and its metadata. Its own limits (prompt 1..500 characters,
steps 1..50, width and height 256..768 in multiples of 64, seed 0..2**32-1) and error
body `{"error", "details", "error_code"}`: 422 for what it refuses, 408 on timeout, 503
without a model."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ... import errors
from ...spec import SEED_MAX, parse_spec
from ...states import Source
from ..edge.context import Api, route
from ..edge.http import bounded, refuse_unknown, require_object
from .pipeline import Dialect, base64_text, finished, images_of, png_of, submit

_FIELDS = {"prompt", "steps", "width", "height", "seed"}


def _error_body(exc: errors.SpoolError, status: int) -> Response:
    field = exc.details.get("field")
    body = {"error": exc.message, "details": f"field: {field}" if field else None}
    body["error_code"] = exc.code
    return JSONResponse(body, status_code=status)


GTX1060 = Dialect(
    "gtx1060",
    Source.GTX1060,
    statuses={
        errors.InvalidParameters: 422,
        errors.InvalidJson: 422,
        errors.JobTimeout: 408,
        errors.ModelNotFound: 503,
    },
    error_body=_error_body,
)


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


@route(shape=GTX1060)
async def generate(request: Request, api: Api, client: str | None) -> Response:
    """One image: `{"image_base64", "metadata": {prompt, steps, width, height, seed,
    generation_time_seconds, model_version}}` when it is done."""
    body = require_object(await api.read_body(request))
    spec = parse_spec(native(body), api.settings.generation)
    job = await submit(request, api, spec, GTX1060, client)
    done = await finished(api, job.id)
    (image,) = images_of(done) or [{}]
    png = await png_of(api, image)
    timings = (done.result or {}).get("timings") or {}
    return JSONResponse(
        {
            "image_base64": base64_text(png),
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
