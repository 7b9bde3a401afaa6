"""The OpenAI-shaped doors: chat completions (ALICE's and SAM's) and the model list (the
images API: images.py), with what each takes and answers."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from .... import aliases, errors, inputs
from ....library.registry import ModelInfo
from ....records import JobRecord
from ....spec import JobSpec, normalise_model_id, parse_spec
from ....states import Source
from ...edge.context import Api, bucket_of, route
from ...edge.contract import Answer, Contract, Query
from ...edge.http import WAKE_AT_LEAST_S, require_object, watching
from ...edge.schemas import MODEL_ID
from ...routes import catalog
from ..pipeline import Dialect, finished, finished_or_raise, submit
from .fields import chat_parameters, chat_schema, last_user_text

TAG = "OpenAI and ALICE"
WAITS = "the job did not finish in server.request_timeout_s (it stays queued: GET /v1/jobs/<id>)"
# What every door that queues a job may answer beyond the errors of every route.
QUEUES = {
    404: "the model, a LoRA or the VAE is not installed",
    409: "the job was cancelled before it finished",
    503: "the queue is full, or the database busy (Retry-After)",
    504: WAITS,
}


class ChatImageParameters(BaseModel):
    """What the job ran with (its request where it has not run)."""

    prompt: str | None
    negative_prompt: str | None
    steps: int | None
    guidance_scale: float | None
    seed: int | None
    model: str | None
    scheduler: str | None
    width: int | None
    height: int | None
    mode: str
    input_image_count: int
    job_id: str


class ChatReply(BaseModel):
    role: Literal["assistant"]
    content: str
    image_urls: list[str]
    metadata: ChatImageParameters


class ChatChoice(BaseModel):
    index: int
    message: ChatReply
    finish_reason: Literal["stop"]


class ChatUsage(BaseModel):
    """The prompt's words as tokens; SAM reads the camel-case names."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    promptTokens: int
    completionTokens: int
    totalTokens: int


class ChatCompletion(BaseModel):
    """OpenAI's chat completion, its message the images' URLs."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str | None
    choices: list[ChatChoice]
    usage: ChatUsage


def chat_spec(body: dict[str, Any], api: Api) -> tuple[JobSpec, inputs.Staged, bool]:
    """(spec, staged images, stream) from a chat request: the prompt is the last user
    message's text, the parameters those of `sam_config`, `samConfig` and `metadata`."""
    prompt = last_user_text(body.get("messages"))
    fields: dict[str, Any] = {**chat_parameters(body, api.settings.generation), "prompt": prompt}
    asked: str | None = None
    if isinstance(body.get("model"), str):  # an alias, or OpenAI's image model names
        named = aliases.resolve(body["model"], api.settings.models.aliases)
        asked = named.alias
        if named.model is not None or named.alias is None:
            fields["model"] = named.model
        # else an OpenAI name standing for the default: the parameters' model, if any
    elif body.get("model") is not None:
        fields["model"] = body["model"]
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise errors.InvalidParameters("stream must be true or false", field="stream")
    fields, staged = api.submissions.take_images(fields)  # ALICE's input_images, and init_image
    spec = parse_spec(fields, api.settings.generation)
    if asked is not None:  # the job records the name asked for; its model, what ran
        spec = replace(spec, client_fields=(("model", asked),))
    return spec, staged, stream


def _metadata(job: JobRecord) -> dict[str, Any]:
    spec = (job.result or {}).get("spec") or job.spec.to_dict()
    return {
        "prompt": spec.get("prompt"),
        "negative_prompt": spec.get("negative_prompt"),
        "steps": spec.get("steps"),
        "guidance_scale": spec.get("guidance_scale"),
        "seed": spec.get("seed"),
        "model": spec.get("model"),
        "scheduler": spec.get("scheduler"),
        "width": spec.get("width"),
        "height": spec.get("height"),
        "mode": job.spec.mode,
        "input_image_count": int(job.spec.init_image is not None),
        "job_id": job.id,
    }


def _usage(prompt: str) -> dict[str, int]:
    tokens = len(prompt.split())
    return {
        "prompt_tokens": tokens,
        "completion_tokens": 0,
        "total_tokens": tokens,
        # SAM decodes only these
        "promptTokens": tokens,
        "completionTokens": 0,
        "totalTokens": tokens,
    }


