"""`python -m alice_spool` runs the CLI."""

from alice_spool.cli import main

main()
