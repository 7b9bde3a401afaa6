"""A machine without the tools some tests drive (Chromium, systemd-analyze) and without
apt-get to install them: the set-up says so and goes on, and those tests are skipped
with one line that says why, instead of failing one by one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WEB_TESTS = "tests/e2e/test_web.py"


def _bare_path(tmp_path: Path, *tools: str) -> str:
    """A PATH with only these tools on it (no apt-get, chromium or systemd-analyze)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in tools:
        # python3: this interpreter itself (a shim on PATH may need more of PATH)
        found = os.path.realpath(sys.executable) if tool == "python3" else shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def test_the_system_package_step_says_what_is_missing_and_goes_on(tmp_path: Path) -> None:
    done = subprocess.run(
        ["/bin/sh", str(REPO / "scripts" / "install-system-packages"), "chromium", "systemd"],
        env={"PATH": _bare_path(tmp_path, "python3", "id")},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "note: missing: chromium systemd (no apt-get here to install them); "
        "the tests that need them are skipped"
    ]


def test_an_unknown_package_group_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        ["/bin/sh", str(REPO / "scripts" / "install-system-packages"), "chromum"],
        env={"PATH": _bare_path(tmp_path, "python3", "id")},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "unknown package group 'chromum'" in done.stderr


def test_without_chromium_the_web_tests_are_skipped_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("ALICE_CHROMIUM", "PYTEST_ADDOPTS")}
    env["PATH"] = _bare_path(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-q", WEB_TESTS],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    reasons = [line for line in lines if "Chromium not found" in line]
    assert len(reasons) == 1, run.stdout
    assert reasons[0].startswith("SKIPPED [1] tests/e2e/test_web.py")
    assert "apt-get install chromium" in reasons[0]
    assert lines[-1].startswith("1 skipped")
    assert "error" not in run.stdout.lower()
