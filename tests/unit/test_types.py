"""The types are checked, not only claimed: mypy over the whole package (configured in
pyproject.toml; diffusers and transformers are taken as Any)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_mypy_finds_nothing() -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "alice_spool"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("Success: no issues found")
