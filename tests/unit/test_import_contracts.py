"""The import direction, as import-linter contracts (pyproject.toml): the layers from the
command line down to the pure rules, torch only in the engine, SQL only in the store,
the API never importing a runner, no dialect importing another."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--config", str(config), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_contracts_hold() -> None:
    result = _lint(ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_contract_is_checked() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"
    ]
    result = _lint(ROOT / "pyproject.toml")
    assert f"{len(contracts)} kept, 0 broken" in result.stdout


def test_a_broken_rule_is_reported(tmp_path: Path) -> None:
    # The same machinery, given a rule the code breaks (the API does read the store):
    # the run fails and names the import.
    config = tmp_path / "contracts.toml"
    config.write_text(
        '[tool.importlinter]\nroot_package = "alice_spool"\n\n'
        "[[tool.importlinter.contracts]]\n"
        'name = "the API never reads the store"\ntype = "forbidden"\n'
        'source_modules = ["alice_spool.api"]\nforbidden_modules = ["alice_spool.store"]\n'
    )
    result = _lint(config)
    assert result.returncode != 0
    assert "the API never reads the store BROKEN" in " ".join(result.stdout.split())
    assert "alice_spool.api." in result.stdout
