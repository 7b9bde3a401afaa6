"""Fixtures for the CLI tests: the CLI run through click's runner on a fresh data
directory, and a store on the same database (this directory's `store` on purpose)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from alice_spool.cli import cli
from alice_spool.store import Store


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def run(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # no stray ./config.toml
    for var in [v for v in os.environ if v.startswith("ALICE_")]:
        monkeypatch.delenv(var)

    def invoke(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, ["--data-dir", str(data_dir), *args], input=input)

    return invoke


@pytest.fixture
def store(run, data_dir: Path) -> Store:
    assert run("db", "upgrade").exit_code == 0
    return Store.open(f"sqlite:///{data_dir / 'alice.db'}")
