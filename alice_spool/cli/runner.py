"""`alice-spool runner`: the GPU runner process on its own."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .. import stopping
from ..stopping import StopSignals, exit_now
from .app import App, cli, pass_app

if TYPE_CHECKING:
    from ..engine.resident import Engine
    from ..runner import Runner

log = logging.getLogger("alice_spool.runner")


@cli.command()
@click.option("--name", help="This runner's name in leases (default: runner.name, else host).")
@click.option("--device", help="auto, cpu, cuda, cuda:N or mps (default: runner.device).")
@click.option(
    "--max-batch", type=click.IntRange(1, 64), help="Images per pipeline call (runner.max_batch)."
)
@click.option(
    "--exit-when-idle",
    is_flag=True,
    help="Stop once nothing is left to claim (for cron jobs and benchmarks).",
)
@click.option("--parent-pid", type=int, hidden=True, help="Stop when this process is gone.")
@click.option("--count-devices", is_flag=True, hidden=True, help="Print the CUDA device count.")
@pass_app
def runner(
    app: App,
    name: str | None,
    device: str | None,
    max_batch: int | None,
    exit_when_idle: bool,
    parent_pid: int | None,
    count_devices: bool,
) -> None:
    """Run queued jobs on the GPU until stopped (SIGTERM or Ctrl-C: finish up and release
    the jobs held; a second one: exit at once)."""
    if count_devices:  # for serve's runner.devices = "all" (serve never imports torch)
        stopping.release()  # a short run: signals do what they do by default
        from ..engine.device import cuda_devices

        click.echo(cuda_devices())
        return
    # The handlers first, before torch's imports and the model's loading (seconds): a
    # stop asked meanwhile is acted on as soon as there is a runner to stop.
    stop = threading.Event()
    worker: Runner | None = None

    def warm_stop(signal_name: str) -> None:
        log.info("%s: finishing up; send it again after a second to exit at once", signal_name)
        stop.set()
        if worker is not None:
            worker.request_stop()

    StopSignals(warm_stop, exit_now).install()
    if stop.is_set():  # stopped while the command started: nothing was claimed
        return
    worker, engine = _assemble(
        app,
        name=name,
        device=device,
        max_batch=max_batch,
        exit_when_idle=exit_when_idle,
        parent_pid=parent_pid,
    )
    try:
        if not stop.is_set():  # else stopped while the model loaded: nothing was claimed
            worker.run()
    finally:
        engine.unload()


def _assemble(
    app: App,
    *,
    name: str | None,
    device: str | None,
    max_batch: int | None,
    exit_when_idle: bool,
    parent_pid: int | None,
) -> tuple[Runner, Engine]:
    """The runner and its engine, built from the settings and the command's options
    (torch and diffusers imported here, the model loaded if one is preloaded)."""
    from ..engine.device import choose
    from ..engine.generate import quiet_libraries
    from ..engine.resident import Engine
    from ..outbox import Outbox
    from ..runner import Runner, RunnerOptions

    settings = app.settings
    if name is not None:
        RunnerOptions.check_name(name)
    options = RunnerOptions.from_settings(
        settings,
        name=name,
        max_batch=max_batch,
        exit_when_idle=exit_when_idle or None,
        parent_pid=parent_pid,
    )
    quiet_libraries()
    engine = Engine(
        app.registry,
        choose(device or settings.runner.device),
        memory=settings.runner.memory_choice,
        default_model=settings.generation.default_model,
        keep_in_ram=settings.runner.keep_in_ram,
        max_cached_loras=settings.runner.max_cached_loras,
        max_batch=options.max_batch,
        preload=settings.runner.preload,
        compile=settings.runner.compile,
        compile_sizes=settings.runner.compile_size_pairs,
        oom_above=app.faults.oom_above,
    )
    outbox = Outbox(
        settings.paths.outbox,
        png_compress_level=settings.runner.png_compress_level,
        faults=app.faults,
    )
    worker = Runner(
        app.store,
        outbox,
        engine,
        options,
        lock_dir=Path(settings.paths.data_dir),
        faults=app.faults,
    )
    return worker, engine
