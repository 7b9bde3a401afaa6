"""AUTOMATIC1111's API (`/sdapi/v1/`): what its clients list and poll.
Models, samplers, schedule types, LoRAs, VAEs, upscalers: what exists here, in A1111's
shapes; progress, interrupt and skip for the asking client's own jobs; and the lists of
what this server has none of (face restorers, styles, embeddings, hypernetworks),
answered empty so that clients which ask for them at start-up carry on."""

from __future__ import annotations

import base64
import binascii
import io
import time
from typing import Any

from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .... import errors
from .... import samplers as sampler_names
from ....hires import UPSCALERS
from ....records import JobRecord
from ....states import JobStatus
from ...edge.context import Api, owner_of, route
from ...edge.contract import Answer, Contract
from ...edge.http import require_object
from .answers import (
    NOTHING,
    NULL,
    A1111Checkpoints,
    A1111Embeddings,
    A1111Flags,
    A1111LatentModes,
    A1111Loras,
    A1111PngInfo,
    A1111Progress,
    A1111Samplers,
    A1111Schedules,
    A1111Upscalers,
    A1111Vaes,
)
from .options import A1111, TAG, checkpoint_title


def _answers(answer: Any) -> Contract:
    """A route's contract: what it answers (200), in the AUTOMATIC1111 API."""
    return Contract(
        answers={200: answer if isinstance(answer, Answer) else Answer(answer)}, tag=TAG
    )


_DONE = Answer(NULL, "Done (A1111 answers null)")
# A PNG with an infotext (8x8), for the schema to list: any image PIL reads is taken,
# which no schema can tell from other text.
EXAMPLE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAVXRFWHRwYXJhbWV0ZXJzAGEgbGlnaHRob3Vz"
    "ZQpTdGVwczogMjAsIFNhbXBsZXI6IEV1bGVyIGEsIENGRyBzY2FsZTogNywgU2VlZDogMSwgU2l6ZTogOHg4"
    "JuzruAAAABVJREFUeNpjrJi2hQEbYGLAAQanBABi5wHSLBK2SgAAAABJRU5ErkJggg=="
)
_PNG_INFO_BODY = {
    "type": "object",
    "required": ["image"],
    "properties": {
        "image": {
            "type": "string",
            "enum": [EXAMPLE_PNG, f"data:image/png;base64,{EXAMPLE_PNG}"],
            "description": "an image as base64 (a data: URL too): any PIL reads. A schema "
            "cannot tell an image from other text: it lists an example",
        }
    },
}

# A1111's image upscalers are listed with the scale their model makes (4 for ESRGAN);
# the plain resamplers it lists with 4 too.
_RESAMPLER_SCALE = 4


@route(shape=A1111, contract=_answers(A1111Checkpoints))
async def sd_models(request: Request, api: Api, client: str | None) -> Response:
    """The installed models as A1111 lists checkpoints (`title` is what to set)."""
    models = await run_in_threadpool(api.registry.scan)
    return JSONResponse(
        [
            {
                "title": checkpoint_title(m.id),
                "model_name": checkpoint_title(m.id),
                "hash": None,
                "sha256": None,
                "filename": m.path.name,
                "config": None,
            }
            for m in sorted(models, key=lambda m: m.id)
            if m.ok
        ]
    )


@route(shape=A1111, contract=_answers(A1111Samplers))
async def samplers(request: Request, api: Api, client: str | None) -> Response:
    """The samplers, by A1111's names: each works with every schedule type listed (its
    `options` as A1111 sends them: every value a string, `"True"`)."""
    listed = sampler_names.a1111_samplers()
    for sampler in listed:
        sampler["options"] = {k: str(v) for k, v in sampler["options"].items()}
    return JSONResponse(listed)


@route(shape=A1111, contract=_answers(A1111Schedules))
async def schedulers(request: Request, api: Api, client: str | None) -> Response:
    """The schedule types (A1111's `scheduler` field): each works with every sampler."""
    return JSONResponse(sampler_names.a1111_schedules())


@route(shape=A1111, contract=_answers(A1111Loras))
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


