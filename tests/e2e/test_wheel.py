"""Install as users do: build the wheel, install it into a fresh virtual environment and
run the daemon from there, far from this checkout.

The new environment gets only the wheel; its dependencies (torch and the rest, already on
this disk) are reached through a path file naming this environment's site-packages, so
the test stays fast and offline. Nothing of the checkout is importable there: the test
checks that `alice_spool` is the installed copy.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.live_server import free_port, wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Installed:
    venv: Path
    home: Path  # where the commands run, outside the checkout
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / "alice-spool"), *args],
            cwd=self.home,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


PIP = [sys.executable, "-m", "pip"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    # From a copy: an old build/ in the checkout would lend the wheel stale modules.
    source = tmp_path_factory.mktemp("source") / "alice-spool"
    leftovers = shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "var"
    )
    shutil.copytree(REPO, source, ignore=leftovers)
    options = ["--no-build-isolation", "--no-deps", "-q", "--wheel-dir", str(dist)]
    built = subprocess.run([*PIP, "wheel", *options, str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    (made,) = dist.glob("alice_spool-*.whl")
    return made


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The dependencies already on this disk, after the venv's own packages.
    Path(site, "dependencies-on-disk.pth").write_text(sysconfig.get_path("purelib") + "\n")
    options = ["--python", str(python), "install", "-q", "--no-deps", "--no-index"]
    install = subprocess.run([*PIP, *options, str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr

    home = root / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALICE_", "PYTHON"))}
    env["HF_HUB_OFFLINE"] = "1"
    return Installed(venv, home, env)


def test_the_wheel_holds_the_whole_package_and_nothing_else(wheel: Path) -> None:
    """Every module, migration and web file of the checkout, and no tests or benchmarks."""
    names = set(zipfile.ZipFile(wheel).namelist())

    def tracked(pattern: str) -> set[Path]:
        return {p for p in REPO.glob(pattern) if "__pycache__" not in p.parts}

    package = REPO / "alice_spool"
    expected = {f"alice_spool/{p.relative_to(package)}" for p in tracked("alice_spool/**/*.py")}
    expected |= {
        f"alice_spool/migrations/{p.relative_to(REPO / 'migrations')}"
        for p in tracked("migrations/**/*.py") | tracked("migrations/*.mako")
    }
    expected |= {f"alice_spool/web/{p.name}" for p in tracked("web/*.*") if p.suffix != ".md"}
    expected |= {f"alice_spool/{p.relative_to(package)}" for p in tracked("alice_spool/**/*.json")}
    missing = expected - names
    assert not missing, f"not in the wheel: {sorted(missing)}"
    assert {"alice_spool/daemon/run.py", "alice_spool/engine/generate.py"} <= names
    files = {n for n in names if ".dist-info/" not in n}
    assert files == expected, f"unexpected in the wheel: {sorted(files - expected)}"


def test_the_installed_command_runs_from_the_wheel(installed: Installed) -> None:
    where = subprocess.run(
        [
            str(installed.venv / "bin" / "python"),
            "-c",
            "import alice_spool; print(alice_spool.__file__)",
        ],
        cwd=installed.home,
        env=installed.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(installed.venv), where  # not the checkout's copy

    helped = installed.run("--help")
    assert helped.returncode == 0, helped.stderr
    for command in ("serve", "runner", "submit", "models", "doctor", "db"):
        assert command in helped.stdout

    data = installed.home / "var"
    upgraded = installed.run("--data-dir", str(data), "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    created = installed.run("--data-dir", str(data), "models", "create-tiny")
    assert created.returncode == 0, created.stderr
    doctor = installed.run("--data-dir", str(data), "--set", "runner.device=cpu", "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr


def test_serve_from_the_wheel(installed: Installed) -> None:
    """Health, one image through the OpenAI door, the web UI, and a clean stop; run from
    a directory holding an `alice_spool/` package that fails on import (a clone of the
    repository, say), which serve's children must not import instead of the wheel's."""
    port = free_port()
    root = installed.home / "served"
    (root / "alice_spool").mkdir(parents=True)
    (root / "alice_spool" / "__init__.py").write_text('raise ImportError("DECOY imported")\n')
    config = root / "config.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n[paths]\ndata_dir = "{root / "var"}"\n'
        '[runner]\ndevice = "cpu"\n[generation]\ndefault_steps = 2\n'
    )
    log = (root / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(installed.venv / "bin" / "alice-spool"), "--config", str(config), "serve"],
        cwd=root,
        env=installed.env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, (root / "serve.log").read_text()
        try:
            return bool(httpx.get(url + "/health", timeout=10).json()["runner_alive"])
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout=120)
        made = httpx.post(
            url + "/v1/images/generations",
            json={"prompt": "a lighthouse at dusk", "size": "64x64", "response_format": "b64_json"},
            timeout=120,
        )
        assert made.status_code == 200, made.text
        (image,) = made.json()["data"]
        assert image["b64_json"]
        page = httpx.get(url + "/web/", timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, (root / "serve.log").read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
