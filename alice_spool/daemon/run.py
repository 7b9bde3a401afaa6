"""The daemon's life: bring the database up to date, start the inbox watcher, the
download workers, retention and (for `serve`) the runners, serve HTTP until SIGTERM or
SIGINT, then stop every part; a second signal within the stop is a cold stop."""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from .. import migrate
from ..database import Database
from ..errors import ModelNotFound, SpoolError
from ..library.registry import ModelRegistry
from ..service import sd_notify, watchdog_interval_s
from ..stopping import StopSignals, exit_now
from ..store import Store
from .supervisor import Invocation, Supervisor, child_argv, runner_slots

if TYPE_CHECKING:
    import uvicorn

    from ..downloads.worker import WorkerPool
    from ..inbox import Inbox

log = logging.getLogger("alice_spool.serve")

RETENTION_EVERY_S = 3600.0


class Parts(Invocation, Protocol):
    """What the daemon is built from (the command line's `App`)."""

    @property
    def database(self) -> Database: ...
    @property
    def registry(self) -> ModelRegistry: ...
    @property
    def store(self) -> Store: ...


class Daemon:
    """One `api` or `serve` process. `run` returns False only when the server could not
    listen (the address in use, or not allowed)."""

    def __init__(self, parts: Parts, *, with_runner: bool) -> None:
        self.parts = parts
        self.with_runner = with_runner
        self.stopping = threading.Event()
        self.server: uvicorn.Server | None = None
        self.supervisors: list[Supervisor] = []
        self.inbox: Inbox | None = None
        self.pool: WorkerPool | None = None
        self.signals = StopSignals(self._warm_stop, self._cold_stop)

    def _warm_stop(self, name: str) -> None:
        log.info("%s: stopping; send it again after a second to exit at once", name)
        self.stopping.set()
        if self.server is not None:
            self.server.should_exit = True
        for supervisor in self.supervisors:  # runners release their jobs while the API drains
            supervisor.begin_stop()

    def _cold_stop(self, name: str) -> None:
        for supervisor in self.supervisors:
            supervisor.kill()
        exit_now(name)

    def run(self, host: str | None, port: int | None) -> bool:
        self.signals.install()  # from the start: a stop while starting up is a stop too
        if self.stopping.is_set():  # one came while the command started: nothing runs yet
            return True
        self._prepare()
        self._start_workers()
        server = self.server = self._make_server(host, port)
        if self.with_runner:
            self._start_runners()
        if self.stopping.is_set():  # stopped while starting up
            server.should_exit = True
            for supervisor in self.supervisors:
                supervisor.begin_stop()
        done = threading.Event()
        threading.Thread(
            target=_notify_systemd,
            args=(server, self.parts.store, self.supervisors, done),
            daemon=True,
        ).start()
        threading.Thread(
            target=_retention_loop, args=(self.parts, done), name="retention", daemon=True
        ).start()
        try:
            server.run()  # until SIGTERM or SIGINT
        finally:
            done.set()
            self._shut_down()
        return server.started or self.stopping.is_set()

    def _prepare(self) -> None:
        """The database brought up to date (all or nothing, idempotent), deletions left
        half-done finished, a model to run, the default model decided."""
        from ..retention import finish_deletions_at_start_up

        parts = self.parts
        before = migrate.schema_state(parts.database).current
        after = migrate.upgrade(parts.database).current
        if before != after:
            log.info("database upgraded: %s -> %s", before or "empty", after)
        finish_deletions_at_start_up(parts.store, Path(parts.settings.paths.outbox))
        if self.with_runner:  # before the inbox: every door queues jobs for a model that exists
            _ensure_a_model(parts)
        _pin_the_default(parts)

    def _start_workers(self) -> None:
        """The inbox watcher and the download workers, as the settings enable them."""
        settings, store = self.parts.settings, self.parts.store
        if settings.inbox.enabled:
            from ..inbox import Inbox

            self.inbox = Inbox.from_settings(settings, store, faults=self.parts.faults)
            self.inbox.start()
        if settings.downloads.enabled:
            from ..downloads.sources import SourceSettings
            from ..downloads.worker import WorkerPool

            self.pool = WorkerPool(
                store,
                Path(settings.paths.models),
                SourceSettings.from_settings(settings),
                host=socket.gethostname(),
                count=settings.downloads.concurrency,
            )
            self.pool.start()

    def _make_server(self, host: str | None, port: int | None) -> uvicorn.Server:
        import uvicorn

        from ..api import create_app
        from ..api.edge.deadline import http_protocol

        parts, settings = self.parts, self.parts.settings
        health = self.inbox.health if self.inbox else None
        application = create_app(settings, parts.store, parts.registry, inbox_health=health)
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
        signals = self.signals

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                # uvicorn's SIGTERM/SIGINT handler while it serves (it puts serve's back
                # afterwards): the signal takes serve's way, whenever it comes
                signals.record(sig, frame)

        return Server(config)

    def _start_runners(self) -> None:
        """One runner per device (`runner.devices`), each supervised on its own."""
        for name, device in runner_slots(self.parts):
            named = [*(["--name", name] if name else []), *(["--device", device] if device else [])]
            argv = child_argv(self.parts, "runner", *named)
            self.supervisors.append(Supervisor(argv, name or "the runner"))
        for supervisor in self.supervisors:
            supervisor.start()

    def _shut_down(self) -> None:
        sd_notify("STOPPING=1")
        for supervisor in self.supervisors:  # all told at once, then each waited for
            supervisor.begin_stop()
        for supervisor in self.supervisors:
            supervisor.stop()
        if self.inbox is not None:
            self.inbox.stop()
        if self.pool is not None:
            self.pool.stop()


def _ensure_a_model(parts: Parts) -> None:
    """A fresh data dir with no model gets the tiny smoke-test model, so the daemon
    works offline from the first command; a real model is never replaced as default."""
    if any(model.ok for model in parts.registry.scan(force=True)):
        return
    subprocess.run(child_argv(parts, "models", "create-tiny", "--if-none"), check=True)
    log.warning(
        "no model was installed: created the tiny smoke-test model sd/tiny in %s. Its "
        "weights are random and its IMAGES ARE NOISE; install a real model with "
        "`alice-spool models pull <repo>`",
        parts.registry.models_dir,
    )


def _pin_the_default(parts: Parts) -> None:
    """Decide the default model now, before any request (the registry pins the first it
    works out): a model that arrives later, a user's download, never becomes it by
    sorting first. Nothing installed yet: the first model chosen is pinned then."""
    with contextlib.suppress(ModelNotFound):
        parts.registry.default(parts.settings.generation.default_model)


def _retention_loop(parts: Parts, done: threading.Event) -> None:
    """Apply the retention limits, and checkpoint SQLite's log, at start and hourly."""
    from ..outbox import Outbox
    from ..retention import apply_retention

    store, settings = parts.store, parts.settings
    retention = settings.retention
    outbox = Outbox(settings.paths.outbox)
    while True:
        try:
            apply_retention(
                store,
                outbox,
                days=retention.days,
                max_storage_gb=retention.max_storage_gb,
                data_dir=Path(settings.paths.data_dir),
            )
        except (SpoolError, OSError) as exc:
            log.error("retention: %s", exc)
        if parts.database.engine.dialect.name == "sqlite":
            try:  # keep the write-ahead log small (SQLite also does this as it goes)
                parts.database.checkpoint()
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
