"""The `alice-spool` command line: a thin click layer over the library.

Each command parses its options, calls the store, and prints a table (or JSON with
`--json`). A `SpoolError` becomes one line on stderr and exit status 3. Nothing here
imports torch: commands that need the engine import it inside the command.
"""

from __future__ import annotations

import getpass
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import click

from . import __version__, migrate
from .config import Settings, load_settings
from .database import Database
from .errors import InvalidParameters, JobTimeout, SpoolError
from .models import JobStatus, Source
from .records import JobRecord, NewJob
from .spec import normalise_model_id, parse_request
from .store import Store
from .terminal import job_details, jobs_table, parse_duration, parse_when, short_duration

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_JOBS_FAILED = 1  # `wait` / `submit --wait`: a job failed or was cancelled
EXIT_USAGE = 2  # click's own code for bad options
EXIT_ERROR = 3  # a SpoolError: invalid input, no such job, database trouble
EXIT_TIMEOUT = 4  # `wait --timeout` ran out


class CommandError(click.ClickException):
    """A `SpoolError` as click shows it: `Error: <message> [<code>]`."""

    exit_code = EXIT_ERROR

    def __init__(self, error: SpoolError) -> None:
        super().__init__(f"{error.message} [{error.code}]")
        if isinstance(error, JobTimeout):
            self.exit_code = EXIT_TIMEOUT


class SpoolGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SpoolError as exc:
            raise CommandError(exc) from exc


@dataclass
class App:
    """What the commands share: settings and the store, built on first use."""

    config_file: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def settings(self) -> Settings:
        settings = load_settings(self.config_file, overrides=self.overrides)
        logging.basicConfig(
            level=settings.logging.level,
            format="%(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        # Alembic narrates every connection at INFO; its warnings and errors still show.
        logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.root.level))
        return settings

    @cached_property
    def database(self) -> Database:
        return Database.open(self.settings.database_url)

    @cached_property
    def store(self) -> Store:
        migrate.ensure_current(self.database)
        return Store(
            self.database,
            max_queue=self.settings.generation.max_queue,
            max_attempts=self.settings.runner.max_attempts,
        )


pass_app = click.make_pass_decorator(App)


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(
        command
    )


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def note(message: str) -> None:
    """Something for the person, not for a script reading stdout."""
    click.echo(message, err=True)


# -- the group ------------------------------------------------------------------------


@click.group(
    cls=SpoolGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--config",
    "config_file",
    metavar="PATH",
    help="Config file (default: $ALICE_CONFIG, else ./config.toml if present).",
)
@click.option("--data-dir", metavar="DIR", help="Override paths.data_dir.")
@click.option("--database-url", metavar="URL", help="Override paths.database_url.")
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override any setting, e.g. --set runner.max_batch=4 (repeatable).",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Override logging.level.",
)
@click.version_option(__version__, prog_name="alice-spool")
@click.pass_context
def cli(
    ctx: click.Context,
    config_file: str | None,
    data_dir: str | None,
    database_url: str | None,
    assignments: tuple[str, ...],
    log_level: str | None,
) -> None:
    """alice-spool: a durable job spool for Stable Diffusion images.

    Requests come in through the HTTP API, the inbox directory or this command, wait in
    one durable job table, and are run by the GPU runner into the outbox.

    \b
    Settings come from config.toml, ALICE_<SECTION>_<KEY> environment variables and
    the options below, the later winning. Exit status: 0 ok, 1 a job failed or was
    cancelled (wait), 2 bad usage, 3 error, 4 timed out waiting.
    """
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected SECTION.KEY=VALUE, got {assignment!r}")
        overrides[key.strip()] = value
    if data_dir is not None:
        overrides["paths.data_dir"] = data_dir
    if database_url is not None:
        overrides["paths.database_url"] = database_url
    if log_level is not None:
        overrides["logging.level"] = log_level
    ctx.obj = App(config_file, overrides)


# -- database -------------------------------------------------------------------------


@cli.group(cls=SpoolGroup)
def db() -> None:
    """Create, upgrade and check the job database."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@json_option
@pass_app
def db_upgrade(app: App, revision: str, as_json: bool) -> None:
    """Apply the schema migrations (creates the database if it does not exist)."""
    before = migrate.schema_state(app.database)
    after = migrate.upgrade(app.database, revision)
    if as_json:
        emit_json({"database": app.database.url, "from": before.current, **after.to_dict()})
    elif before.current == after.current:
        click.echo(f"{app.database.url}: already at revision {after.current}")
    else:
        click.echo(f"{app.database.url}: {before.current or 'empty'} -> {after.current}")


@db.command("current")
@json_option
@pass_app
def db_current(app: App, as_json: bool) -> None:
    """Show the database's schema revision and the one this version expects."""
    state = migrate.schema_state(app.database)
    if as_json:
        emit_json({"database": app.database.url, **state.to_dict()})
        return
    where = "up to date" if state.up_to_date else f"expected {state.head}"
    click.echo(f"{app.database.url}: revision {state.current or 'none'} ({where})")


