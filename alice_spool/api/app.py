"""The HTTP API: a Starlette app over the store. It never imports
torch; it talks to the runner only through the database and the outbox.

`create_app(settings, store, registry)` builds it; `alice-spool api` and `alice-spool
serve` run it under uvicorn.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Match, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from ..config import Settings
from ..library.registry import ModelRegistry
from ..store import Store
from .dialects import ablerefusal, gtx1060, restplan
from .dialects.a1111 import generate as a1111
from .dialects.a1111 import lists as a1111_lists
from .dialects.a1111 import options as a1111_options
from .dialects.openai import chat as openai
from .dialects.openai import images as openai_images
from .dialects.openai import models as openai_models
from .docs.docs_page import DOCS_POLICY, render_docs
from .docs.openapi import describe
from .edge.context import Api, route
from .edge.contract import Answer, Contract, methods, multipart_paths
from .edge.errors import error_response
from .edge.fetching import fetch_slots
from .edge.guard import RequestGuard
from .edge.headers import SecurityHeaders
from .edge.http import Keys
from .edge.limits import RateLimiter, stream_slots
from .routes import admin, auth, catalog, downloads, gallery, images, native, search, status

log = logging.getLogger(__name__)


def web_dir() -> Path | None:
    """The web UI's files: installed as `alice_spool.web`, or `web/` beside the package
    in a source checkout."""
    found = importlib.util.find_spec("alice_spool.web")
    candidates = [Path(p) for p in (found.submodule_search_locations or [])] if found else []
    candidates.append(Path(__file__).resolve().parent.parent.parent / "web")
    return next((c for c in candidates if (c / "index.html").is_file()), None)


async def _described(request: Request, api: Api) -> Any:
    """The description, made once per app (and again when the server's first key makes
    keys required, which adds the security of each operation)."""
    required = await run_in_threadpool(lambda: api.keys.required)
    made: dict[bool, Any] = request.app.state.descriptions
    if required not in made:
        made[required] = describe(request.app.routes, api.settings, required, api.version)
    return made[required]


@route(auth=False, contract=Contract(answers={200: Answer({"type": "object"})}))
async def openapi_json(request: Request, api: Api, client: str | None) -> Response:
    """This description of the API (OpenAPI 3.1)."""
    return JSONResponse(await _described(request, api))


@route(auth=False)
async def docs(request: Request, api: Api, client: str | None) -> Response:
    """The API reference as an HTML page (the same description as /openapi.json)."""
    page = render_docs(await _described(request, api))
    return HTMLResponse(page, headers={"Content-Security-Policy": DOCS_POLICY})


async def _not_found(request: Request, exc: Exception) -> Response:
    status_code = getattr(exc, "status_code", 404)
    if status_code == 405:  # with the methods that are (Allow, as RFC 9110 asks)
        allowed = sorted(_methods_for(request))
        return error_response(
            "method_not_allowed",
            f"{request.method} is not allowed here; {', '.join(allowed)} are",
            status=405,
            headers={"Allow": ", ".join(allowed)},
        )
    if status_code == 404:
        return error_response("not_found", f"no route {request.url.path}", status=404)
    detail = getattr(exc, "detail", "") or "bad request"
    return error_response("invalid_parameters", str(detail), status=status_code)


def _methods_for(request: Request) -> set[str]:
    """Every method some route takes at this path (one path may have several routes)."""
    methods: set[str] = set()
    for candidate in request.app.routes:
        if isinstance(candidate, Route):
            match, _ = candidate.matches(request.scope)
            if match is not Match.NONE:
                methods |= candidate.methods or set()
    return methods


async def _internal(request: Request, exc: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response("internal_error", "internal error; see the server's log", status=500)


class SpoolId(Convertor[str]):
    """An id the store made (30 hex digits): where a path's last part may be a word
    (ALICE's `/v1/models/download/status`) or an id."""

    regex = "[0-9a-f]{30}"
    schema: dict[str, Any] = {"type": "string", "pattern": f"^{regex}$"}

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("spool_id", SpoolId())


class ImageId(SpoolId):
    """A gallery image's id, `<job id>-<index>`: never `/v1/gallery/tags` or `stats`."""

    regex = "[0-9a-f]{30}-[0-9]{1,2}"
    schema = {"type": "string", "pattern": f"^{regex}$"}


register_url_convertor("image_id", ImageId())


# The words after /v1/models/ that other routes own.
_MODEL_WORDS = (
    "default", "refresh", "search", "thumbnail", "loras", "download", "load", "sd",
)  # fmt: skip


class ModelName(SpoolId):
    """A model's or an alias's name after /v1/models/ (OpenAI's models.retrieve): one
    path segment that is not a word another /v1/models/ route owns."""

    regex = f"(?!(?:{'|'.join(_MODEL_WORDS)})$)[^/]+"
    schema = {"type": "string", "pattern": f"^{regex}$"}


register_url_convertor("model_name", ModelName())


class LoraName(SpoolId):
    """A LoRA's id after /v1/loras/ (`lora/<name>` or `<name>`): never `list`, the REST
    plan's route."""

    regex = "(?!list$).+"
    schema = {"type": "string", "pattern": f"^{regex}$"}


register_url_convertor("lora_name", LoraName())


def routes() -> list[Any]:
    return [
        Route("/health", status.health, methods=["GET"]),
        Route("/metrics", status.metrics, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Route("/images/{secret}/{name}", images.image, methods=["GET"]),
        Route("/images/{name}", images.image, methods=["GET"]),  # jobs from before image secrets
        Route("/v1/chat/completions", openai.chat_completions, methods=["POST"]),
        Route("/v1/images/generations", openai_images.image_generations, methods=["POST"]),
        Route("/v1/images/edits", openai_images.image_edits, methods=["POST"]),
        Route("/v1/images/variations", openai_images.image_variations, methods=["POST"]),
        Route("/v1/models", openai_models.list_models, methods=["GET"]),
        Route("/v1/models/refresh", openai_models.refresh_models, methods=["POST"]),
        Route("/v1/loras", openai_models.list_loras, methods=["GET"]),
        Route("/v1/models/default", openai_models.set_default_model, methods=["POST"]),
        Route("/v1/models/search", search.search_models, methods=["GET"]),
        Route("/v1/models/thumbnail", search.thumbnail, methods=["GET"]),
        Route("/v1/models/loras", catalog.alice_list_loras, methods=["GET"]),
        Route("/v1/models/search/civitai", search.alice_search_civitai, methods=["POST"]),
        Route("/v1/models/search/huggingface", search.alice_search_huggingface, methods=["POST"]),
        Route("/v1/models/download/civitai", downloads.alice_download_civitai, methods=["POST"]),
        Route(
            "/v1/models/download/huggingface",
            downloads.alice_download_huggingface,
            methods=["POST"],
        ),
        Route("/v1/models/download/url", downloads.alice_download_url, methods=["POST"]),
        Route("/v1/models/download/status", downloads.alice_download_status, methods=["GET"]),
        Route(
            "/v1/models/download/status/{download_id}",
            downloads.alice_download_status_one,
            methods=["GET"],
        ),
        Route(
            "/v1/models/download/{download_id:spool_id}",  # not .../status
            downloads.alice_cancel_download,
            methods=["DELETE"],
        ),
        # A model's id is sd/<name>: its routes under /v1/models/sd/ never meet the others.
        Route("/v1/models/sd/{name}/info", catalog.model_info, methods=["GET"]),
        Route("/v1/models/sd/{name}", catalog.get_model, methods=["GET"]),
        Route("/v1/models/sd/{name}", catalog.delete_model, methods=["DELETE"]),
        # OpenAI's models.retrieve: an alias (dall-e-3), or a model by its bare name.
        Route("/v1/models/{name:model_name}", openai_models.retrieve_model, methods=["GET"]),
        Route("/v1/loras/{lora_id:lora_name}", catalog.delete_lora, methods=["DELETE"]),
        Route("/v1/jobs", native.create_job, methods=["POST"]),
        Route("/v1/jobs", native.list_jobs, methods=["GET"]),
        Route("/v1/jobs/{job_id}", native.get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}/cancel", native.cancel_job, methods=["POST"]),
        Route("/v1/jobs/{job_id}/retry", native.retry_job, methods=["POST"]),
        Route("/v1/jobs/{job_id}/priority", native.set_priority, methods=["POST"]),
        Route("/v1/jobs/{job_id}/events", native.job_events, methods=["GET"]),
        Route("/v1/jobs/{job_id}/inputs/{name}", native.job_input, methods=["GET"]),
        Route("/v1/batches", native.create_batch, methods=["POST"]),
        Route("/v1/batches/{batch_id}", native.get_batch, methods=["GET"]),
        Route("/v1/stats", native.stats, methods=["GET"]),
        Route("/v1/auth/keys/generate", auth.generate_key, methods=["POST"]),
        Route("/v1/auth/keys", auth.list_keys, methods=["GET"]),
        Route("/v1/auth/keys/{key_id:spool_id}/revoke", auth.revoke_key, methods=["POST"]),
        Route("/v1/auth/keys/{key_id:spool_id}", auth.delete_key, methods=["DELETE"]),
        Route("/v1/auth/me", auth.me, methods=["GET"]),
        Route("/v1/auth/login", auth.login, methods=["POST"]),
        Route("/v1/auth/logout", auth.logout, methods=["POST"]),
        Route("/v1/auth/registration-mode", auth.registration_mode, methods=["GET"]),
        Route("/v1/auth/register", auth.register, methods=["POST"]),
        Route("/v1/auth/invites", auth.create_invite, methods=["POST"]),
        Route("/v1/auth/invites", auth.list_invites, methods=["GET"]),
        Route("/v1/auth/invites/{code}", auth.delete_invite, methods=["DELETE"]),
        Route("/v1/auth/sessions", admin.list_sessions, methods=["GET"]),
        Route("/v1/auth/sessions/{session_id}", admin.end_session, methods=["DELETE"]),
        Route("/v1/admin/config", admin.config, methods=["GET"]),
        Route("/v1/admin/storage", admin.storage, methods=["GET"]),
        Route("/livez", status.livez, methods=["GET"]),
        Route("/readyz", status.readyz, methods=["GET"]),
        Route("/api/health", status.health, methods=["GET"]),
        Route("/v1/generation/defaults", status.generation_defaults, methods=["GET"]),
        Route("/api/v1/health", ablerefusal.health, methods=["GET"]),
        Route("/api/v1/ready", status.readyz, methods=["GET"]),
        Route("/api/v1/generate", ablerefusal.generate, methods=["POST"]),
        Route("/api/v1/generate/txt2img", restplan.txt2img, methods=["POST"]),
        Route("/api/v1/generate/{job_id:spool_id}", ablerefusal.get_generation, methods=["GET"]),
        Route("/api/v1/generate/{job_id:spool_id}/cancel", ablerefusal.cancel, methods=["POST"]),
        Route("/api/v1/queue", ablerefusal.queue, methods=["GET"]),
        Route("/api/v1/models", ablerefusal.models, methods=["GET"]),
        Route("/api/v1/models/load", restplan.load_model, methods=["POST"]),
        Route("/outputs/{secret}/{name}", images.image, methods=["GET"], name="ablerefusal_output"),
        Route("/outputs/{name}", images.image, methods=["GET"]),  # jobs from before image secrets
        Route("/generate", gtx1060.generate, methods=["POST"]),
        Route("/v1/txt2img", restplan.txt2img, methods=["POST"]),
        Route("/v1/img2img", restplan.img2img, methods=["POST"]),
        Route("/v1/models/load", restplan.load_model, methods=["POST"]),
        Route("/v1/loras/list", restplan.list_loras, methods=["GET"]),
        WebSocketRoute("/stream/generate/txt2img", restplan.stream_txt2img),
        Route("/sdapi/v1/txt2img", a1111.txt2img, methods=["POST"]),
        Route("/sdapi/v1/img2img", a1111.img2img, methods=["POST"]),
        Route("/sdapi/v1/options", a1111_options.get_options, methods=["GET"]),
        Route("/sdapi/v1/options", a1111_options.set_options, methods=["POST"]),
        Route("/sdapi/v1/sd-models", a1111_lists.sd_models, methods=["GET"]),
        Route("/sdapi/v1/samplers", a1111_lists.samplers, methods=["GET"]),
        Route("/sdapi/v1/schedulers", a1111_lists.schedulers, methods=["GET"]),
        Route("/sdapi/v1/loras", a1111_lists.loras, methods=["GET"]),
        Route("/sdapi/v1/sd-vae", a1111_lists.sd_vae, methods=["GET"]),
        Route("/sdapi/v1/sd-modules", a1111_lists.sd_modules, methods=["GET"]),
        Route("/sdapi/v1/upscalers", a1111_lists.upscalers, methods=["GET"]),
        Route("/sdapi/v1/latent-upscale-modes", a1111_lists.latent_upscale_modes, methods=["GET"]),
        Route("/sdapi/v1/embeddings", a1111_lists.embeddings, methods=["GET"]),
        Route("/sdapi/v1/face-restorers", a1111_lists.nothing_listed, methods=["GET"]),
        Route("/sdapi/v1/prompt-styles", a1111_lists.nothing_listed, methods=["GET"]),
        Route("/sdapi/v1/hypernetworks", a1111_lists.nothing_listed, methods=["GET"]),
        Route("/sdapi/v1/realesrgan-models", a1111_lists.nothing_listed, methods=["GET"]),
        Route("/sdapi/v1/cmd-flags", a1111_lists.cmd_flags, methods=["GET"]),
        Route("/sdapi/v1/png-info", a1111_lists.png_info, methods=["POST"]),
        Route("/sdapi/v1/progress", a1111_lists.progress, methods=["GET"]),
        Route("/sdapi/v1/interrupt", a1111_lists.interrupt, methods=["POST"]),
        Route("/sdapi/v1/skip", a1111_lists.skip, methods=["POST"]),
        Route("/sdapi/v1/refresh-checkpoints", a1111_lists.refresh_checkpoints, methods=["POST"]),
        Route("/sdapi/v1/refresh-loras", a1111_lists.refresh_loras, methods=["POST"]),
        Route("/sdapi/v1/refresh-vae", a1111_lists.refreshed, methods=["POST"]),
        Route("/sdapi/v1/refresh-embeddings", a1111_lists.refreshed, methods=["POST"]),
        Route("/v1/gallery", gallery.list_gallery, methods=["GET"]),
        Route("/v1/gallery/tags", gallery.list_tags, methods=["GET"]),
        Route("/v1/gallery/stats", gallery.stats, methods=["GET"]),
        Route("/v1/gallery/{image_id:image_id}", gallery.get_image, methods=["GET"]),
        Route("/v1/gallery/{image_id:image_id}", gallery.delete_image, methods=["DELETE"]),
        Route("/v1/gallery/{image_id:image_id}/privacy", gallery.set_privacy, methods=["PATCH"]),
        Route("/v1/gallery/{image_id:image_id}/tags", gallery.set_tags, methods=["PATCH"]),
        Route("/v1/downloads", downloads.create_download, methods=["POST"]),
        Route("/v1/downloads", downloads.list_downloads, methods=["GET"]),
        Route("/v1/downloads/{download_id}", downloads.get_download, methods=["GET"]),
        Route("/v1/downloads/{download_id}/cancel", downloads.cancel_download, methods=["POST"]),
        Route("/v1/downloads/{download_id}/events", downloads.download_events, methods=["GET"]),
    ]


def create_app(
    settings: Settings,
    store: Store,
    registry: ModelRegistry | None = None,
    *,
    inbox_health: Any = None,
) -> Starlette:
    server = settings.server
    api = Api(
        settings=settings,
        store=store,
        registry=registry or ModelRegistry(settings.paths.models),
        keys=Keys(server.api_keys, store, session_idle_s=server.session_idle_s),
        limiter=RateLimiter(server.rate_limit_per_minute),
        streams=stream_slots(server.max_streams_per_client),
        fetches=fetch_slots(settings.models.max_fetches_per_client),
        # a minute's worth at once (a person mistyping a key never notices), then slowly
        auth_failures=RateLimiter(
            server.auth_failures_per_minute, burst=server.auth_failures_per_minute
        ),
        outbox=Path(settings.paths.outbox),
        inbox_health=inbox_health,
    )
    web: list[Any] = []
    files = web_dir()
    if files is not None:
        web = [
            Route("/", lambda request: RedirectResponse("/web/"), methods=["GET"]),
            Mount("/web", StaticFiles(directory=files, html=True), name="web"),
        ]
    table = routes()
    middleware = [
        Middleware(SecurityHeaders, public_url=server.public_url),
        Middleware(
            RequestGuard,
            bind_host=server.host,
            public_url=server.public_url,
            allowed=server.allowed_hosts,
            cors_origins=server.cors_origins,
            multipart=multipart_paths(table),
        ),
    ]
    if server.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=server.cors_origins,
                allow_methods=methods(table),
                allow_headers=["Authorization", "X-Api-Key", "Content-Type", "Idempotency-Key"],
            )
        )
    app = Starlette(
        routes=[*table, *web],
        middleware=middleware,
        exception_handlers={HTTPException: _not_found, Exception: _internal},
    )
    app.state.api = api
    app.state.descriptions = {}
    return app


__all__ = ["create_app"]
