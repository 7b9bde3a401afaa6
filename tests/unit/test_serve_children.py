"""How serve starts its children: `python -P -m alice_spool`, so that the working
directory cannot lend them another alice_spool; unless serve itself runs that copy."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import alice_spool
from alice_spool.daemon.supervisor import this_package as _this_package

ROOT = Path(alice_spool.__file__).resolve().parent.parent


@pytest.mark.parametrize("first", ["/srv/clone", "/opt/alice/venv/bin", "", "/"])
def test_children_leave_the_working_directory_off_their_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, first: str
) -> None:
    """Started as the console script (its bin directory first on sys.path) or by
    `python -P`, from any directory but the package's own: `-P`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [first, *sys.path[1:]])
    assert _this_package() == [sys.executable, "-P", "-m", "alice_spool"]


def test_a_serve_run_from_its_own_source_tree_gives_its_children_that_tree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`python -m alice_spool serve` in an uninstalled checkout: serve imports the
    checkout's copy from its working directory, and so must its children."""
    monkeypatch.chdir(ROOT)
    for first in (str(ROOT), ""):  # `python -m` puts the directory, `-c` an empty string
        monkeypatch.setattr(sys, "path", [first, *sys.path[1:]])
        assert _this_package() == [sys.executable, "-m", "alice_spool"]