def _completion(api: Api, request: Request, job: JobRecord, prompt: str) -> dict[str, Any]:
    urls = api.image_urls(request, job)
    content = f"Generated {len(urls)} image(s): " + " ".join(urls)
    return {
        "id": f"chatcmpl-{job.id}",
        "object": "chat.completion",
        "created": int(job.created_at.timestamp()),
        "model": job.model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "image_urls": urls,
                    "metadata": _metadata(job),
                },
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(prompt),
    }


OPENAI = Dialect("openai", Source.OPENAI)


async def _submit(
    request: Request, api: Api, spec: JobSpec, client: str | None, staged: inputs.Staged | None
) -> JobRecord:
    # the chat and images extensions take a priority: the caller's cap applies
    return await submit(request, api, spec, OPENAI, client, staged, priority_checked=True)


async def enqueue_held(
    request: Request,
    api: Api,
    spec: JobSpec,
    client: str | None,
    staged: inputs.Staged | None,
    *,
    stream: bool,
) -> tuple[JobRecord, Callable[[], None] | None]:
    """Queue an OpenAI door's job; for a `stream`, take one of the client's stream slots
    first (a refused stream queues nothing) and return what gives it back."""
    if not stream:
        return await _submit(request, api, spec, client, staged), None
    holder = bucket_of(api, request)  # the key's id, never its name
    api.streams.take(holder)
    try:
        job = await _submit(request, api, spec, client, staged)
    except BaseException:
        api.streams.give_back(holder)
        raise
    return job, lambda: api.streams.give_back(holder)


@route(
    contract=Contract(
        body=chat_schema,
        example={
            "model": "sd/tiny",
            "messages": [{"role": "user", "content": "a harbour at dawn"}],
            "metadata": {"steps": 25, "guidance_scale": 7.5, "width": 512, "height": 512},
        },
        answers={
            200: Answer(
                ChatCompletion,
                "Done: the images' URLs (with `stream`: chat.completion.chunk events, "
                "the last with the URLs, then [DONE]; an `error` one if the job fails or "
                "is not done in server.request_timeout_s)",
                also={"text/event-stream": None},
            )
        },
        errors={**QUEUES, 429: "rate limited, or too many open streams"},
        tag=TAG,
    )
)
async def chat_completions(request: Request, api: Api, client: str | None) -> Response:
    """ALICE's and SAM's door: generate, wait, answer a chat completion with image URLs."""
    body = require_object(await api.read_body(request, images=True))
    spec, staged, stream = await run_in_threadpool(chat_spec, body, api)
    job, release = await enqueue_held(request, api, spec, client, staged, stream=stream)
    if release is not None:
        timeout = api.settings.server.request_timeout_s
        return HeldEvents(_chat_stream(api, request, job, spec.prompt, timeout), release)
    done = await finished(api, job.id)
    return JSONResponse(_completion(api, request, done, spec.prompt))


class HeldEvents(EventSourceResponse):
    """Server-sent events that hold one of the client's stream slots: `release` gives it
    back once, when the response ends, however it ends (the client gone before the
    first event, a cancelled task, a server stopping)."""

    def __init__(self, events: AsyncIterator[Any], release: Callable[[], None]) -> None:
        super().__init__(events)
        self._release: Callable[[], None] | None = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


