"""Checks of a CLI run's exit status and output."""

from __future__ import annotations

from click.testing import Result


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result.stdout


def fails(result: Result, code: int, *fragments: str) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    for fragment in fragments:
        assert fragment in result.stderr
    return result.stderr
