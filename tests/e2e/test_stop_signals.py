"""Stopping `serve` as systemd and a terminal do: a signal to its whole process group
(`os.killpg`) in the middle of a multi-second job. Each stop must put the job back in the
queue with no attempt counted, leave the database consistent and the outbox clean, and
the job must still succeed in the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.live_server import free_port, http_get, install_models, wait_until

pytestmark = pytest.mark.slow

# Long enough on the tiny model (a few seconds) to be stopped in the middle of.
# (Euler: the stops land between steps whatever the scheduler, and its steps are cheap.)
LONG_JOB = {"prompt": "long", "steps": 150, "width": 64, "height": 64, "n": 4, "scheduler": "euler"}


class Daemon:
    """`alice-spool serve` in a process group of its own, as a terminal or systemd runs
    it, on a data directory kept from one start to the next."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (root / "config.toml").write_text(
            f"""
[server]
host = "127.0.0.1"
port = {self.port}
[paths]
data_dir = "{root / "var"}"
[runner]
device = "cpu"
lease_s = 10
max_attempts = 2
[logging]
level = "INFO"
"""
        )
        self.command = [sys.executable, "-m", "alice_spool", "--config", str(root / "config.toml")]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ALICE_")}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = root / "serve.log"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.command, *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.command, "serve"],
                cwd=self.root,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, as under a terminal
            )
        wait_until(self._runner_up, timeout=120)

    def _runner_up(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log()
        try:
            return bool(http_get(self.url + "/health", timeout=10).json()["runner_alive"])
        except httpx.HTTPError:
            return False

    def job(self, job_id: str) -> dict:
        return http_get(f"{self.url}/v1/jobs/{job_id}", timeout=10).json()

    def signal_group(self, *signals: signal.Signals, apart_s: float = 0.1) -> int:
        """Send the signals to serve's whole process group (a terminal's Ctrl-C, `kill
        -TERM -PGID`); serve's exit code."""
        assert self.process is not None
        group = os.getpgid(self.process.pid)
        for i, signum in enumerate(signals):
            if i:
                time.sleep(apart_s)
            os.killpg(group, signum)
        return self._exit_code()

    def signal_serve(self) -> int:
        """SIGTERM to serve alone: systemd's `KillMode=mixed`, the unit's."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self._exit_code()

    def signal_every_process(self) -> int:
        """SIGTERM to serve and its runner at once: systemd's default `KillMode=
        control-group` (every process of the unit), for a unit that does not say mixed."""
        assert self.process is not None
        runner_pid = int(self.health()["runners"][0]["owner"].split("/")[1])
        self.process.send_signal(signal.SIGTERM)
        os.kill(runner_pid, signal.SIGTERM)
        return self._exit_code()

    def health(self) -> dict:
        return http_get(self.url + "/health", timeout=10).json()

    def _exit_code(self) -> int:
        assert self.process is not None
        code = self.process.wait(90)
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(os.getpgid(self.process.pid), signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def daemon(tmp_path: Path, tiny_models: Path) -> Iterator[Daemon]:
    server = Daemon(tmp_path)
    install_models(tiny_models, tmp_path / "var")  # as installed before its first start
    yield server
    server.kill()


def _stop_mid_job_then_finish(daemon: Daemon, stops: list[Callable[[], int]]) -> None:
    daemon.start()
    job_id = httpx.post(daemon.url + "/v1/jobs", json=LONG_JOB, timeout=30).json()["id"]
    for stop in stops:
        wait_until(lambda: (daemon.job(job_id)["progress"]["step"] or 0) > 0)
        assert daemon.job(job_id)["status"] == "running"
        assert stop() == 0, daemon.log()
        # Back in the queue, the interrupted attempt not counted.
        shown = json.loads(daemon.cli("show", job_id, "--json").stdout)
        assert (shown["status"], shown["attempts"]) == ("queued", 0), shown
        check = daemon.cli("db", "check")
        assert check.returncode == 0, check.stdout + check.stderr
        outbox = daemon.root / "var" / "outbox"
        assert sorted(p.name for p in outbox.iterdir()) == []  # no half-written directory
        daemon.start()
    wait_until(lambda: daemon.job(job_id)["status"] == "succeeded", timeout=180)
    finished = daemon.job(job_id)
    shown = json.loads(daemon.cli("show", job_id, "--json").stdout)
    assert shown["attempts"] == 1  # no penalty for the stops (max_attempts is 2)
    assert len(finished["image_urls"]) == 4
    log = daemon.log()
    assert "exiting now" not in log  # never taken as a cold stop
    assert "attempts_exhausted" not in log


def test_three_group_sigterms_mid_job_cost_it_no_attempt(daemon: Daemon) -> None:
    _stop_mid_job_then_finish(daemon, [lambda: daemon.signal_group(signal.SIGTERM)] * 3)


def test_two_sigints_100_ms_apart_are_one_warm_stop(daemon: Daemon) -> None:
    # (One stop: the job surviving stop after stop is the test above.)
    _stop_mid_job_then_finish(daemon, [lambda: daemon.signal_group(signal.SIGINT, signal.SIGINT)])


def test_systemds_kill_modes_mixed_and_control_group(daemon: Daemon) -> None:
    _stop_mid_job_then_finish(daemon, [daemon.signal_serve, daemon.signal_every_process])
