"""The OpenAI-shaped chat completions (ALICE's and SAM's), with what they take and
answer (the images API: images.py; the model routes: models.py)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from .... import aliases, errors, inputs
from ....records import JobRecord
from ....spec import JobSpec, parse_spec
from ....states import Source
from ...edge.context import Api, bucket_of, route
from ...edge.contract import Answer, Contract
from ...edge.http import WAKE_AT_LEAST_S, require_object, watching
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
