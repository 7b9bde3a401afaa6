"""The `alice-spool` group: global options, shared state, and how errors are shown.

A `SpoolError` raised by any command becomes one line on stderr, `Error: <message>
[<code>]`, and exit status 3 (4 for a wait that timed out).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import click

from .. import __version__, logs, migrate, stopping
from ..config import Settings, load_settings
from ..database import Database
from ..errors import JobTimeout, SpoolError
from ..faults import Faults
from ..library.registry import ModelRegistry
from ..store import Store

EXIT_OK = 0
EXIT_JOBS_FAILED = 1  # `wait` / `submit --wait`: a job failed or was cancelled
EXIT_USAGE = 2  # click's own code for bad options
EXIT_ERROR = 3  # a SpoolError: invalid input, no such job, database trouble
EXIT_TIMEOUT = 4  # `wait --timeout` ran out

# The commands that stop on SIGTERM/SIGINT by themselves (stopping.StopSignals): they act
# on a signal held while the command line started; any other gets the default back.
STOPS_ON_SIGNALS = frozenset({"serve", "api", "runner", "watch", "downloader"})


class CommandError(click.ClickException):
    """A `SpoolError` as click shows it: `Error: <message> [<code>]`."""

    exit_code = EXIT_ERROR

    def __init__(self, error: SpoolError) -> None:
        super().__init__(f"{error.message} [{error.code}]")


class TimedOut(CommandError):
    """`wait --timeout` ran out (its own exit status)."""

    exit_code = EXIT_TIMEOUT


class SpoolGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JobTimeout as exc:
            raise TimedOut(exc) from exc
        except SpoolError as exc:
            raise CommandError(exc) from exc


@dataclass
class App:
    """What the commands share: settings and the store, built on first use."""

    config_file: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)  # the hidden --crash-at... (tests)

    @cached_property
    def settings(self) -> Settings:
        settings = load_settings(self.config_file, overrides=self.overrides)
        logs.configure(settings.logging)
        return settings

    @cached_property
    def database(self) -> Database:
        options = self.settings.database
        return Database.open(
            self.settings.database_url,
            synchronous=options.synchronous,
            busy_timeout_s=options.busy_timeout_s,
        )

    @cached_property
    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.settings.paths.models)

    def close(self) -> None:
        if "database" in self.__dict__:  # only if a command opened it
            self.database.close()

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
@click.option("--crash-at", hidden=True, metavar="POINT[:N]", help="Tests: crash there.")
@click.option("--inject-oom-above", type=int, hidden=True, help="Tests: fail bigger calls.")
@click.version_option(__version__, prog_name="alice-spool")
@click.pass_context
def cli(
    ctx: click.Context,
    config_file: str | None,
    data_dir: str | None,
    database_url: str | None,
    assignments: tuple[str, ...],
    log_level: str | None,
    crash_at: str | None,
    inject_oom_above: int | None,
) -> None:
    """alice-spool: a durable job spool for Stable Diffusion images.

    Requests come in through the HTTP API, the inbox directory or this command, wait in
    one durable job table, and are run by the GPU runner into the outbox.

    \b
    Settings come from config.toml, ALICE_<SECTION>_<KEY> environment variables and
    the options below, the later winning. Exit status: 0 ok, 1 a job failed or was
    cancelled (wait), 2 bad usage, 3 error, 4 timed out waiting.
    """
    if ctx.invoked_subcommand not in STOPS_ON_SIGNALS:
        stopping.release()
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
    try:
        faults = Faults.parse(crash_at, inject_oom_above)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--crash-at/--inject-oom-above") from None
    ctx.obj = App(config_file, overrides, faults)
    ctx.call_on_close(ctx.obj.close)


def _lora_option(
    _context: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> list[dict[str, Any]] | None:
    """`--lora NAME[:SCALE]` -> the `loras` field (checked with the rest of the request)."""
    if not values:
        return None
    loras: list[dict[str, Any]] = []
    for value in values:
        name, _, scale = value.rpartition(":")
        try:
            loras.append({"name": name, "scale": float(scale)} if name else {"name": value})
        except ValueError:
            loras.append({"name": value})  # a colon that is part of no scale: the name decides
    return loras


def generation_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The request fields as options, shared by `submit` and `generate`."""
    options = [
        click.option("--negative-prompt", "--negative", help="What the image should not show."),
        click.option("--model", "-m", metavar="MODEL", help="Model id, e.g. sd/tiny."),
        click.option("--width", type=int, help="Width in pixels (multiple of 8)."),
        click.option("--height", type=int, help="Height in pixels (multiple of 8)."),
        click.option("--size", metavar="WxH", help="Width and height, e.g. 768x512."),
        click.option("--steps", type=int, help="Denoising steps."),
        click.option("--guidance", "--cfg", "guidance_scale", type=float, help="Guidance scale."),
        click.option("--seed", type=int, help="Seed (-1: random, recorded)."),
        click.option(
            "--scheduler",
            metavar="NAME",
            help="Sampler, optionally with a schedule type: e.g. euler_a, dpm++_2m_karras, "
            "euler_a_karras, ddim_normal, or A1111's 'DPM++ 2M SDE Exponential'.",
        ),
        click.option("-n", "--images", "n", type=int, help="Images to make (1-16)."),
        click.option(
            "--lora",
            "loras",
            metavar="NAME[:SCALE]",
            multiple=True,
            callback=_lora_option,
            help="A LoRA from <models>/loras/ (lora/NAME), scale 1 unless given; repeatable.",
        ),
        click.option(
            "--vae",
            metavar="NAME",
            help="A VAE from <models>/vae/ (vae/NAME) in place of the model's own.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command
