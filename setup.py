"""The wheel's packages, found rather than listed (everything else is in pyproject.toml):
every package under alice_spool/, and migrations/ and web/ installed inside it as
alice_spool.migrations and alice_spool.web. Nothing from tests/ or bench/."""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["alice_spool", "alice_spool.*"]),
        "alice_spool.migrations",
        *(f"alice_spool.migrations.{name}" for name in find_packages("migrations")),
        "alice_spool.web",  # static files only (see package-data)
    ]
)
