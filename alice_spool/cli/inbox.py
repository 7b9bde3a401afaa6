"""`alice-spool watch`: the inbox watcher on its own."""

from __future__ import annotations

import threading

import click

from .. import stopping
from ..stopping import StopSignals, exit_now
from .app import App, cli, emit_json, json_option, pass_app


@cli.command()
@click.option(
    "--polling/--native",
    default=None,
    help="Poll the directory (NFS, SMB) instead of the native events (inbox.polling).",
)
@click.option("--once", is_flag=True, help="Take the request files there now, then exit.")
@json_option
@pass_app
def watch(app: App, polling: bool | None, once: bool, as_json: bool) -> None:
    """Turn request files dropped into the inbox into jobs, until stopped.

    `*.json`: one request; `*.jsonl`: a batch, one request per line, all or nothing.
    Taken files move to inbox/accepted/, bad ones to inbox/rejected/ with NAME.error.json.
    """
    stop = threading.Event()
    if once:
        stopping.release()  # a short run: signals do what they do by default
    else:
        StopSignals(lambda _name: stop.set(), exit_now).install()
        if stop.is_set():  # stopped while the command started: nothing was taken
            return
    from ..inbox import Inbox

    inbox = Inbox.from_settings(app.settings, app.store, polling=polling, faults=app.faults)
    if once:
        inbox.run_once()
    else:
        inbox.start()
        try:
            stop.wait()
        finally:
            inbox.stop()
    summary = inbox.health()
    if as_json:
        emit_json(summary)
    else:
        click.echo(
            f"{summary['accepted']} file(s) taken, {summary['duplicates']} already taken before, "
            f"{summary['rejected']} rejected"
        )
