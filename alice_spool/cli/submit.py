"""`alice-spool submit`: a prompt with options, a JSON request file, or a JSONL batch."""

from __future__ import annotations

import base64
import getpass
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from .. import inputs, urls
from ..errors import InvalidParameters, ModelNotFound
from ..hires import parse_hires
from ..records import JobRecord, NewJob
from ..spec import JobSpec, parse_json, parse_jsonl, parse_request
from ..states import JobStatus, Source
from ..store import new_id
from ..terminal import jobs_table
from .app import (
    EXIT_JOBS_FAILED,
    App,
    cli,
    emit_json,
    generation_options,
    json_option,
    note,
    pass_app,
)


def _read_text(path: str, what: str) -> tuple[str, str]:
    """(text, display name) of a file, or of stdin for `-`."""
    if path == "-":
        return sys.stdin.read(), "stdin"
    try:
        return Path(path).read_text(encoding="utf-8"), Path(path).name
    except FileNotFoundError:
        raise InvalidParameters(f"{what} {path} does not exist") from None
    except UnicodeDecodeError:
        raise InvalidParameters(f"{what} {path} is not UTF-8 text") from None
    except OSError as exc:
        raise InvalidParameters(f"cannot read {what} {path}: {exc.strerror}") from None


def _read_batch(text: str, name: str, app: App) -> list[NewJob]:
    requests = parse_jsonl(text, name, app.settings.generation)
    jobs = []
    for line, request in enumerate(requests, start=1):
        try:
            spec = _with_model(app, request.spec)
        except ModelNotFound as exc:
            raise ModelNotFound(f"{name} line {line}: {exc.message}", line=line) from None
        jobs.append(NewJob(spec, request.idempotency_key, name))
    return jobs


def _image_files(given: dict[str, Any]) -> dict[str, Any]:
    """--init-image and --mask: the files' bytes, as base64 (what the intake reads)."""
    images = {}
    for role in ("init_image", "mask_image"):
        path = given.pop(role, None)
        if path is not None:
            try:
                images[role] = base64.b64encode(Path(path).read_bytes()).decode()
            except OSError as exc:
                raise InvalidParameters(f"cannot read {path}: {exc.strerror}", field=role) from None
    return images


def _hires_field(given: dict[str, Any]) -> dict[str, Any]:
    """--hires (a shorthand: 2x, 1024x768) and --hires-*: the `hires` field."""
    options = {
        key: given.pop(f"hires_{key}")
        for key in ("upscaler", "steps", "strength")
        if f"hires_{key}" in given
    }
    shorthand = given.pop("hires", None)
    if shorthand is None and not options:
        return {}
    if shorthand is None:
        raise click.UsageError("--hires-upscaler, --hires-steps and --hires-strength need --hires")
    hires = parse_hires(shorthand)
    assert hires is not None  # a string is never "none"
    return {"hires": {**hires.to_dict(), **options}}


def _with_model(app: App, spec: JobSpec) -> JobSpec:
    """The model checked, or the default one named, as at every door."""
    return app.registry.with_model(spec, app.settings.generation.default_model)


def finish_waiting(jobs: Sequence[JobRecord], as_json: bool, extra: dict[str, Any]) -> None:
    failed = [j for j in jobs if j.status is not JobStatus.SUCCEEDED]
    if as_json:
        emit_json({**extra, "jobs": [j.to_dict() for j in jobs], "ok": not failed})
    else:
        click.echo(jobs_table(jobs))
        for job in failed:
            note(f"{job.id} {job.status.value}: {job.error_code or '-'} {job.error_message or ''}")
    if failed:
        sys.exit(EXIT_JOBS_FAILED)


