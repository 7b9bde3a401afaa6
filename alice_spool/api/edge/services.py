"""What the routes ask of the server, apart from any one request: queueing a job with
its images (`Submissions`), and finding a job's image files (`ImageFiles`). The request's
own side (who asks, what they may see, where they came from) is `context.Api`'s."""

from __future__ import annotations

import hashlib
import hmac
import re
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from ... import errors, inputs
from ...config import Settings
from ...library.registry import ModelRegistry
from ...outbox import image_name
from ...records import BatchEnqueued, Enqueued, NewJob
from ...spec import JobSpec
from ...states import Source
from ...store import Store, new_id
from . import fetching
from .limits import Slots

IMAGE_NAME = re.compile(r"(?P<job>[0-9a-f]{30})-(?P<index>[0-9]{1,2})\.png")
IMAGE_SECRET = re.compile(r"[0-9a-f]{32}")  # store._base.new_secret


@dataclass
class Submissions:
    """A request's way into the queue, at every door: its images taken, its model and
    LoRAs checked, its inputs stored under its job, all or nothing."""

    settings: Settings
    store: Store
    registry: ModelRegistry
    fetches: Slots

    @property
    def fetch(self) -> inputs.Fetch:
        """ALICE's input_image_urls, fetched under the address rules (urls.py), within
        the asking client's fetch slots and `models.fetch_timeout_s` (fetching.py)."""
        models = self.settings.models
        return fetching.fetcher(
            self.fetches,
            allow_private=models.allow_private_urls,
            max_bytes=self.settings.server.max_image_body_bytes,
            timeout_s=models.fetch_timeout_s,
        )

    def take_images(self, body: Any) -> tuple[Any, inputs.Staged]:
        """A request object with its images decoded, checked and replaced by their
        hashes, and the images to store with its job (CPU work: in a worker thread)."""
        if not isinstance(body, dict):
            return body, inputs.Staged()
        return inputs.take(body, self.settings.generation.max_input_pixels, fetch=self.fetch)

    async def stage_images(self, body: Any) -> tuple[Any, inputs.Staged]:
        """`take_images` in a worker thread, for a request that carries an image field;
        any other request as it is, without a trip to a thread."""
        if not isinstance(body, dict) or not inputs.carries_images(body):
            return body, inputs.Staged()
        return await run_in_threadpool(self.take_images, body)

    def with_model(self, spec: JobSpec) -> JobSpec:
        """`model_not_found` (404) before anything is queued; the model id filled in.
        (Reads the models directory: call it from a worker thread.)"""
        return self.registry.with_model(spec, self.settings.generation.default_model)

    async def resolve_model(self, spec: JobSpec) -> JobSpec:
        return await run_in_threadpool(self.with_model, spec)

    def enqueue(
        self,
        spec: JobSpec,
        staged: inputs.Staged,
        *,
        source: Source,
        client: str | None,
        idempotency_key: str | None = None,
        owner: str | None = None,
    ) -> Enqueued:
        """Check the spec's model and LoRAs, store its inputs under a new job id, and
        queue it; the inputs go again if it is refused or is a repeat of an earlier
        job (which has its own). In a worker thread."""
        spec = self.with_model(spec)
        job_id = new_id()
        return inputs.queue_with(
            Path(self.settings.paths.data_dir),
            staged,
            job_id,
            lambda given: self.store.jobs.enqueue(
                spec,
                source=source,
                client=client,
                idempotency_key=idempotency_key,
                job_id=given,
                owner=owner,
            ),
            lambda done: done.job.id == job_id,
        )

    def enqueue_batch(
        self, items: list[tuple[NewJob, inputs.Staged]], source: Source
    ) -> BatchEnqueued:
        """`enqueue` for a batch, all or nothing (specs already checked)."""
        data_dir = Path(self.settings.paths.data_dir)
        jobs, stored = [], []
        try:
            for job, staged in items:
                if staged:
                    job = replace(job, job_id=new_id())
                    inputs.store(data_dir, str(job.job_id), staged)
                    stored.append(str(job.job_id))
                jobs.append(job)
            batch = self.store.jobs.enqueue_batch(jobs, source=source)
        except BaseException:
            for job_id in stored:
                inputs.remove(data_dir, job_id)
            raise
        for job_id in set(stored) - set(batch.job_ids):  # a repeat: the earlier jobs' own
            inputs.remove(data_dir, job_id)
        return batch


@dataclass
class ImageFiles:
    """The outbox's image files, as the image routes serve them."""

    store: Store
    outbox: Path

    def served(self, name: str, secret: str | None) -> Path:
        """The file of `/images/SECRET/NAME` (no key needed: the URL is the capability).
        The secret must be the image's own (`image_secret`); only a job from before
        image secrets existed opens with its name alone (`/images/NAME`, its server-made
        id being the secret). Anything else is the same 404, whether the job exists or
        not. (Reads the database: call it from a worker thread.)"""
        missing = errors.JobNotFound(f"no image {name!r}")
        match = IMAGE_NAME.fullmatch(name)
        if match is None or (secret is not None and not IMAGE_SECRET.fullmatch(secret)):
            raise missing
        try:
            job = self.store.jobs.get(match["job"])
        except errors.JobNotFound:
            raise missing from None
        if job.image_secret is None:
            opens = secret is None
        else:
            expected = image_secret(job.image_secret, name)
            opens = secret is not None and hmac.compare_digest(secret, expected)
        if not opens:
            raise missing
        return self.path(name)

    def path(self, name: str) -> Path:
        """The file of a job's image NAME, only for names a job could have written (the
        routes that serve images to anyone check the secret first: `served`)."""
        match = IMAGE_NAME.fullmatch(name)
        if match is None:
            raise errors.JobNotFound(f"no image {name!r}")
        path = self.outbox / match["job"] / image_name(match["job"], int(match["index"]))
        try:
            info = path.lstat()  # a link is never one the spool wrote: not followed
        except OSError:
            raise errors.JobNotFound(f"no image {name!r}") from None
        if not stat.S_ISREG(info.st_mode):
            raise errors.JobNotFound(f"no image {name!r}")
        return path


def image_secret(job_secret: str, file: str) -> str:
    """The secret in one image's URL: derived from its job's (128 random bits kept in its
    row) and its file name, so that each image of a job has its own, and sharing one
    (the gallery's privacy is per image) opens none of its siblings. 32 hex digits."""
    digest = hmac.new(job_secret.encode("ascii"), file.encode("utf-8"), hashlib.sha256)
    return digest.hexdigest()[:32]


def image_url(base: str, file: str, job_secret: str | None, folder: str = "images") -> str:
    """An image's capability URL: `/images/<its secret>/<file>`, or, for a job from
    before image secrets, the old `/images/<file>` (`folder`: AbleRefusal's `outputs`)."""
    if job_secret is None:
        return f"{base}/{folder}/{file}"
    return f"{base}/{folder}/{image_secret(job_secret, file)}/{file}"