@route(shape=A1111, contract=_answers(A1111Upscalers))
async def upscalers(request: Request, api: Api, client: str | None) -> Response:
    """The image upscalers hires fix takes (`hr_upscaler`): plain resamplers, no
    upscaler models."""
    return JSONResponse(
        [
            {
                "name": upscaler.name,
                "model_name": None,
                "model_path": None,
                "model_url": None,
                "scale": _RESAMPLER_SCALE,
            }
            for upscaler in UPSCALERS
            if not upscaler.latent
        ]
    )


@route(shape=A1111, contract=_answers(A1111LatentModes))
async def latent_upscale_modes(request: Request, api: Api, client: str | None) -> Response:
    """The latent upscale modes hires fix takes (`hr_upscaler`)."""
    return JSONResponse([{"name": upscaler.name} for upscaler in UPSCALERS if upscaler.latent])


def _installed_vaes(api: Api) -> list[dict[str, Any]]:
    return [
        {"model_name": vae.file_name, "filename": str(vae.path)}
        for vae in sorted(api.registry.vaes.scan(), key=lambda vae: vae.file_name)
        if vae.ok
    ]


@route(shape=A1111, contract=_answers(A1111Vaes))
async def sd_vae(request: Request, api: Api, client: str | None) -> Response:
    """The VAEs `sd_vae` takes: `Automatic` and `None` (each model's own), then those
    installed in `<models>/vae/` by file name."""
    choices = [{"model_name": name, "filename": None} for name in ("Automatic", "None")]
    return JSONResponse(choices + await run_in_threadpool(_installed_vaes, api))


@route(shape=A1111, contract=_answers(A1111Vaes))
async def sd_modules(request: Request, api: Api, client: str | None) -> Response:
    """Forge's separate modules: the VAEs installed in `<models>/vae/`."""
    return JSONResponse(await run_in_threadpool(_installed_vaes, api))


@route(shape=A1111, contract=_answers(A1111Embeddings))
async def embeddings(request: Request, api: Api, client: str | None) -> Response:
    """Textual-inversion embeddings: none here (`loaded` and `skipped` empty)."""
    return JSONResponse({"loaded": {}, "skipped": {}})


@route(shape=A1111, contract=_answers(NOTHING))
async def nothing_listed(request: Request, api: Api, client: str | None) -> Response:
    """What this server has none of (face restorers, prompt styles, hypernetworks): an
    empty list."""
    return JSONResponse([])


@route(shape=A1111, contract=_answers(A1111Flags))
async def cmd_flags(request: Request, api: Api, client: str | None) -> Response:
    """A1111's command-line flags: `api` and, with keys, `api_auth` (masked)."""
    return JSONResponse({"api": True, "api_auth": "***" if api.keys.required else None})


@route(shape=A1111, contract=_answers(_DONE))
async def refreshed(request: Request, api: Api, client: str | None) -> Response:
    """Rescan the VAEs (embeddings: none here)."""
    await run_in_threadpool(api.registry.vaes.scan)
    return JSONResponse(None)


@route(
    shape=A1111,
    contract=Contract(
        body=_PNG_INFO_BODY,
        answers={200: Answer(A1111PngInfo)},
        example={"image": EXAMPLE_PNG},
        tag=TAG,
    ),
)
async def png_info(request: Request, api: Api, client: str | None) -> Response:
    """The parameters text of a PNG (base64, a `data:` URL too): `info` (the infotext,
    "" when it has none), `items` (its other text chunks) and `parameters` (the
    infotext's settings as pairs)."""
    body = require_object(await api.read_body(request, images=True))
    given = body.get("image")
    if not isinstance(given, str) or not given:
        raise errors.InvalidParameters("image must be a base64 PNG", field="image")
    data = given.split(",", 1)[1] if given.startswith("data:") else given

    def read() -> dict[str, Any]:
        try:
            with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as image:
                texts = {k: str(v) for k, v in (getattr(image, "text", None) or {}).items()}
                comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
        except (binascii.Error, ValueError, UnidentifiedImageError, OSError,
                Image.DecompressionBombError):  # fmt: skip
            raise errors.InvalidParameters("image is not a base64 image", field="image") from None
        info = texts.pop("parameters", "") or _user_comment(comment)
        return {"info": info, "items": texts, "parameters": infotext_settings(info)}

    return JSONResponse(await run_in_threadpool(read))


