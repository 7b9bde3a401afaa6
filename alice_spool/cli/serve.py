"""`alice-spool api` (the HTTP API and the inbox watcher) and `alice-spool serve` (those
plus the GPU runner as a supervised child process): the daemon."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from .. import migrate
from ..errors import ModelNotFound, SpoolError
from ..service import sd_notify, watchdog_interval_s
from ..stopping import StopSignals, blocked, exit_now
from ..store import Store
from .app import App, cli, pass_app

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("alice_spool.serve")

RESTART_MIN_S = 1.0
RESTART_MAX_S = 60.0
HEALTHY_AFTER_S = 60.0  # a runner that lived this long restarts without waiting
STOP_GRACE_S = 30.0  # how long the runner may take to release its jobs on shutdown


def _child_argv(app: App, *command: str) -> list[str]:
    """This same configuration, for a child `alice-spool` process."""
    argv = [*_this_package(), *app.faults.arguments()]
    if app.config_file:
        argv += ["--config", app.config_file]
    for key, value in app.overrides.items():
        argv += ["--set", f"{key}={value}"]
    return [*argv, *command]


def _this_package() -> list[str]:
    """`python -m alice_spool` running the alice_spool this process runs. `-P` keeps the
    working directory off the child's sys.path: a directory holding an `alice_spool`
    folder (a clone of the repository, say) would shadow the installed package. Unless
    this process itself runs that directory's copy (`python -m` in an uninstalled source
    tree): then so do its children."""
    import alice_spool

    root = Path(alice_spool.__file__).resolve().parent.parent
    if not sys.flags.safe_path and sys.path and Path(sys.path[0] or ".").resolve() == root:
        return [sys.executable, "-m", "alice_spool"]
    return [sys.executable, "-P", "-m", "alice_spool"]


def runner_slots(app: App) -> list[tuple[str | None, str | None]]:
    """The (name, device) of each runner serve starts (`runner.devices`): one on the
    runner's own settings, or one per device, named `<runner.name or host>-gpuN` for
    cuda:N (`-cpuI`, `-mpsI` for the I-th entry otherwise)."""
    from ..runner.parts import default_name

    devices = list(app.settings.runner.devices)
    if not devices:
        return [(None, None)]
    if devices == ["all"]:
        count = _cuda_devices(app)
        if count == 0:
            log.warning('runner.devices = "all", but no CUDA device is here: one runner')
            return [(None, None)]
        devices = [f"cuda:{index}" for index in range(count)]
    base = app.settings.runner.name or default_name()
    slots: list[tuple[str | None, str | None]] = []
    for position, device in enumerate(devices):
        kind, _, index = device.partition(":")
        suffix = f"gpu{index}" if kind == "cuda" else f"{kind}{position}"
        slots.append((f"{base[: 64 - len(suffix) - 1]}-{suffix}", device))
    return slots


def _cuda_devices(app: App) -> int:
    """How many CUDA devices this host has, asked of a child (serve never imports torch)."""
    found = subprocess.run(
        _child_argv(app, "runner", "--count-devices"), capture_output=True, text=True, check=False
    )
    try:
        return int(found.stdout.strip())
    except ValueError:
        log.error("could not count the CUDA devices: %s", found.stderr.strip()[-500:])
        return 0


class Supervisor:
    """Runs `alice-spool runner` as a child process and starts it again if it dies,
    waiting longer after each quick death (1 s, 2 s, 4 s, ... 60 s).

    The child runs in a session of its own, so a signal to serve's process group (Ctrl-C
    in a terminal, `kill -TERM -PGID`) reaches serve alone, and serve passes exactly one
    SIGTERM on: the runner sees one stop, never a stop and a hurry."""

    def __init__(self, argv: list[str], label: str = "the runner") -> None:
        self.argv = argv
        self.label = label
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = time.monotonic()
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # starting a child vs. stopping: one at a time
        self._signalled: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(
            target=self._supervise, name="runner-supervisor", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def _supervise(self) -> None:
        delay = RESTART_MIN_S
        while True:
            with self._lock:
                if self._stopping.is_set():
                    return
                started = self.started_at = time.monotonic()
                with blocked():  # until the child holds them: a stop at once is not lost
                    self.process = subprocess.Popen(
                        [*self.argv, "--parent-pid", str(os.getpid())], start_new_session=True
                    )
            log.info("%s started (pid %d)", self.label, self.process.pid)
            code = self.process.wait()
            if self._stopping.is_set():
                return
            lived = time.monotonic() - started
            if lived >= HEALTHY_AFTER_S:
                delay = RESTART_MIN_S
            log.error(
                "%s exited with code %s after %.1f s; restarting in %.0f s",
                self.label,
                code,
                lived,
                delay,
            )
            self.restarts += 1
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, RESTART_MAX_S)

    def runner_healthy(self, store: Store, within_s: float) -> bool:
        """Not hung: the running child reported within `within_s` (or only just started).
        A child that is not running is being restarted here, which is not a hang."""
        process = self.process
        if process is None or process.poll() is not None:
            return True
        if time.monotonic() - self.started_at < within_s:
            return True
        now = datetime.now(UTC)
        mine = [r for r in store.runners() if r.owner.split("/")[1:2] == [str(process.pid)]]
        return any(r.age_s(now) < within_s for r in mine)

    def begin_stop(self) -> None:
        """Start no new runner, and SIGTERM the running one (once: it releases its jobs
        and exits)."""
        with self._lock:
            self._stopping.set()
            process = self.process
            if process is None or process is self._signalled or process.poll() is not None:
                return
            self._signalled = process
            process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """`begin_stop`, then wait for the runner; SIGKILL it if it hangs."""
        self.begin_stop()
        process = self.process
        if process is not None and process.poll() is None:
            try:
                process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.error("%s did not stop in %.0f s; killing it", self.label, STOP_GRACE_S)
                self.kill()
        self._thread.join(5)

    def kill(self) -> None:
        """A cold stop: SIGKILL the runner now (its jobs are rescued when it starts again)."""
        with self._lock:
            self._stopping.set()
            process = self.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


def _ensure_a_model(app: App) -> None:
    """A fresh data dir with no model gets the tiny smoke-test model, so the daemon
    works offline from the first command; a real model is never replaced as default."""
    if any(model.ok for model in app.registry.scan(force=True)):
        return
    subprocess.run(_child_argv(app, "models", "create-tiny", "--if-none"), check=True)
    log.warning(
        "no model was installed: created the tiny smoke-test model sd/tiny in %s. Its "
        "weights are random and its IMAGES ARE NOISE; install a real model with "
        "`alice-spool models pull <repo>`",
        app.registry.models_dir,
    )


def _pin_the_default(app: App) -> None:
    """Decide the default model now, before any request (the registry pins the first it
    works out): a model that arrives later, a user's download, never becomes it by
    sorting first. Nothing installed yet: the first model chosen is pinned then."""
    with contextlib.suppress(ModelNotFound):
        app.registry.default(app.settings.generation.default_model)


def _run(app: App, *, with_runner: bool, host: str | None, port: int | None) -> None:
    stopping = threading.Event()
    server: uvicorn.Server | None = None
    supervisors: list[Supervisor] = []

    def warm_stop(name: str) -> None:
        log.info("%s: stopping; send it again after a second to exit at once", name)
        stopping.set()
        if server is not None:
            server.should_exit = True
        for supervisor in supervisors:  # runners release their jobs while the API drains
            supervisor.begin_stop()

    def cold_stop(name: str) -> None:
        for supervisor in supervisors:
            supervisor.kill()
        exit_now(name)

    signals = StopSignals(warm_stop, cold_stop)
    signals.install()  # from the start: a stop while starting up is a stop too
    if stopping.is_set():  # one came while the command started: nothing runs yet
        return
    import uvicorn

    from ..api import create_app
    from ..api.edge.deadline import http_protocol
    from ..inbox import Inbox
    from ..retention import finish_deletions_at_start_up

    settings = app.settings
    # The daemon brings its database up to date itself (all or nothing, idempotent).
    before = migrate.schema_state(app.database).current
    after = migrate.upgrade(app.database).current
    if before != after:
        log.info("database upgraded: %s -> %s", before or "empty", after)
    store = app.store
    finish_deletions_at_start_up(store, Path(settings.paths.outbox))  # before serving
    if with_runner:  # before the inbox: every door queues jobs for a model that exists
        _ensure_a_model(app)
    _pin_the_default(app)
    inbox = None
    if settings.inbox.enabled:
        inbox = Inbox.from_settings(settings, store, faults=app.faults)
        inbox.start()
    pool = None
    if settings.downloads.enabled:
        from ..downloads.sources import SourceSettings
        from ..downloads.worker import WorkerPool

        pool = WorkerPool(
            store,
            Path(settings.paths.models),
            SourceSettings.from_settings(settings),
            host=socket.gethostname(),
            count=settings.downloads.concurrency,
        )
        pool.start()
    application = create_app(
        settings, store, app.registry, inbox_health=inbox.health if inbox else None
    )
    config = uvicorn.Config(
        application,
        host=host or settings.server.host,
        port=settings.server.port if port is None else port,
        log_level=settings.logging.level.lower(),
        access_log=False,
        timeout_graceful_shutdown=5,
        # The app believes forwarded headers itself, only from server.trusted_proxies
        # (uvicorn's own default would believe any from 127.0.0.1).
        proxy_headers=False,
        limit_concurrency=settings.server.max_connections,  # more: uvicorn answers 503
        http=http_protocol(settings.server.header_timeout_s),
    )

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # uvicorn's SIGTERM/SIGINT handler while it serves (it puts serve's back
            # afterwards): the signal takes serve's way, whenever it comes
            signals.record(sig, frame)

    server = Server(config)
    if with_runner:  # one per device (runner.devices), each supervised on its own
        for name, device in runner_slots(app):
            named = [*(["--name", name] if name else []), *(["--device", device] if device else [])]
            supervisors.append(Supervisor(_child_argv(app, "runner", *named), name or "the runner"))
        for supervisor in supervisors:
            supervisor.start()
    if stopping.is_set():  # stopped while starting up
        server.should_exit = True
        for supervisor in supervisors:
            supervisor.begin_stop()
    done = threading.Event()
    notifier = threading.Thread(
        target=_notify_systemd, args=(server, store, supervisors, done), daemon=True
    )
    notifier.start()
    keeper = threading.Thread(
        target=_retention_loop, args=(app, store, done), name="retention", daemon=True
    )
    keeper.start()
    try:
        server.run()  # until SIGTERM or SIGINT
    finally:
        done.set()
        sd_notify("STOPPING=1")
        for supervisor in supervisors:  # all told at once, then each waited for
            supervisor.begin_stop()
        for supervisor in supervisors:
            supervisor.stop()
        if inbox is not None:
            inbox.stop()
        if pool is not None:
            pool.stop()
    if not server.started and not stopping.is_set():
        raise click.ClickException(
            f"could not listen on {config.host}:{config.port} (in use, or not allowed?)"
        )


RETENTION_EVERY_S = 3600.0


def _retention_loop(app: App, store: Store, done: threading.Event) -> None:
    """Apply the retention limits, and checkpoint SQLite's log, at start and hourly."""
    from ..outbox import Outbox
    from ..retention import apply_retention

    retention = app.settings.retention
    outbox = Outbox(app.settings.paths.outbox)
    while True:
        try:
            apply_retention(
                store,
                outbox,
                days=retention.days,
                max_storage_gb=retention.max_storage_gb,
                data_dir=Path(app.settings.paths.data_dir),
            )
        except (SpoolError, OSError) as exc:
            log.error("retention: %s", exc)
        if app.database.engine.dialect.name == "sqlite":
            try:  # keep the write-ahead log small (SQLite also does this as it goes)
                app.database.checkpoint()
            except SpoolError as exc:
                log.warning("WAL checkpoint: %s", exc.message)
        if done.wait(RETENTION_EVERY_S):
            return


def _notify_systemd(
    server: Any, store: Store, supervisors: list[Supervisor], done: threading.Event
) -> None:
    """READY=1 once the server listens; then, if systemd asked for a watchdog, WATCHDOG=1
    at half its interval while every runner keeps reporting (a hung runner stops the
    pings, and systemd restarts the service)."""
    while not server.started:
        if done.wait(0.05):
            return
    sd_notify("READY=1")
    interval = watchdog_interval_s()
    if interval is None:
        return
    was_healthy = True
    while not done.wait(interval / 2):
        try:
            healthy = all(s.runner_healthy(store, interval) for s in supervisors)
        except SpoolError as exc:
            log.error("watchdog: cannot read the runner's reports: %s", exc.message)
            healthy = False
        if healthy:
            sd_notify("WATCHDOG=1")
            if not was_healthy:
                log.warning("the runner reports again: pinging the watchdog again")
        elif was_healthy:
            log.error("the runner has not reported for %.0f s: not pinging the watchdog", interval)
        was_healthy = healthy


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
