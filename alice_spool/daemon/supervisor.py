"""Runner child processes under the daemon: their command lines, one per device, each
started again when it dies (waiting longer after each quick death)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from ..config import Settings
from ..faults import Faults
from ..stopping import blocked
from ..store import Store

log = logging.getLogger("alice_spool.serve")

RESTART_MIN_S = 1.0
RESTART_MAX_S = 60.0
HEALTHY_AFTER_S = 60.0  # a runner that lived this long restarts without waiting
STOP_GRACE_S = 30.0  # how long the runner may take to release its jobs on shutdown


class Invocation(Protocol):
    """How this process was started: what a child `alice-spool` needs to run with the
    same configuration."""

    @property
    def settings(self) -> Settings: ...
    @property
    def config_file(self) -> str | None: ...
    @property
    def overrides(self) -> Mapping[str, Any]: ...
    @property
    def faults(self) -> Faults: ...


def child_argv(app: Invocation, *command: str) -> list[str]:
    """This same configuration, for a child `alice-spool` process."""
    argv = [*this_package(), *app.faults.arguments()]
    if app.config_file:
        argv += ["--config", app.config_file]
    for key, value in app.overrides.items():
        argv += ["--set", f"{key}={value}"]
    return [*argv, *command]


def this_package() -> list[str]:
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


def runner_slots(app: Invocation) -> list[tuple[str | None, str | None]]:
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


def _cuda_devices(app: Invocation) -> int:
    """How many CUDA devices this host has, asked of a child (serve never imports torch)."""
    found = subprocess.run(
        child_argv(app, "runner", "--count-devices"), capture_output=True, text=True, check=False
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
        mine = [r for r in store.leases.runners() if r.owner.split("/")[1:2] == [str(process.pid)]]
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