@db.command("check")
@json_option
@pass_app
def db_check(app: App, as_json: bool) -> None:
    """Check the revision, the schema against the code, and the file's integrity.

    Exits 1 if anything is off."""
    state = migrate.schema_state(app.database)
    drift = migrate.schema_drift(app.database) if state.current else []
    integrity = app.database.integrity_check()
    checks = {
        "revision": state.up_to_date,
        "schema": state.current is not None and not drift,
        "integrity": integrity == ["ok"],
    }
    if as_json:
        emit_json({**state.to_dict(), "drift": drift, "integrity": integrity, "checks": checks})
    else:
        click.echo(
            f"revision   {'ok' if checks['revision'] else 'FAIL'}  "
            f"({state.current or 'none'}, expected {state.head})"
        )
        click.echo(f"schema     {'ok' if checks['schema'] else 'FAIL'}")
        for diff in drift:
            click.echo(f"           {diff}")
        click.echo(f"integrity  {'ok' if checks['integrity'] else 'FAIL'}")
        if integrity != ["ok"]:
            for line in integrity[:20]:
                click.echo(f"           {line}")
    if not all(checks.values()):
        sys.exit(EXIT_JOBS_FAILED)


# -- submitting ---------------------------------------------------------------------------


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


def _json_value(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidParameters(f"{where}: invalid JSON: {exc}") from None


def _read_batch(text: str, name: str, app: App) -> list[NewJob]:
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name} line {number}"
        try:
            request = parse_request(_json_value(line, where), app.settings.generation)
        except InvalidParameters as exc:
            raise InvalidParameters(
                exc.message if exc.message.startswith(where) else f"{where}: {exc.message}",
                field=exc.field,
                line=number,
            ) from None
        items.append(NewJob(request.spec, request.idempotency_key, name))
    if not items:
        raise InvalidParameters(f"{name} holds no requests")
    return items


