"""Commands that look at and steer jobs: ls, show, cancel, retry, priority, wait,
stats, purge, and config to show the settings in effect."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ..spec import normalise_model_id
from ..states import JobStatus, Source
from ..terminal import job_details, jobs_table, parse_duration, parse_when, short_duration
from .app import EXIT_JOBS_FAILED, App, cli, emit_json, json_option, note, pass_app
from .submit import finish_waiting

STATUS_CHOICE = click.Choice([s.value for s in JobStatus], case_sensitive=False)


@cli.command("ls")
@click.option(
    "--status",
    "-s",
    "statuses",
    multiple=True,
    type=STATUS_CHOICE,
    help="Only jobs in this state (repeatable).",
)
@click.option("--batch", "batch_id", metavar="BATCH_ID", help="Only jobs of this batch.")
@click.option("--model", help="Only jobs for this model.")
@click.option(
    "--source",
    type=click.Choice([s.value for s in Source]),
    help="Only jobs that came in this way.",
)
@click.option("--client", help="Only jobs from this client (API key name, file name, user).")
@click.option(
    "--source-file",
    metavar="NAME",
    help="Only jobs from this inbox request file (its name, or a path to it).",
)
@click.option("--since", help="Only jobs created since then: 2h, 7d or a date.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--before", "cursor", metavar="JOB_ID", help="Page on: jobs older than this one.")
@json_option
@pass_app
def list_command(
    app: App,
    statuses: tuple[str, ...],
    batch_id: str | None,
    model: str | None,
    source: str | None,
    client: str | None,
    source_file: str | None,
    since: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    if source_file is not None:
        if source not in (None, Source.INBOX.value) or client is not None:
            raise click.UsageError("--source-file stands for --source inbox --client NAME")
        source, client = Source.INBOX.value, Path(source_file).name
    page = app.store.jobs.list_jobs(
        statuses=statuses or None,
        batch_id=batch_id,
        model=normalise_model_id(model) if model else None,
        source=source,
        client=client,
        since=parse_when(since, "since") if since else None,
        before=cursor,
        limit=limit,
    )
    if as_json:
        emit_json({"jobs": [j.to_dict() for j in page.jobs], "next_cursor": page.next_cursor})
        return
    if not page.jobs:
        note("no jobs")
        return
    click.echo(jobs_table(page.jobs))
    if page.next_cursor:
        note(f"more: --before {page.next_cursor}")


@cli.command()
@click.argument("job_id")
@json_option
@pass_app
def show(app: App, job_id: str, as_json: bool) -> None:
    """Show one job in full."""
    job = app.store.jobs.get(job_id)
    if as_json:
        emit_json(job.to_dict())
    else:
        click.echo(job_details(job))


@cli.command()
@click.argument("job_id", required=False)
@click.option(
    "--batch", "batch_id", metavar="BATCH_ID", help="Cancel every unfinished job of this batch."
)
@json_option
@pass_app
def cancel(app: App, job_id: str | None, batch_id: str | None, as_json: bool) -> None:
    """Cancel a job (queued: at once; running: at the runner's next step), or a batch."""
    if (job_id is None) == (batch_id is None):
        raise click.UsageError("give a JOB_ID or --batch, not both")
    if batch_id is not None:
        report = app.store.jobs.cancel_batch(batch_id)
        if as_json:
            emit_json({"batch_id": batch_id, **report.__dict__})
        else:
            click.echo(
                f"batch {batch_id}: {report.cancelled} cancelled, "
                f"{report.requested} stopping, {report.untouched} already finished"
            )
        return
    assert job_id is not None
    job = app.store.jobs.cancel(job_id)
    if as_json:
        emit_json(job.to_dict())
    else:
        state = "stopping at the next step" if job.status is JobStatus.RUNNING else job.status.value
        click.echo(f"{job.id} {state}")


@cli.command()
@click.argument("job_id", required=False)
@click.option("--failed", is_flag=True, help="Retry every failed job.")
@click.option("--batch", "batch_id", metavar="BATCH_ID", help="With --failed: only this batch's.")
@json_option
@pass_app
def retry(app: App, job_id: str | None, failed: bool, batch_id: str | None, as_json: bool) -> None:
    """Queue a failed or cancelled job again (or every failed job with --failed)."""
    if (job_id is None) == (not failed):
        raise click.UsageError("give a JOB_ID or --failed, not both")
    if batch_id is not None and not failed:
        raise click.UsageError("--batch goes with --failed")
    if failed:
        ids = app.store.jobs.retry_failed(batch_id=batch_id)
        if as_json:
            emit_json({"retried": ids})
        else:
            click.echo(f"{len(ids)} failed job(s) queued again")
        return
    assert job_id is not None
    job = app.store.jobs.retry(job_id)
    if as_json:
        emit_json(job.to_dict())
    else:
        click.echo(f"{job.id} queued again")


@cli.command()
@click.argument("job_id")
@click.argument("value", type=int, metavar="N")
@json_option
@pass_app
def priority(app: App, job_id: str, value: int, as_json: bool) -> None:
    """Set a queued job's priority to N (-100..100; higher runs first)."""
    job = app.store.jobs.set_priority(job_id, value)
    if as_json:
        emit_json(job.to_dict())
    else:
        click.echo(f"{job.id} priority {job.priority}")


@cli.command()
@click.argument("job_ids", nargs=-1)
@click.option("--batch", "batch_id", metavar="BATCH_ID", help="Wait for every job of this batch.")
@click.option("--timeout", type=float, metavar="SECONDS", help="Give up after this long (exit 4).")
@json_option
@pass_app
def wait(
    app: App, job_ids: tuple[str, ...], batch_id: str | None, timeout: float | None, as_json: bool
) -> None:
    """Block until jobs finish; exit 1 if any failed or was cancelled (for cron)."""
    if bool(job_ids) == (batch_id is not None):
        raise click.UsageError("give JOB_IDs or --batch, not both")
    extra: dict[str, Any] = {}
    if batch_id is not None:
        job_ids, extra = tuple(app.store.jobs.batch_job_ids(batch_id)), {"batch_id": batch_id}
    final = app.store.jobs.wait_for(list(job_ids), timeout_s=timeout)
    finish_waiting(final, as_json, extra)


@cli.command("batch-report")
@click.argument("batch_id")
@json_option
@pass_app
def batch_report(app: App, batch_id: str, as_json: bool) -> None:
    """Summarise a batch: counts by state, each failure with its reason, and where each
    finished job's files are. Exits 1 unless every job succeeded."""
    jobs = app.store.jobs.get_many(app.store.jobs.batch_job_ids(batch_id))
    counts = {status.value: 0 for status in JobStatus}
    for job in jobs:
        counts[job.status.value] += 1
    outbox = Path(app.settings.paths.outbox)
    rows: list[dict[str, Any]] = [
        {
            "id": job.id,
            "status": job.status.value,
            "prompt": job.spec.prompt,
            "error": {"code": job.error_code, "message": job.error_message}
            if job.error_code and job.status is not JobStatus.SUCCEEDED
            else None,
            "directory": str(outbox / job.id) if job.finished else None,
            "files": [
                str(outbox / job.id / image["file"])
                for image in (job.result or {}).get("images", [])
                if job.images_expired_at is None
            ],
        }
        for job in jobs
    ]
    ok = counts[JobStatus.SUCCEEDED.value] == len(jobs)
    if as_json:
        emit_json({"batch_id": batch_id, "counts": counts, "ok": ok, "jobs": rows})
    else:
        click.echo(f"batch {batch_id}: {len(jobs)} job(s)")
        click.echo("  ".join(f"{state} {n}" for state, n in counts.items() if n))
        for row in rows:
            if row["error"]:
                click.echo(f"FAILED {row['id']}: {row['error']['code']}: {row['error']['message']}")
            elif row["status"] != JobStatus.SUCCEEDED.value:
                click.echo(f"{row['status'].upper()} {row['id']}")
        for row in rows:
            for file in row["files"]:
                click.echo(file)
    if not ok:
        sys.exit(EXIT_JOBS_FAILED)


@cli.command()
@click.option("--window", default="1h", show_default=True, help="How far back: 15m, 1h, 1d...")
@json_option
@pass_app
def stats(app: App, window: str, as_json: bool) -> None:
    """Queue depth by state, and throughput and mean wait/run time over a window."""
    result = app.store.jobs.stats(window_s=parse_duration(window, "window").total_seconds())
    if as_json:
        emit_json(result.to_dict())
        return
    depth = "  ".join(f"{s.value} {n}" for s, n in result.counts.items())
    finished = "  ".join(f"{s.value} {n}" for s, n in result.finished.items())
    click.echo(f"depth       {depth}")
    click.echo(f"last {window:<6} {finished}")
    click.echo(
        f"throughput  {result.jobs_per_minute:.2f} jobs/min, "
        f"{result.images_per_minute:.2f} images/min"
    )
    click.echo(f"mean wait   {short_duration(result.mean_wait_s)}")
    click.echo(f"mean run    {short_duration(result.mean_run_s)}")


@cli.command()
@click.option("--older-than", help="Finished more than this long ago: 30d, 12h...")
@click.option("--before", "before_text", help="Finished before this date (ISO 8601).")
@click.option(
    "--images",
    is_flag=True,
    help="Instead: apply the retention limits to the outbox now (retention.days, "
    "retention.max_storage_gb).",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@json_option
@pass_app
def purge(
    app: App,
    older_than: str | None,
    before_text: str | None,
    images: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Delete finished jobs (succeeded, failed, cancelled) from the table; or, with
    --images, their outbox directories by the retention limits.

    Unfinished jobs are never touched. Without --images, images stay in place."""
    if images:
        if older_than or before_text:
            raise click.UsageError("--images uses the retention settings; no dates")
        _purge_images(app, dry_run, as_json)
        return
    if (older_than is None) == (before_text is None):
        raise click.UsageError("give --older-than or --before (or --images)")
    before = parse_when(older_than or before_text or "", "older-than" if older_than else "before")
    ids = app.store.jobs.purge(before=before, dry_run=dry_run)
    if not dry_run:
        from .. import inputs

        for job_id in ids:  # a purged job's inputs go with it (its images stay)
            inputs.remove(Path(app.settings.paths.data_dir), job_id)
    if as_json:
        emit_json({"dry_run": dry_run, "before": before.isoformat(), "jobs": ids})
    else:
        verb = "would delete" if dry_run else "deleted"
        click.echo(f"{verb} {len(ids)} finished job(s)")


def _purge_images(app: App, dry_run: bool, as_json: bool) -> None:
    from ..outbox import Outbox
    from ..retention import apply_retention

    retention = app.settings.retention
    report = apply_retention(
        app.store,
        Outbox(app.settings.paths.outbox),
        days=retention.days,
        max_storage_gb=retention.max_storage_gb,
        dry_run=dry_run,
        data_dir=Path(app.settings.paths.data_dir),
    )
    if as_json:
        emit_json({"dry_run": dry_run, **report.to_dict()})
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{verb} the images of {len(report.deleted)} job(s) ({len(report.by_age)} by age, "
        f"{len(report.by_size)} by size), {report.bytes_freed / 1e6:.1f} MB; "
        f"{report.bytes_kept / 1e6:.1f} MB kept"
    )


@cli.command("config")
@json_option
@pass_app
def show_config(app: App, as_json: bool) -> None:
    """Show the settings in effect (file, environment and options merged)."""
    settings = app.settings
    values = settings.to_dict()
    if as_json:
        emit_json({"config_file": settings.config_file, **values})
        return
    note(f"# from {settings.config_file or 'built-in defaults'} + environment + options")
    for section, table in values.items():
        click.echo(f"[{section}]")
        for key, value in table.items():
            click.echo(f"{key} = {json.dumps(value)}")
        click.echo()
