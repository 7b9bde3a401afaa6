"""alice.service and serve under systemd's protocols: the unit verified by
systemd-analyze, READY and watchdog pings over a real notify socket, a hung runner
stopping the pings, SIGTERM and SIGKILL."""

from __future__ import annotations

import configparser
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from alice_spool.cli import cli
from alice_spool.service import UnitOptions, render_unit
from tests.support.live_server import http_get, install_models, wait_until

REPO = Path(__file__).resolve().parents[2]


def unit_keys(text: str) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    return keys


def test_the_unit_file_is_what_install_service_prints() -> None:
    printed = CliRunner().invoke(cli, ["install-service", "--print"])
    assert printed.exit_code == 0
    assert printed.output == (REPO / "alice.service").read_text() == render_unit()
    custom = CliRunner().invoke(
        cli, ["install-service", "--print", "--prefix", "/srv/venv", "--user", "sd"]
    )
    assert "ExecStart=/srv/venv/bin/alice-spool serve" in custom.output
    assert "User=sd" in custom.output


def test_the_unit_is_hardened_but_reaches_the_gpu() -> None:
    keys = unit_keys(render_unit())
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(render_unit())
    assert parser["Service"]["Type"] == "notify" and parser["Service"]["Restart"] == "on-failure"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/alice",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "DevicePolicy": "closed",
        "User": "alice",
    }.items():
        assert keys[key] == [value], key
    assert "AF_INET" in keys["RestrictAddressFamilies"][0]
    assert "char-nvidia-frontend rw" in keys["DeviceAllow"]
    assert "char-nvidia-uvm rw" in keys["DeviceAllow"]
    for forbidden in ("PrivateDevices", "MemoryDenyWriteExecute"):
        assert forbidden not in keys  # they would hide the GPU / break PyTorch


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not found: apt-get install systemd (make test installs it)")
    unit = tmp_path / "alice.service"
    unit.write_text(render_unit(UnitOptions(prefix=sys.prefix)))  # an ExecStart that exists
    verified = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    assert verified.stderr.strip() == ""


def test_the_runner_template_unit_runs_one_runner_per_gpu_as_hardened() -> None:
    """`install-service --print --runner`: alice-runner@.service, the instance being the
    GPU's index, for hosts that only run jobs (README, "Scaling out")."""
    printed = CliRunner().invoke(cli, ["install-service", "--print", "--runner", "--user", "sd"])
    assert printed.exit_code == 0
    assert printed.output == render_unit(UnitOptions(user="sd"), runner=True)
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(printed.output)
    service = parser["Service"]
    assert service["ExecStart"] == (
        "/opt/alice/venv/bin/alice-spool runner --device cuda:%i --name %H-gpu%i"
    )
    assert (service["Type"], service["Restart"], service["User"]) == ("simple", "always", "sd")
    assert (service["KillMode"], service["KillSignal"]) == ("mixed", "SIGTERM")
    served, alone = unit_keys(render_unit()), unit_keys(printed.output)
    for key in ("NoNewPrivileges", "ProtectSystem", "DevicePolicy", "DeviceAllow", "PrivateTmp"):
        assert alone[key] == served[key], key  # the same hardening as alice.service
    assert "WatchdogSec" not in alone  # the runner does not speak sd_notify


def test_systemd_analyze_verifies_the_runner_template_and_an_instance(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not found: apt-get install systemd (make test installs it)")
    text = render_unit(UnitOptions(prefix=sys.prefix), runner=True)
    for name in ("alice-runner@.service", "alice-runner@1.service"):
        (tmp_path / name).write_text(text)
        verified = subprocess.run(
            [analyze, "verify", str(tmp_path / name)], capture_output=True, text=True
        )
        assert verified.returncode == 0 and verified.stderr.strip() == "", verified.stderr


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)

    def messages(self, seconds: float) -> list[str]:
        got: list[str] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                got.append(self.sock.recv(4096).decode())
        return got

    def wait_for(self, message: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if message in self.messages(0.5):
                return
        pytest.fail(f"no {message} within {timeout} s")


@pytest.fixture
def serve(
    tmp_path: Path, tiny_models: Path
) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], str]]]:
    started: list[subprocess.Popen[bytes]] = []
    install_models(tiny_models, tmp_path / "var")  # installed before the first start

    def start(**env: str) -> tuple[subprocess.Popen[bytes], str]:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        environment = {k: v for k, v in os.environ.items() if not k.startswith("ALICE_")}
        environment.update(
            ALICE_PATHS_DATA_DIR=str(tmp_path / "var"),
            ALICE_RUNNER_DEVICE="cpu",
            ALICE_LOGGING_LEVEL="WARNING",
            **env,
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "alice_spool", "serve", "--port", str(port)],
            env=environment,
            cwd=tmp_path,
        )
        started.append(process)
        return process, f"http://127.0.0.1:{port}"

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_ready_then_watchdog_pings_that_stop_while_the_runner_hangs(
    serve: Callable[..., tuple[subprocess.Popen[bytes], str]], tmp_path: Path
) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    process, url = serve(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="2000000")
    notify.wait_for("READY=1")
    notify.wait_for("WATCHDOG=1")
    health = http_get(url + "/health").json()
    wait_until(lambda: http_get(url + "/health").json()["runner_alive"], timeout=90)
    (runner,) = http_get(url + "/health").json()["runners"]
    runner_pid = int(runner["owner"].split("/")[1])
    assert health["status"] == "ok"

    os.kill(runner_pid, signal.SIGSTOP)  # hung: alive, but silent
    try:
        time.sleep(3)  # longer than the watchdog interval: its reports are stale now
        notify.messages(0.3)  # what was sent before that
        assert "WATCHDOG=1" not in notify.messages(3)
    finally:
        os.kill(runner_pid, signal.SIGCONT)
    notify.wait_for("WATCHDOG=1", timeout=15)  # reporting again: pings again

    process.send_signal(signal.SIGTERM)
    assert process.wait(90) == 0
    assert "STOPPING=1" in notify.messages(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(runner_pid, 0)  # the runner went with it


@pytest.mark.slow
def test_a_killed_serve_takes_its_runner_down_and_loses_nothing(
    serve: Callable[..., tuple[subprocess.Popen[bytes], str]],
) -> None:
    process, url = serve()
    wait_until(lambda: _up(url), timeout=90)
    job = httpx.post(
        url + "/v1/jobs",
        json={
            "prompt": "long",
            "steps": 150,
            "width": 64,
            "height": 64,
            "n": 2,
            "scheduler": "euler",
        },
    ).json()
    wait_until(lambda: http_get(f"{url}/v1/jobs/{job['id']}").json()["status"] == "running")
    (runner,) = http_get(url + "/health").json()["runners"]
    runner_pid = int(runner["owner"].split("/")[1])
    process.kill()
    process.wait()

    def runner_gone() -> bool:
        try:
            os.kill(runner_pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(runner_gone, timeout=30)  # it noticed its parent was gone and stopped

    again, url = serve()  # a new serve finishes the job
    wait_until(lambda: _up(url), timeout=90)
    wait_until(
        lambda: http_get(f"{url}/v1/jobs/{job['id']}").json()["status"] == "succeeded",
        timeout=240,
    )
    again.send_signal(signal.SIGTERM)
    assert again.wait(90) == 0


def _up(url: str) -> bool:
    try:
        return bool(http_get(url + "/health").json()["runner_alive"])
    except httpx.HTTPError:
        return False
