"""`alice-spool serve` as a real subprocess on 127.0.0.1 (API + inbox + runner child on
the tiny model, which serve creates on its fresh data dir, or which a test installs
before the start), for end-to-end tests; or, for the tests that are not about serve
itself, the same server as scale-out runs it: `alice-spool api` and an `alice-spool
runner` forked from the warm forkserver of tests/support/runner_process.py."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import httpx

# httpx.get() makes a client per call, and with it a TLS context that loads the CA bundle:
# about 50 ms of CPU each time, while the tests poll /health and their jobs ten times a
# second and the servers and runners they wait for need the same two cores. `http_get`
# makes that context once; each call is still a client and a connection of its own, with
# no cookies or connections kept from one call to the next.
TLS: ssl.SSLContext = httpx.create_ssl_context()


def http_get(url: str, **options: Any) -> httpx.Response:
    """`httpx.get(url, **options)`, on the TLS context made once."""
    return httpx.get(url, verify=TLS, **options)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def install_tiny(models: Path) -> Path:
    """`models` with the tiny model in it, as `alice-spool models create-tiny` writes it
    (fixed-seed weights: the same files serve writes on a fresh data dir). Made once
    and copied into each data dir, it spares each serve the model-making child, a
    torch import and a model written (15-20 s here)."""
    from alice_spool.engine.tiny import create_tiny

    create_tiny(models)
    return models


def install_models(models: Path, data_dir: Path) -> None:
    """Copy a models folder into `data_dir` before a start, as an earlier install left it."""
    shutil.copytree(models, data_dir / "models", dirs_exist_ok=True)


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


@dataclass
class Served:
    url: str
    root: Path
    process: subprocess.Popen[bytes]  # serve, or the api process
    runner: BaseProcess | None = None  # the runner, when apart from the api process

    def get(self, path: str, **options: object) -> httpx.Response:
        return http_get(f"{self.url}{path}", timeout=30, **options)


@contextmanager
def serve(
    root: Path,
    config: str = "",
    *,
    steps: int = 2,
    scheduler: str = "dpm++_sde_karras",
    logging: str = 'level = "WARNING"',
    hub_offline: bool = True,
    port: int | None = None,
    runner: str = "",
    database_url: str = "",
    models: Path | None = None,
    split: bool = False,
) -> Iterator[Served]:
    """Start serve with `root/config.toml` (server, paths, runner on the CPU, plus
    `config`, TOML sections of the test's own, and `logging`, the [logging] section's
    lines); wait until its runner reports; on exit SIGTERM it and check it stopped
    cleanly. `hub_offline=False` lets huggingface_hub reach a stand-in of the Hub;
    `runner`, lines of its [runner] section; `database_url`, another database; `models`,
    a models folder (`install_tiny`'s) copied into the data dir first, where a test is
    not about serve making the tiny model itself.

    `split`: `alice-spool api` and an `alice-spool runner` on the same config in place
    of serve, the runner forked from the test process's warm forkserver
    (tests/support/runner_process.py): a runner started that way is up in about a
    second, where serve's own child imports torch and diffusers first (12 to 13 s of
    CPU here). For the tests of the HTTP doors, not of serve's supervision; it needs
    `models`, since the api process makes no model."""
    assert models is not None or not split, "split needs an installed models folder"
    port = port or free_port()
    if models is not None:
        install_models(models, root / "var")
    (root / "config.toml").write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
request_timeout_s = 120
[paths]
data_dir = "{root / "var"}"
database_url = "{database_url}"
[runner]
device = "cpu"
lease_s = 10
{runner}
[generation]
default_steps = {steps}
default_scheduler = "{scheduler}"
[logging]
{logging}
{config}
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALICE_")}
    if not hub_offline:
        env.pop("HF_HUB_OFFLINE", None)
    config_args = ["--config", str(root / "config.toml")]
    process = subprocess.Popen(
        [sys.executable, "-m", "alice_spool", *config_args, "api" if split else "serve"],
        cwd=root,
        env=env,
    )
    server = Served(f"http://127.0.0.1:{port}", root, process)

    def runner_up() -> bool:
        assert process.poll() is None, "serve exited"
        assert server.runner is None or server.runner.is_alive(), "the runner exited"
        try:
            return server.get("/health").json()["runner_alive"]
        except httpx.HTTPError:
            return False

    try:
        if split:
            from tests.support import runner_process

            server.runner = runner_process.start_cli(
                runner_process.context(), [*config_args, "runner"], {}, root, clean_env=True
            )
        wait_until(runner_up, timeout=120)
        yield server
    finally:
        try:
            if server.runner is not None:
                _stop_runner(server.runner)
        finally:
            _stop_cleanly(process)


def _stop_runner(runner: BaseProcess) -> None:
    """SIGTERM, and expect a clean exit; unless the test SIGKILLed it already."""
    runner.terminate()
    runner.join(60)
    if runner.is_alive():
        runner.kill()
        runner.join()
        raise AssertionError("the runner did not stop within 60 s of a SIGTERM")
    if runner.exitcode != -signal.SIGKILL:  # (the test's own SIGKILL, if it is that)
        assert runner.exitcode == 0, f"the runner exited with {runner.exitcode}"


def _stop_cleanly(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and expect a clean exit; unless the test SIGKILLed it already."""
    if process.poll() is not None and process.returncode == -signal.SIGKILL:
        return
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
