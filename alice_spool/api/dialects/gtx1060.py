"""The GTX 1060 API: a thin
translator. `POST /generate` queues the job (source `gtx1060`) and answers when it is
done with one base64 PNG and its metadata. Its own limits (prompt 1..500 characters,
steps 1..50, width and height 256..768 in multiples of 64, seed 0..2**32-1) and error
body `{"error", "details", "error_code"}`: 422 for what it refuses, 408 on timeout, 503
without a model."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, RootModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ... import errors
from ...config import Settings
from ...spec import SEED_MAX, parse_spec
from ...states import Source
from ..edge.context import Api, route
from ..edge.contract import Answer, Contract, ErrorBody
from ..edge.http import bounded, refuse_unknown, require_object
from ..edge.schemas import TEXT
from .pipeline import Dialect, base64_text, finished, images_of, png_of, submit

TAG = "GTX 1060"
_FIELDS = {"prompt", "steps", "width", "height", "seed"}
# Its own limits (the card's): within the spool's, which may be lower (generation.max_*).
PROMPT_CHARS = 500
STEPS = (1, 50)
SIDE = (256, 768, 64)  # the least, the most, and a multiple of


class Gtx1060Error(BaseModel):
    """The GTX 1060 API's error body."""

    error: str
    details: str | None = Field(description="`field: <name>`: the field at fault")
    error_code: str


class Gtx1060Errors(RootModel[Gtx1060Error | ErrorBody]):
    """Its error answers: its own body; what is refused before any of its routes runs
    (an unknown path's 404, the guard's 403, 415 and 421) has the server's own."""


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
    error_model=Gtx1060Errors,
)


class Gtx1060Metadata(BaseModel):
    prompt: str
    steps: int
    width: int | None
    height: int | None
    seed: int | None
    generation_time_seconds: float | None
    model_version: str | None = Field(description="sd/<name>")


class Gtx1060Image(BaseModel):
    image_base64: str = Field(description="the PNG, base64")
    metadata: Gtx1060Metadata


def _body(settings: Settings) -> dict[str, Any]:
    """Its body: each field as `native` checks it (a field null is one left out)."""
    low, high, multiple = SIDE
    side = {"type": ["integer", "null"], "minimum": low, "maximum": high,
            "multipleOf": multiple, "default": 512}  # fmt: skip
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["prompt"],
        "properties": {
            "prompt": {
                "type": "string",
                "minLength": 1,
                "maxLength": PROMPT_CHARS,
                "pattern": TEXT,
                "description": "not blank; no NUL characters",
            },
            "steps": {
                "type": ["integer", "null"],
                "minimum": STEPS[0],
                "maximum": min(STEPS[1], settings.generation.max_steps),
                "default": 20,
            },
            "width": side,
            "height": side,
            "seed": {
                "type": ["integer", "null"],
                "minimum": 0,
                "maximum": SEED_MAX,
                "description": "random when left out",
            },
        },
    }


def native(body: dict[str, Any]) -> dict[str, Any]:
    refuse_unknown(body, _FIELDS)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not 1 <= len(prompt) <= PROMPT_CHARS or not prompt.strip():
        raise errors.InvalidParameters(
            f"prompt must be 1..{PROMPT_CHARS} characters", field="prompt"
        )
    fields = {
        "prompt": prompt,
        "steps": bounded(body, "steps", 20, *STEPS, whole=True),
        "seed": bounded(body, "seed", None, 0, SEED_MAX, whole=True),
    }
    low, high, multiple = SIDE
    for name in ("width", "height"):
        value = bounded(body, name, 512, low, high, whole=True)
        if value % multiple:
            raise errors.InvalidParameters(f"{name} must be a multiple of {multiple}", field=name)
        fields[name] = value
    return fields


@route(
    shape=GTX1060,
    contract=Contract(
        body=_body,
        example={"prompt": "a lighthouse", "steps": 20, "width": 512, "height": 512, "seed": 42},
        answers={200: Answer(Gtx1060Image)},
        errors={
            404: "a LoRA named in the prompt is not installed, or the job's image is gone",
            408: "the job did not finish in server.request_timeout_s (it stays queued)",
            409: "the job was cancelled while the request waited",
            422: "invalid JSON or parameters",
            503: "no model to run it (or the queue is full)",
        },
        tag=TAG,
    ),
)
async def generate(request: Request, api: Api, client: str | None) -> Response:
    """One image: `{"image_base64", "metadata": {prompt, steps, width, height, seed,
    generation_time_seconds, model_version}}` when it is done."""
    body = require_object(await api.read_body(request))
    spec = parse_spec(native(body), api.settings.generation)
    job = await submit(request, api, spec, GTX1060, client)
    done = await finished(api, job.id)
    shown = [image for image in images_of(done) if "file" in image and not image.get("deleted")]
    if not shown:
        raise errors.ImageNotFound(f"job {done.id} has no image (deleted, or expired)")
    image = shown[0]
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