def _finish_waiting(jobs: Sequence[JobRecord], as_json: bool, extra: dict[str, Any]) -> None:
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
@click.option("--negative-prompt", "--negative", help="What the image should not show.")
@click.option("--model", "-m", help="Model id, e.g. sd/tiny (default: generation.default_model).")
@click.option("--width", type=int, help="Width in pixels (multiple of 8).")
@click.option("--height", type=int, help="Height in pixels (multiple of 8).")
@click.option("--size", help="Width and height as WxH, e.g. 768x512.")
@click.option("--steps", type=int, help="Denoising steps.")
@click.option("--guidance", "--cfg", "guidance_scale", type=float, help="Guidance scale.")
@click.option("--seed", type=int, help="Seed (-1: random, recorded).")
@click.option("--scheduler", help="Scheduler, e.g. euler_a or dpm++_2m_karras.")
@click.option("-n", "--images", "n", type=int, help="Images to make (1-16).")
@click.option("--priority", type=int, help="Higher runs first (-100..100, default 0).")
@click.option("--id", "key", help="Idempotency key: submitting the same id again is a no-op.")
@click.option(
    "--file", "request_file", metavar="PATH", help="Submit one JSON request file (- = stdin)."
)
@click.option(
    "--batch",
    "batch_file",
    metavar="PATH",
    help="Submit a JSONL batch, one request per line (- = stdin).",
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
    key: str | None,
    size: str | None,
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
    if (request_file or batch_file) and (given or key or size):
        raise click.UsageError("generation options apply to a PROMPT; put them in the file instead")
    if batch_file is not None:
        text, name = _read_text(batch_file, "batch file")
        batch = app.store.enqueue_batch(_read_batch(text, name, app), source=Source.CLI)
        if as_json and not wait:
            emit_json(
                {
                    "batch_id": batch.batch_id,
                    "created": batch.created,
                    "jobs": [j.to_dict() for j in batch.jobs],
                }
            )
        elif not as_json:
            click.echo(batch.batch_id)
            verb = "queued" if batch.created else "already submitted:"
            note(f"{verb} {len(batch.jobs)} job(s) in batch {batch.batch_id}")
        jobs, extra = batch.jobs, {"batch_id": batch.batch_id}
    else:
        if request_file is not None:
            text, name = _read_text(request_file, "request file")
            data, client = _json_value(text, name), name
        else:
            data = {"prompt": prompt, **given}
            if key is not None:
                data["id"] = key
            if size is not None:
                data["size"] = size
            client = _user()
        request = parse_request(data, app.settings.generation)
        result = app.store.enqueue(
            request.spec,
            source=Source.CLI,
            client=client,
            idempotency_key=request.idempotency_key,
        )
        if as_json and not wait:
            emit_json({**result.job.to_dict(), "created": result.created})
        elif not as_json:
            click.echo(result.job.id)
            if not result.created:
                note(f"already submitted with id {request.idempotency_key!r}: job {result.job.id}")
        jobs, extra = [result.job], {}
    if wait:
        final = app.store.wait_for([j.id for j in jobs], timeout_s=timeout)
        _finish_waiting(final, as_json, extra)


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


# -- looking at jobs ----------------------------------------------------------------------


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
@click.option("--batch", "batch_id", help="Only jobs of this batch.")
@click.option("--model", help="Only jobs for this model.")
@click.option(
    "--source",
    type=click.Choice([s.value for s in Source]),
    help="Only jobs that came in this way.",
)
@click.option("--client", help="Only jobs from this client (API key name, file name, user).")
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
    since: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    page = app.store.list_jobs(
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
    job = app.store.get(job_id)
    if as_json:
        emit_json(job.to_dict())
    else:
        click.echo(job_details(job))


@cli.command()
@click.argument("job_id", required=False)
@click.option("--batch", "batch_id", help="Cancel every unfinished job of this batch.")
@json_option
@pass_app
def cancel(app: App, job_id: str | None, batch_id: str | None, as_json: bool) -> None:
    """Cancel a job (queued: at once; running: at the runner's next step), or a batch."""
    if (job_id is None) == (batch_id is None):
        raise click.UsageError("give a JOB_ID or --batch, not both")
    if batch_id is not None:
        report = app.store.cancel_batch(batch_id)
        if as_json:
            emit_json({"batch_id": batch_id, **report.__dict__})
        else:
            click.echo(
                f"batch {batch_id}: {report.cancelled} cancelled, "
                f"{report.requested} stopping, {report.untouched} already finished"
            )
        return
    assert job_id is not None
    job = app.store.cancel(job_id)
    if as_json:
        emit_json(job.to_dict())
    else:
        state = "stopping at the next step" if job.status is JobStatus.RUNNING else job.status.value
        click.echo(f"{job.id} {state}")


@cli.command()
@click.argument("job_id", required=False)
@click.option("--failed", is_flag=True, help="Retry every failed job.")
@click.option("--batch", "batch_id", help="With --failed: only this batch's.")
@json_option
@pass_app
def retry(app: App, job_id: str | None, failed: bool, batch_id: str | None, as_json: bool) -> None:
    """Queue a failed or cancelled job again (or every failed job with --failed)."""
    if (job_id is None) == (not failed):
        raise click.UsageError("give a JOB_ID or --failed, not both")
    if batch_id is not None and not failed:
        raise click.UsageError("--batch goes with --failed")
    if failed:
        ids = app.store.retry_failed(batch_id=batch_id)
        if as_json:
            emit_json({"retried": ids})
        else:
            click.echo(f"{len(ids)} failed job(s) queued again")
        return
    assert job_id is not None
    job = app.store.retry(job_id)
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
    job = app.store.set_priority(job_id, value)
    if as_json:
        emit_json(job.to_dict())
    else:
        click.echo(f"{job.id} priority {job.priority}")


@cli.command()
@click.argument("job_ids", nargs=-1)
@click.option("--batch", "batch_id", help="Wait for every job of this batch.")
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
        app.store.batch_counts(batch_id)  # a clear error for an unknown batch
        page = app.store.list_jobs(batch_id=batch_id, limit=10_000, oldest_first=True)
        job_ids, extra = tuple(j.id for j in page.jobs), {"batch_id": batch_id}
    final = app.store.wait_for(list(job_ids), timeout_s=timeout)
    _finish_waiting(final, as_json, extra)


@cli.command()
@click.option("--window", default="1h", show_default=True, help="How far back: 15m, 1h, 1d...")
@json_option
@pass_app
def stats(app: App, window: str, as_json: bool) -> None:
    """Queue depth by state, and throughput and mean wait/run time over a window."""
    result = app.store.stats(window_s=parse_duration(window, "window").total_seconds())
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
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@json_option
@pass_app
def purge(
    app: App, older_than: str | None, before_text: str | None, dry_run: bool, as_json: bool
) -> None:
    """Delete finished jobs (succeeded, failed, cancelled) from the table.

    Unfinished jobs are never touched. Images in the outbox are left in place."""
    if (older_than is None) == (before_text is None):
        raise click.UsageError("give --older-than or --before")
    before = parse_when(older_than or before_text or "", "older-than" if older_than else "before")
    ids = app.store.purge(before=before, dry_run=dry_run)
    if as_json:
        emit_json({"dry_run": dry_run, "before": before.isoformat(), "jobs": ids})
    else:
        verb = "would delete" if dry_run else "deleted"
        click.echo(f"{verb} {len(ids)} finished job(s)")


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


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="alice-spool")
