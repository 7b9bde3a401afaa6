"""A real PostgreSQL server for the tests: Debian's `postgresql` binaries, `initdb` into a
temporary directory, listening on a free loopback port (and a socket in that directory),
stopped and removed at the end. One per test process (each xdist worker its own).

Run as root (CI containers are), the server runs as `nobody`: PostgreSQL refuses root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.live_server import free_port

USER = "spool"


def binaries() -> Path | None:
    """The directory of `initdb`, `pg_ctl` and `postgres`: on the PATH, or Debian's."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    return None


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    runuser = shutil.which("runuser") or shutil.which("setpriv")
    if runuser is None:
        raise RuntimeError("running as root, and neither runuser nor setpriv is here")
    if runuser.endswith("runuser"):
        return [runuser, "-u", "nobody", "--", *command]
    return [runuser, "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]


@contextmanager
def postgres_server(*, settings: str = "", log_to: Path | None = None) -> Iterator[str]:
    """Start a server; yield the SQLAlchemy URL of its `postgres` database (as `spool`,
    trusted on loopback). `settings`: more `-c name=value` options; `log_to`: where its
    log goes (the benchmarks count the statements it logs)."""
    bin_dir = binaries()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL's initdb is not installed (Debian: postgresql)")
    root = Path(tempfile.mkdtemp(prefix="alice-pg-"))
    data = root / "data"
    port = free_port()
    log = log_to or root / "server.log"
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
        if log_to is not None:
            log.touch()
            os.chown(log, nobody.pw_uid, nobody.pw_gid)
    try:
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust"]
        initdb += ["--no-sync", "-E", "UTF8", "--locale=C"]
        subprocess.run(_as_server_user(initdb), check=True, capture_output=True)
        options = (
            f"-p {port} -k {root} -h 127.0.0.1 -c fsync=off -c synchronous_commit=off "
            f"-c full_page_writes=off -c max_connections=200 {settings}"
        )
        start = [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log)]
        start += ["-w", "-t", "60", "start"]
        subprocess.run(_as_server_user(start), check=True, capture_output=True)
        try:
            yield f"postgresql+psycopg://{USER}@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                _as_server_user(
                    [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
                ),
                capture_output=True,
            )
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode(errors="replace")
        if log.exists():
            detail += log.read_text(errors="replace")
        raise RuntimeError(f"could not start PostgreSQL: {detail.strip()}") from exc
    finally:
        for _ in range(20):
            shutil.rmtree(root, ignore_errors=True)
            if not root.exists():
                break
            time.sleep(0.1)


def database_url(server_url: str, name: str) -> str:
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def create_database(server_url: str, name: str) -> str:
    """A new empty database on the server (dropped first if a test left one)."""
    import sqlalchemy as sa

    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return database_url(server_url, name)