@cli.command()
@click.argument("prompt", required=False)
@generation_options
@click.option("--priority", type=int, help="Higher runs first (-100..100, default 0).")
@click.option(
    "--id", "id", metavar="KEY", help="Idempotency key: submitting the same id again is a no-op."
)
@click.option(
    "--file", "request_file", metavar="PATH", help="Submit one JSON request file (- = stdin)."
)
@click.option(
    "--batch",
    "batch_file",
    metavar="PATH",
    help="Submit a JSONL batch, one request per line (- = stdin).",
)
@click.option(
    "--init-image",
    "init_image",
    type=click.Path(dir_okay=False),
    help="img2img: start from this image (PNG, JPEG or WebP).",
)
@click.option(
    "--mask",
    "mask_image",
    type=click.Path(dir_okay=False),
    help="Inpainting: white = repaint, black = keep (needs --init-image).",
)
@click.option("--strength", type=float, help="How much of the input to change (0 < s <= 1).")
@click.option(
    "--hires",
    metavar="SCALE|WxH",
    help="Hires fix: a second pass at 2x (SCALE: 1-4) or at WxH, e.g. --hires 2x.",
)
@click.option(
    "--hires-upscaler", metavar="NAME", help="Hires: Latent (default), Lanczos, None, ..."
)
@click.option("--hires-steps", type=int, help="Hires: the second pass's steps (0: as the first).")
@click.option("--hires-strength", type=float, help="Hires: the second pass's denoising (0.7).")
@click.option(
    "--clip-skip", type=int, help="Stop at the Nth CLIP layer from the end (1: none; 2 common)."
)
@click.option(
    "--true-cfg",
    "true_cfg_scale",
    type=float,
    help="FLUX.1: true CFG over the negative prompt (above 1; twice the work a step).",
)
@click.option(
    "--max-sequence-length",
    type=int,
    help="FLUX.1 and SD 3.x: the prompt's length in T5 tokens (at most 512; schnell 256).",
)
@click.option("--wait", is_flag=True, help="Block until the job(s) finish; exit 1 if any failed.")
@click.option(
    "--timeout",
    type=float,
    metavar="SECONDS",
    help="With --wait: give up after this long (exit 4).",
)
@json_option
@pass_app
def submit(
    app: App,
    prompt: str | None,
    request_file: str | None,
    batch_file: str | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
    **flags: Any,
) -> None:
    """Queue a generation: a PROMPT with options, a request file, or a JSONL batch.

    Prints the job id (or the batch id). Examples:

    \b
      alice-spool submit "a lighthouse at dusk" --steps 30 --seed 7
      alice-spool submit --file request.json
      alice-spool submit --batch nightly.jsonl --wait --timeout 3600
    """
    given = {k: v for k, v in flags.items() if v is not None}
    sources = [s for s in (prompt, request_file, batch_file) if s is not None]
    if len(sources) != 1:
        raise click.UsageError("give exactly one of PROMPT, --file or --batch")
    if (request_file or batch_file) and given:
        raise click.UsageError("generation options apply to a PROMPT; put them in the file instead")
    if batch_file is not None:
        job_ids, extra = _submit_batch(app, batch_file, as_json=as_json, wait=wait)
    else:
        job_ids, extra = _submit_one(app, prompt, request_file, given, as_json=as_json, wait=wait)
    if wait:
        final = app.store.jobs.wait_for(job_ids, timeout_s=timeout)
        finish_waiting(final, as_json, extra)


def _submit_batch(
    app: App, batch_file: str, *, as_json: bool, wait: bool
) -> tuple[list[str], dict[str, Any]]:
    """Queue a JSONL batch and say so; (its job ids, what a wait's answer adds)."""
    text, name = _read_text(batch_file, "batch file")
    batch = app.store.jobs.enqueue_batch(_read_batch(text, name, app), source=Source.CLI)
    if as_json and not wait:
        emit_json(
            {
                "batch_id": batch.batch_id,
                "created": batch.created,
                "job_ids": batch.job_ids,
            }
        )
    elif not as_json:
        click.echo(batch.batch_id)
        verb = "queued" if batch.created else "already submitted:"
        note(f"{verb} {len(batch.job_ids)} job(s) in batch {batch.batch_id}")
    return batch.job_ids, {"batch_id": batch.batch_id}


def _submit_one(
    app: App,
    prompt: str | None,
    request_file: str | None,
    given: dict[str, Any],
    *,
    as_json: bool,
    wait: bool,
) -> tuple[list[str], dict[str, Any]]:
    """Queue one request (a PROMPT with options, or a request file) with its images, and
    say so; (its job id, what a wait's answer adds)."""
    data, client, here = _request_data(prompt, request_file, given)
    if isinstance(data, dict):
        data, staged = inputs.take(
            data,
            app.settings.generation.max_input_pixels,
            inbox=here,
            fetch=urls.fetcher(
                allow_private=app.settings.models.allow_private_urls,
                max_bytes=app.settings.server.max_image_body_bytes,
                timeout_s=app.settings.models.fetch_timeout_s,
            ),
        )
    else:
        staged = inputs.Staged()
    request = parse_request(data, app.settings.generation)
    spec, job_id = _with_model(app, request.spec), new_id()
    result = inputs.queue_with(
        Path(app.settings.paths.data_dir),
        staged,
        job_id,
        lambda given_id: app.store.jobs.enqueue(
            spec,
            source=Source.CLI,
            client=client,
            idempotency_key=request.idempotency_key,
            job_id=given_id,
        ),
        lambda done: done.job.id == job_id,
    )
    if as_json and not wait:
        emit_json({**result.job.to_dict(), "created": result.created})
    elif not as_json:
        click.echo(result.job.id)
        if not result.created:
            note(f"already submitted with id {request.idempotency_key!r}: job {result.job.id}")
    return [result.job.id], {}


def _request_data(
    prompt: str | None, request_file: str | None, given: dict[str, Any]
) -> tuple[Any, str | None, Path | None]:
    """(the request as read, its client, where a request file's image names are looked
    up): a request file's JSON, or the PROMPT with its options (--init-image and --mask
    as the files' bytes, the --hires options as one field)."""
    if request_file is not None:
        text, name = _read_text(request_file, "request file")
        here = Path(request_file).parent if request_file != "-" else Path.cwd()
        return parse_json(text, name), name, here
    images = _image_files(given)  # takes --init-image and --mask out of `given`
    given.update(_hires_field(given))  # and the --hires options into one field
    return {"prompt": prompt, **given, **images}, _user(), None


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None
