"""The `alice-spool` command (and `python -m alice_spool`): stop signals held, then the CLI."""

from __future__ import annotations

from alice_spool import stopping


def main() -> None:
    # First, before the second or so of imports below: a SIGTERM from now on is a stop
    # the command acts on once it can, not the death of a half-started process.
    stopping.hold()
    from alice_spool.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
