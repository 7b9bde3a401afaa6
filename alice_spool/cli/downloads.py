"""Model downloads from the command line: `models pull` queues a
durable download and follows it (a progress bar on a terminal, JSON lines with
`--json`), running it in the command when no worker takes it; `models downloads`,
`models cancel` and `models search`; and `alice-spool downloader`, the download workers
alone, for a host that runs no server."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from ..errors import DownloadFailed
from ..records import DownloadRecord
from ..states import DownloadStatus
from .app import App, cli, emit_json, json_option, note, pass_app
from .models import models

HANDOFF_S = 1.5  # a running server's worker looks for queued downloads every second
FOLLOW_EVERY_S = 0.25
UNFINISHED = [DownloadStatus.QUEUED, DownloadStatus.DOWNLOADING, DownloadStatus.VERIFYING]


def _sources(app: App) -> Any:
    from ..downloads.sources import SourceSettings

    return SourceSettings.from_settings(app.settings)


def _same_request(download: DownloadRecord, source: str, reference: dict[str, Any]) -> bool:
    kept = {k: v for k, v in download.reference.items() if k != "plan"}
    return download.source == source and kept == reference


@models.command("pull")
@click.argument("ref")
@click.option("--name", help="The installed name (default: the source's).")
@click.option("--revision", help="Hugging Face: a branch, tag or commit (or REF@rev).")
@click.option("--file", "file_", help="Hugging Face: one file of the repository (or REF:file).")
@click.option(
    "--kind",
    type=click.Choice(["diffusers", "checkpoint", "lora"]),
    help="What it is (default: told by the source, or a file's tensor names).",
)
@click.option("--sha256", help="For a URL: the file's SHA-256, checked before installing.")
@click.option("--json", "as_json", is_flag=True, help="Print the download as JSON lines.")
@pass_app
def models_pull(
    app: App,
    ref: str,
    name: str | None,
    revision: str | None,
    file_: str | None,
    kind: str | None,
    sha256: str | None,
    as_json: bool,
) -> None:
    """Download a model: a Hugging Face diffusers repository (exactly the files its
    pipeline needs), one checkpoint or LoRA file of a repository, a CivitAI model, or
    a file at an http(s) URL; installed once complete and verified.

    REF is org/repo[@rev], hf:org/repo[@rev][:file], civitai:MODEL_ID[@VERSION_ID]
    or an http(s) URL. The download is a durable row: a running server's workers take
    it (this command then follows it); otherwise it runs here, and a pull cut short
    (Ctrl-C) resumes where it stopped when pulled again."""
    from ..downloads import requests

    body = requests.from_ref(ref)
    extra = {"name": name, "revision": revision, "file": file_, "kind": kind, "sha256": sha256}
    body.update({k: v for k, v in extra.items() if v is not None})
    sources = _sources(app)
    asked = requests.parse(body, allow_private_urls=sources.allow_private_urls)
    store = app.store
    unfinished = [
        d
        for d in store.downloads.list_downloads(statuses=UNFINISHED, limit=500)
        if _same_request(d, asked.source, asked.reference)
    ]
    if unfinished:  # pulled before and cut short: that download goes on
        download = unfinished[-1]
        note(f"resuming download {download.id}")
    else:
        asked.check_name_free(Path(app.settings.paths.models))
        download = store.downloads.queue_download(
            asked.source, asked.reference, kind=asked.kind, name=asked.name, client="cli"
        )
    done = _follow(app, download, sources, as_json=as_json)
    if done.status is DownloadStatus.CANCELLED:
        raise DownloadFailed(f"download {done.id} was cancelled")
    if done.error_code:
        raise DownloadFailed(f"download {done.id} failed ({done.error_code}): {done.error_message}")
    if not as_json:
        click.echo(done.model)


def _follow(app: App, download: DownloadRecord, sources: Any, *, as_json: bool) -> DownloadRecord:
    """Follow `download` to its end, running it here unless a worker takes it."""
    store = app.store
    stop = threading.Event()
    runner: threading.Thread | None = None
    deadline = time.monotonic() + HANDOFF_S
    current = store.downloads.get_download(download.id)
    while current.status is DownloadStatus.QUEUED and time.monotonic() < deadline:
        time.sleep(0.1)
        current = store.downloads.get_download(download.id)
    if current.status is DownloadStatus.QUEUED:
        runner = _run_here(app, download.id, sources, stop)
    elif not as_json:
        note(f"download {download.id} runs in a server's worker; following it")
    show = _Shown(as_json)
    try:
        while True:
            current = store.downloads.get_download(download.id)
            show.update(current)
            if current.status.finished:
                break
            if runner is not None and not runner.is_alive():  # handed back, or lost
                current = store.downloads.get_download(download.id)
                if not current.status.finished:
                    raise DownloadFailed(f"download {download.id} stopped: {current.status.value}")
            time.sleep(FOLLOW_EVERY_S)
    except KeyboardInterrupt:
        stop.set()
        if runner is not None:
            runner.join(30)
            note(f"stopped: pull again to resume download {download.id} where it is")
        else:
            note(f"download {download.id} goes on in the server")
        raise SystemExit(130) from None
    finally:
        show.close()
    if runner is not None:
        runner.join(30)
    return current


def _run_here(
    app: App, download_id: str, sources: Any, stop: threading.Event
) -> threading.Thread | None:
    from ..downloads.worker import DownloadWorker, WorkerOptions

    options = WorkerOptions(owner=f"{socket.gethostname()}/{os.getpid()}/pull")
    held = app.store.downloads.claim_download(
        options.owner, lease_s=options.lease_s, download_id=download_id
    )
    if held is None:  # a worker elsewhere took it first: follow that one
        return None
    worker = DownloadWorker(app.store, Path(app.settings.paths.models), options, sources)
    thread = threading.Thread(
        target=worker.run_download, args=(held,), kwargs={"stop": stop}, name="pull", daemon=True
    )
    thread.start()
    return thread


class _Shown:
    """A download as it goes: a progress bar on a terminal (rich), a JSON line per
    change with `--json`, nothing otherwise (the model's id is printed at the end)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.last: dict[str, Any] | None = None
        self.progress: Any = None
        self.task: Any = None
        if not as_json and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                transient=False,
            )
            self.progress.start()

    def update(self, download: DownloadRecord) -> None:
        shown = download.to_dict()
        if shown == self.last:
            return
        self.last = shown
        if self.as_json:
            click.echo(json.dumps(shown))
        elif self.progress is not None:
            label = f"{download.name or download.id} ({download.status.value})"
            if self.task is None:
                self.task = self.progress.add_task(label, total=download.bytes_total)
            self.progress.update(
                self.task,
                description=label,
                completed=download.bytes_done,
                total=download.bytes_total,
            )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


