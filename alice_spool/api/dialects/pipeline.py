"""The path every dialect shares: a request translated to a `JobSpec` is queued as the
caller's job, waited for without holding a thread, and its images read back. A dialect
is what differs: its name and source, its translation, its answer and its error shape
(`Dialect`); none imports another, they all import this."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.responses import Response

from ... import errors, inputs
from ...records import JobRecord
from ...spec import JobSpec
from ...states import JobStatus, Source
from ..edge.context import Api, check_priority, owner_of
from ..edge.contract import ErrorBody, SchemaSource
from ..edge.errors import spool_error_response, status_of
from ..edge.http import wait_for_job


@dataclass(frozen=True)
class Dialect:
    """One client's API over the shared path: the `source` its jobs record, the status
    it answers an error class with where that differs from the native one, and the body
    of its error answers (`error_body`, given the error and its status)."""

    name: str
    source: Source
    statuses: Mapping[type[errors.SpoolError], int] = field(default_factory=dict)
    error_body: Callable[[errors.SpoolError, int], Response] | None = None
    error_model: SchemaSource = ErrorBody  # the schema of `error_body`'s answers

    def status(self, exc: errors.SpoolError) -> int:
        return status_of(exc, self.statuses)

    def error_answer(self, exc: errors.SpoolError) -> Response:
        """The route wrapper's `shape`: every error this dialect's routes answer."""
        if self.error_body is None:
            return spool_error_response(exc)
        return self.error_body(exc, self.status(exc))


async def submit(
    request: HTTPConnection,
    api: Api,
    spec: JobSpec,
    dialect: Dialect,
    client: str | None,
    staged: inputs.Staged | None = None,
    *,
    priority_checked: bool = False,
) -> JobRecord:
    """Queue `spec` (with its staged images) as the caller's job. `priority_checked`:
    a door that takes a priority has the caller's cap applied first."""
    if priority_checked:
        check_priority(request, spec.priority)
    owner = owner_of(request)
    queued = await run_in_threadpool(
        lambda: api.submissions.enqueue(
            spec, staged or inputs.Staged(), source=dialect.source, client=client, owner=owner
        )
    )
    return queued.job


def finished_or_raise(job: JobRecord) -> JobRecord:
    """A succeeded job as it is; a cancelled or failed one as the error it ended with."""
    if job.status is JobStatus.SUCCEEDED:
        return job
    if job.status is JobStatus.CANCELLED:
        raise errors.IllegalTransition(f"job {job.id} was cancelled", job_id=job.id)
    raise errors.from_code(job.error_code, job.error_message or "the job failed", job_id=job.id)


async def finished(api: Api, job_id: str) -> JobRecord:
    """The job once it has succeeded (within `server.request_timeout_s`), or its error.
    The job is committed: a client that goes away meanwhile leaves it running, and it
    stays fetchable at /v1/jobs/<id>."""
    timeout = api.settings.server.request_timeout_s
    return finished_or_raise(await wait_for_job(api.store, job_id, timeout))


def images_of(job: JobRecord) -> list[dict[str, Any]]:
    """The image entries of a finished job's result (file, seed, width, height, ...)."""
    return list((job.result or {}).get("images") or [])


async def png_of(api: Api, image: Mapping[str, Any]) -> bytes:
    """One image's PNG, as the runner wrote it (read in a worker thread)."""
    return await run_in_threadpool(api.image_files.path(image["file"]).read_bytes)


def base64_text(data: bytes) -> str:
    return base64.b64encode(data).decode()