async def _chat_stream(
    api: Api, request: Request, job: JobRecord, prompt: str, timeout: float
) -> AsyncIterator[str]:
    """`chat.completion.chunk` events: one per progress change, then the result."""
    created = int(job.created_at.timestamp())
    deadline = time.monotonic() + timeout
    last: tuple[Any, ...] = ()

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return json.dumps(
            {
                "id": f"chatcmpl-{job.id}",
                "object": "chat.completion.chunk",
                "created": created,
                "model": job.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    yield chunk({"role": "assistant", "content": ""})
    with watching(api.store, jobs=[job.id]) as changes:
        while True:
            current = await run_in_threadpool(api.store.jobs.get, job.id)
            state = (current.status, current.progress_step, current.progress_total)
            if state != last:
                last = state
                progress = {
                    "status": current.status.value,
                    "step": current.progress_step,
                    "total": current.progress_total,
                }
                yield chunk({"content": "", "progress": progress})
            if current.finished:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                error = {"code": "timeout", "message": f"job {job.id} is still running"}
                yield json.dumps({"error": error})
                return
            await changes.wait_async(min(left, WAKE_AT_LEAST_S))
    try:
        done = finished_or_raise(current)
    except errors.SpoolError as exc:
        yield json.dumps({"error": {"code": exc.code, "message": exc.message}})
        return
    message = _completion(api, request, done, prompt)["choices"][0]["message"]
    yield chunk(
        {
            "content": message["content"],
            "image_urls": message["image_urls"],
            "metadata": message["metadata"],
        },
        finish="stop",
    )
    yield "[DONE]"


class LoraView(BaseModel):
    """An installed LoRA: ours (`family`, `size_bytes`, `status`) and ALICE's names."""

    object: Literal["lora"]
    id: str
    name: str
    family: str | None
    size_bytes: int
    status: Literal["ok", "broken"]
    reason: str | SkipJsonSchema[None] = Field(None, description="why it is broken")
    created: int
    sizeMb: float
    baseModel: str


class LoraList(BaseModel):
    object: Literal["list"]
    data: list[LoraView]


@route(contract=Contract(answers={200: Answer(LoraList)}, tag=TAG))
async def list_loras(request: Request, api: Api, client: str | None) -> Response:
    """The installed LoRAs (`<models>/loras/*.safetensors`) with the model family each
    was made for; a request names them in `loras` or as `<lora:name:scale>` tags."""
    loras = await run_in_threadpool(api.registry.loras.scan)
    return JSONResponse({"object": "list", "data": catalog.lora_views(loras)})


class FamilyDefaults(BaseModel):
    """What a model runs with when a request gives none (None: the server's)."""

    steps: int | None
    guidance_scale: float | None
    scheduler: str | None


class ModelView(BaseModel):
    """An installed model (or an alias: `alias_of` the model it stands for), as OpenAI
    lists models, with what it is."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    family: str | None
    variant: str | None
    defaults: FamilyDefaults
    schedulers: list[str] | None = Field(description="the ones it takes; null: every one")
    native_size: int | None
    size_bytes: int
    format: str
    status: Literal["ok", "broken"]
    default: bool | SkipJsonSchema[None] = Field(None, description="in the list, models only")
    smoke_test: bool
    reason: str | SkipJsonSchema[None] = Field(None, description="why it is broken")
    note: str | SkipJsonSchema[None] = Field(None, description="a smoke-test model's")
    alias: bool | SkipJsonSchema[None] = Field(None, description="aliases only: true")
    alias_of: str | SkipJsonSchema[None] = None


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelView]


class ModelsQuery(Query):
    include_broken: str = Field(
        "false",
        pattern="^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|1|0)$",
        description="true (or 1, any case): the unusable models too, with the reason",
    )

    @property
    def broken_too(self) -> bool:
        return self.include_broken.lower() in ("true", "1")


@route(contract=Contract(query=ModelsQuery, answers={200: Answer(ModelList)}, tag=TAG))
async def list_models(
    request: Request, api: Api, client: str | None, query: ModelsQuery
) -> Response:
    """The installed models, as OpenAI lists models (plus what they are), then the
    aliases (`alias_of`: the model each stands for): the configured ones
    (`[models.aliases]`) and OpenAI's image model names, which stand for the default
    model; `?include_broken=true` lists the unusable models too, with the reason."""
    include_broken = query.broken_too
    models = await run_in_threadpool(api.registry.scan)
    try:
        default = (
            await run_in_threadpool(api.registry.default, api.settings.generation.default_model)
        ).id
    except errors.ModelNotFound:
        default = None
    configured = api.settings.models.aliases

    def entries() -> list[dict[str, Any]]:  # each model's folder is read: in a thread
        shown = [m for m in sorted(models, key=lambda m: m.id) if m.ok or include_broken]
        listed = [_model_entry(model, default) for model in shown]
        return listed + _alias_entries(models, default, configured)

    return JSONResponse({"object": "list", "data": await run_in_threadpool(entries)})


def _model_entry(model: ModelInfo, default: str | None) -> dict[str, Any]:
    entry = {
        "id": model.id,
        "object": "model",
        "created": _created(model),
        "owned_by": "alice",
        "family": model.family,
        "variant": model.variant,
        # what a request that gives none runs (None: the server's), and the schedulers
        # it takes (None: every one)
        **{key: value for key, value in model.to_dict().items() if key in _FAMILY_KEYS},
        "native_size": model.native_size,
        "size_bytes": model.size_bytes,
        "format": model.format,
        "status": "ok" if model.ok else "broken",
        "default": model.id == default,
        "smoke_test": model.smoke_test,
    }
    if model.broken:
        entry["reason"] = model.broken
    if model.smoke_test:
        entry["note"] = "smoke-test model with random weights: its images are noise"
    return entry


_FAMILY_KEYS = ("defaults", "schedulers")


def _created(model: ModelInfo) -> int:
    try:
        return int(model.path.stat().st_mtime)
    except OSError:  # gone since the scan
        return 0


def _alias_entries(
    models: list[ModelInfo], default: str | None, configured: Mapping[str, str]
) -> list[dict[str, Any]]:
    """The aliases whose model is installed and usable, as OpenAI lists models."""
    usable = {model.id: model for model in models if model.ok}
    names = {name.lower(): name for name in aliases.OPENAI_IMAGE_MODELS}
    names.update({name.lower(): name for name in configured})  # as configured, once
    entries = []
    for name in sorted(names.values()):
        resolved = aliases.resolve(name, configured)
        target = default if resolved.model is None else normalise_model_id(resolved.model)
        if target not in usable:
            continue
        entry = _model_entry(usable[target], None)
        entry.update(id=name, alias=True, alias_of=target)
        del entry["default"]
        entries.append(entry)
    return entries


@route(contract=Contract(answers={200: Answer(ModelView)}, tag=TAG))
async def retrieve_model(request: Request, api: Api, client: str | None) -> Response:
    """One model or alias as OpenAI's `models.retrieve` reads it: an installed model by
    its name (`tiny` for sd/tiny), or an alias (OpenAI's image model names included)."""
    name = request.path_params["name"]
    resolved = aliases.resolve(name, api.settings.models.aliases)
    settings = api.settings

    def find() -> ModelInfo:
        if resolved.model is None:
            return api.registry.default(settings.generation.default_model)
        try:
            return api.registry.get(resolved.model)
        except errors.InvalidParameters:  # not a name a model can have: none has it
            raise errors.ModelNotFound(f"no model or alias {name!r}", model=name) from None

    model = await run_in_threadpool(find)
    entry = await run_in_threadpool(_model_entry, model, None)
    del entry["default"]
    if resolved.alias is not None:
        entry.update(id=resolved.alias, alias=True, alias_of=model.id)
    return JSONResponse(entry)


class DefaultModel(BaseModel):
    model: str = Field(pattern=MODEL_ID, examples=["sd/tiny"], description="an installed model")


class DefaultChosen(BaseModel):
    object: Literal["model"]
    id: str
    default: Literal[True]


@route(
    manage=True,
    contract=Contract(
        takes_body=DefaultModel,
        example={"model": "sd/tiny"},
        answers={200: Answer(DefaultChosen)},
        errors={
            404: "the model is not installed, or cannot be used",
            409: "generation.default_model in the configuration pins the default",
        },
        tag=TAG,
    ),
)
async def set_default_model(
    request: Request, api: Api, client: str | None, body: DefaultModel
) -> Response:
    """Make an installed model the default for requests that name none:
    `{"model": "sd/<name>"}`. Refused while config.toml pins `generation.default_model`."""
    wanted = body.model
    pinned = api.settings.generation.default_model
    if pinned:
        raise errors.IllegalTransition(
            f"the default model is {pinned}, set by generation.default_model in the "
            "configuration; change it there",
            field="model",
        )
    model = await run_in_threadpool(api.registry.set_default, wanted.strip())
    return JSONResponse({"object": "model", "id": model.id, "default": True})


class Rescanned(BaseModel):
    status: Literal["ok"]
    models_found: int = Field(description="the usable ones")


@route(contract=Contract(answers={200: Answer(Rescanned)}, tag=TAG))
async def refresh_models(request: Request, api: Api, client: str | None) -> Response:
    """Rescan the models directory (as ALICE does)."""
    models = await run_in_threadpool(api.registry.scan, force=True)
    return JSONResponse({"status": "ok", "models_found": sum(1 for m in models if m.ok)})