_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286


def _user_comment(value: Any) -> str:
    """EXIF UserComment text (a JPEG's or WebP's infotext, as A1111 writes it: an
    8-byte character code, then the text)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, bytes) or len(value) < 8:
        return ""
    code, text = value[:8], value[8:]
    if code.startswith(b"UNICODE"):
        decoded = (text.decode(order, errors="replace") for order in ("utf-16-be", "utf-16-le"))
        return max(decoded, key=lambda t: sum(c.isascii() for c in t))  # either byte order
    return text.decode("utf-8", errors="replace").rstrip("\x00")


def infotext_settings(infotext: str) -> dict[str, str]:
    """The `Key: value` pairs of an infotext's last line (quoted values kept whole)."""
    lines = infotext.strip().splitlines()
    if not lines:
        return {}
    pairs: dict[str, str] = {}
    last, part, quoted = lines[-1], "", False
    for char in last + ",":
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            key, colon, value = part.partition(":")
            if colon:
                pairs[key.strip()] = value.strip().strip('"')
            part = ""
            continue
        part += char
    return pairs


async def _running(api: Api, request: Request) -> tuple[JobRecord | None, int]:
    """This client's newest running job, and how many of its jobs are queued or running."""
    owner = owner_of(request)

    def read() -> tuple[JobRecord | None, int]:
        running = api.store.jobs.list_jobs(statuses=[JobStatus.RUNNING], owner=owner, limit=1)
        counts = api.store.jobs.counts(owner=owner)  # one count, however many are queued
        return (running.jobs[0] if running.jobs else None), (
            counts[JobStatus.QUEUED] + counts[JobStatus.RUNNING]
        )

    return await run_in_threadpool(read)


@route(shape=A1111, contract=_answers(A1111Progress))
async def progress(request: Request, api: Api, client: str | None) -> Response:
    """This client's newest running job: `progress` 0..1, `eta_relative` seconds,
    `state` as A1111 has it (`job_count`: its jobs queued or running; `sampling_step`
    and `sampling_steps`, both passes of a hires job counted), `current_image` null."""
    job, count = await _running(api, request)
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
                "stopping_generation": False,
                "job": job.id if job else "",
                "job_count": count,
                "job_timestamp": job.created_at.strftime("%Y%m%d%H%M%S") if job else "0",
                "job_no": 0,
                "sampling_step": step,
                "sampling_steps": total,
            },
            "current_image": None,
            "textinfo": None,
            "current_task": job.id if job else None,
        }
    )


async def _stop(api: Api, request: Request, *, newest_only: bool) -> None:
    owner = owner_of(request)

    def stop() -> None:
        limit = 1 if newest_only else 500
        running = api.store.jobs.list_jobs(statuses=[JobStatus.RUNNING], owner=owner, limit=limit)
        for job in running.jobs:
            api.store.jobs.cancel(job.id)

    await run_in_threadpool(stop)


@route(shape=A1111, contract=_answers(_DONE))
async def interrupt(request: Request, api: Api, client: str | None) -> Response:
    """Stop this client's running jobs (each at its next step)."""
    await _stop(api, request, newest_only=False)
    return JSONResponse(None)


@route(shape=A1111, contract=_answers(_DONE))
async def skip(request: Request, api: Api, client: str | None) -> Response:
    """Stop this client's newest running job at its next step (A1111 skips to the next
    image of its batch; here a request's images are one job, so skipping ends it)."""
    await _stop(api, request, newest_only=True)
    return JSONResponse(None)


@route(shape=A1111, contract=_answers(_DONE))
async def refresh_checkpoints(request: Request, api: Api, client: str | None) -> Response:
    """Rescan the models directory."""
    await run_in_threadpool(lambda: api.registry.scan(force=True))
    return JSONResponse(None)


@route(shape=A1111, contract=_answers(_DONE))
async def refresh_loras(request: Request, api: Api, client: str | None) -> Response:
    """Rescan the LoRAs."""
    await run_in_threadpool(api.registry.loras.scan)
    return JSONResponse(None)
