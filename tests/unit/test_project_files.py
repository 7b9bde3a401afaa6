"""The project's own files agree with each other: the README's two commands, CI's script,
the pinned constraints and the package metadata."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- test-command -->\n```sh\n(.+?)\n```\n<!-- /test-command -->", readme)
    assert block, "README.md lost its test-command block"
    extracted = subprocess.run(
        ["bash", str(REPO / ".ci" / "run"), "--print-command"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert extracted == block.group(1) == "make test"


def _make_dry_run(target: str) -> str:
    """What `make TARGET` would run in a checkout with no virtual environment yet."""
    # Not the variables of a make that runs these tests (`make test PYTEST_ARGS=...`).
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTEST_ARGS", "TEST_WORKERS")
    }
    result = subprocess.run(
        ["make", "-s", "-n", "--no-print-directory", target, "VENV=/nonexistent"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return "\n".join(line.rstrip() for line in result.stdout.splitlines())


def test_the_make_targets_install_what_they_run() -> None:
    test = _make_dry_run("test")
    # the system packages, a venv, the package with its test tools at the pinned versions
    assert "scripts/install-system-packages chromium systemd" in test
    assert "-m venv /nonexistent" in test
    assert "pip install -q -c constraints.txt -e '.[test]'" in test
    assert test.rstrip().endswith(
        "/nonexistent/bin/python -m pytest -n 3 --dist loadfile --no-loadscope-reorder"
    )
    run = _make_dry_run("run")
    assert "pip install -q -c constraints.txt -e ." in run
    assert run.rstrip().endswith("/nonexistent/bin/alice-spool serve")
    for target in ("lint", "bench", "clean"):
        assert _make_dry_run(target)


def test_readme_opens_with_the_two_commands() -> None:
    head = (REPO / "README.md").read_text()[:2500]
    assert "Install and start" in head and "Install and test" in head
    assert "```sh\nmake run\n```" in head  # serve, which upgrades its database itself


def test_every_dependency_is_pinned_for_ci() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    required = project["dependencies"] + project["optional-dependencies"]["test"]
    pinned = {
        line.split("==")[0].lower()
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    for requirement in required:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()
        assert name in pinned, f"{name} is not pinned in constraints.txt"


def test_console_script_and_module_entry_point() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"alice-spool": "alice_spool.__main__:main"}
    assert (REPO / "alice_spool" / "__main__.py").exists()


def test_the_code_is_ruff_clean() -> None:
    import sys

    for args in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr
