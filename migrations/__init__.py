"""Alembic's migrations for the job database (installed as `alice_spool.migrations`)."""
