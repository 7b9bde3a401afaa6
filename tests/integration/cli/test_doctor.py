"""`alice-spool doctor` on a good and on a broken installation."""

from __future__ import annotations

import json
from pathlib import Path

from .results import ok


def test_doctor_on_a_good_setup(run, data_dir: Path) -> None:
    ok(run("db", "upgrade"))
    ok(run("models", "create-tiny"))
    result = run("doctor", "--json")
    report = json.loads(result.stdout)
    assert result.exit_code == 0 and report["ok"], result.stdout
    states = {c["name"]: c["state"] for c in report["checks"]}
    assert set(states) == {
        "config",
        "directories",
        "database",
        "disk",
        "gpu",
        "models",
        "memory",
        "generation",
    }
    assert all(state in ("ok", "warn") for state in states.values())
    details = {c["name"]: c["detail"] for c in report["checks"]}
    assert "sd/tiny" in details["generation"] and "noise" in details["models"]
    assert details["memory"] == "sd/tiny (SD 1.x) on cpu float32: full"  # nothing to fit
    lines = ok(run("doctor", "--no-generation")).splitlines()
    assert [line.split()[1] for line in lines] == [
        "config",
        "directories",
        "database",
        "disk",
        "gpu",
        "models",
        "memory",
    ]


def test_doctor_on_a_broken_setup(run, data_dir: Path) -> None:
    result = run("doctor")  # no database schema, no model
    assert result.exit_code == 1
    failed = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("FAIL")}
    assert failed == {"database", "models", "generation"}
    assert "alice-spool db upgrade" in result.stdout and "create-tiny" in result.stdout