@models.command("downloads")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in DownloadStatus]),
    help="Only these (repeatable).",
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@json_option
@pass_app
def models_downloads(app: App, statuses: tuple[str, ...], limit: int, as_json: bool) -> None:
    """The model downloads, newest first."""
    from ..terminal import table

    found = app.store.downloads.list_downloads(
        statuses=[DownloadStatus(s) for s in statuses] or None, limit=limit
    )
    if as_json:
        emit_json([d.to_dict() for d in found])
        return
    if not found:
        note("no downloads")
        return
    rows = []
    for d in found:
        share = (
            f"{100 * d.bytes_done / d.bytes_total:.0f}%" if d.bytes_total else f"{d.bytes_done} B"
        )
        outcome = d.model or (f"{d.error_code}: {d.error_message}" if d.error_code else "")
        rows.append([d.id, d.source, d.name or "", d.status.value, share, outcome])
    click.echo(table(["ID", "SOURCE", "NAME", "STATUS", "DONE", "MODEL / ERROR"], rows))


@models.command("cancel")
@click.argument("download_id")
@pass_app
def models_cancel(app: App, download_id: str) -> None:
    """Cancel a download: queued, at once; running, at its worker's next report (the
    partial files are removed)."""
    found = app.store.downloads.cancel_download(download_id)
    asked = found.status is not DownloadStatus.CANCELLED
    click.echo(f"{found.id}: {'cancel asked' if asked else 'cancelled'}")


@models.command("search")
@click.argument("query", default="")
@click.option(
    "--source", type=click.Choice(["civitai", "huggingface"]), default="civitai", show_default=True
)
@click.option("--type", "kind", type=click.Choice(["checkpoint", "lora"]), help="Only these.")
@click.option("--nsfw", is_flag=True, help="CivitAI: include NSFW models.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 100))
@json_option
@pass_app
def models_search(
    app: App, query: str, source: str, kind: str | None, nsfw: bool, limit: int, as_json: bool
) -> None:
    """Search CivitAI (by default) or the Hugging Face Hub; each hit says what to pull."""
    from ..downloads import civitai, huggingface
    from ..terminal import table

    sources = _sources(app)
    if source == "civitai":
        types = {"checkpoint": ["Checkpoint"], "lora": list(civitai.LORA_TYPES)}.get(kind or "", [])
        page = civitai.search(
            sources, query, types=types, sort=None, nsfw=nsfw, limit=limit, cursor=None
        )
        refs = [f"civitai:{item['id']}" for item in page.data]
    else:
        page = huggingface.search(sources, query, sort="downloads", limit=limit, cursor=None)
        if kind == "lora":
            page.data[:] = [item for item in page.data if item["type"] == "lora"]
        refs = [f"hf:{item['id']}" for item in page.data]
    if as_json:
        emit_json({"data": page.data, "next_cursor": page.next_cursor})
        return
    if not page.data:
        note("nothing found")
        return
    rows = [
        [ref, str(item.get("type") or ""), str(item.get("downloads") or 0), str(item["name"])]
        for ref, item in zip(refs, page.data, strict=True)
    ]
    click.echo(table(["PULL WITH", "TYPE", "DOWNLOADS", "NAME"], rows))


@cli.command()
@click.option("--concurrency", type=click.IntRange(1, 16), help="Downloads at once.")
@pass_app
def downloader(app: App, concurrency: int | None) -> None:
    """Run the download workers alone (for a host without a server; `serve` and `api`
    run them too), until stopped (SIGTERM or Ctrl-C: the downloads in progress go
    back to the queue, their bytes kept)."""
    from ..stopping import StopSignals, exit_now

    stopped = threading.Event()
    StopSignals(lambda _name: stopped.set(), exit_now).install()
    if stopped.is_set():  # stopped while the command started: nothing was taken yet
        return
    from ..downloads.worker import WorkerPool

    settings = app.settings
    pool = WorkerPool(
        app.store,
        Path(settings.paths.models),
        _sources(app),
        host=socket.gethostname(),
        count=concurrency or settings.downloads.concurrency,
    )
    if stopped.is_set():
        return
    pool.start()
    note(f"download workers running ({len(pool.workers)}); Ctrl-C to stop")
    stopped.wait()
    pool.stop()
