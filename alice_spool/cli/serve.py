"""`alice-spool api` (the HTTP API and the inbox watcher), `alice-spool serve` (those
plus the GPU runners as supervised child processes) and `alice-spool install-service`.
The daemon itself is `alice_spool.daemon`."""

from __future__ import annotations

import click

from ..daemon.run import Daemon
from .app import App, cli, pass_app


def _run(app: App, *, with_runner: bool, host: str | None, port: int | None) -> None:
    daemon = Daemon(app, with_runner=with_runner)
    if not daemon.run(host, port):
        settings = app.settings
        raise click.ClickException(
            f"could not listen on {host or settings.server.host}:"
            f"{settings.server.port if port is None else port} (in use, or not allowed?)"
        )


_host = click.option("--host", help="Address to listen on (server.host).")
_port = click.option("--port", type=click.IntRange(0, 65535), help="Port (server.port).")


@cli.command()
@_host
@_port
@pass_app
def api(app: App, host: str | None, port: int | None) -> None:
    """Serve the HTTP API and watch the inbox (no runner: run `alice-spool runner`)."""
    _run(app, with_runner=False, host=host, port=port)


@cli.command()
@_host
@_port
@pass_app
def serve(app: App, host: str | None, port: int | None) -> None:
    """Run everything on this host: the HTTP API, the inbox watcher, and the GPU runner
    as a child process that is restarted if it dies. SIGTERM stops all of it cleanly."""
    _run(app, with_runner=True, host=host, port=port)


@cli.command("install-service")
@click.option("--print", "print_", is_flag=True, required=True, help="Print the unit to stdout.")
@click.option("--prefix", default="/opt/alice/venv", show_default=True, help="The venv.")
@click.option("--user", default="alice", show_default=True)
@click.option("--config", "config_path", default="/etc/alice/config.toml", show_default=True)
@click.option("--state-dir", default="/var/lib/alice", show_default=True)
@click.option(
    "--runner",
    "runner_only",
    is_flag=True,
    help="The template alice-runner@.service (one runner per GPU) for runner-only hosts.",
)
def install_service(
    print_: bool, prefix: str, user: str, config_path: str, state_dir: str, runner_only: bool
) -> None:
    """Render alice.service for an install (see README.md, "Install as a service"), or
    with --runner alice-runner@.service for a host that only runs jobs ("Scaling out"):

    \b
      alice-spool install-service --print > /etc/systemd/system/alice.service
      alice-spool install-service --print --runner > /etc/systemd/system/alice-runner@.service
    """
    from ..service import UnitOptions, render_unit

    options = UnitOptions(prefix, user, config_path, state_dir)
    click.echo(render_unit(options, runner=runner_only), nl=False)
