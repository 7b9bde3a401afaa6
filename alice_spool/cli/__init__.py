"""The `alice-spool` command line: a thin click layer over the library.

Each command parses its options, calls the store, and prints a table (or JSON with
`--json`). Nothing here imports torch: commands that need the engine import it inside
the command.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import (  # noqa: F401  (each registers its commands)
    db,
    doctor,
    downloads,
    inbox,
    jobs,
    keys,
    models,
    runner,
    serve,
    submit,
)
from .app import cli


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="alice-spool")


__all__ = ["cli", "main"]
