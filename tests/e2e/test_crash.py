"""A runner process SIGKILLed while it holds claimed jobs: its jobs come back with the
attempt counted, run again, and fail with `attempts_exhausted` past `max_attempts`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from alice_spool.spec import JobSpec
from alice_spool.states import JobStatus
from alice_spool.store import Store, utcnow

pytestmark = pytest.mark.both_databases  # SQLite and PostgreSQL (tests/conftest.py)

REPO = Path(__file__).resolve().parents[2]


def crash_while_holding(db_url: str, tmp_path: Path, name: str, count: int) -> list[str]:
    """Start a process that claims `count` jobs, then SIGKILL it. Returns what it held."""
    ready = tmp_path / f"{name}.ready"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.workers", "hold", db_url, name, str(count), str(ready)],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline, "the worker never claimed"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    return ready.read_text().split()


def after_leases_expire() -> object:
    return utcnow() + timedelta(seconds=5)  # the worker's leases last 1 s


def test_killed_runner_jobs_run_again_with_attempts_counted(
    store: Store, db_url: str, tmp_path: Path
) -> None:
    ids = [store.jobs.enqueue(JobSpec(prompt=f"p{i}"), source="cli").job.id for i in range(3)]
    held = crash_while_holding(db_url, tmp_path, "doomed", 3)
    assert sorted(held) == sorted(ids)
    assert {j.status for j in store.jobs.get_many(ids)} == {JobStatus.RUNNING}

    report = store.leases.requeue_orphans(now=after_leases_expire())
    assert sorted(report.requeued) == sorted(ids) and not report.exhausted
    assert {(j.status, j.attempts) for j in store.jobs.get_many(ids)} == {(JobStatus.QUEUED, 1)}

    claimed = store.leases.claim_batch("survivor", 10, lease_s=60)
    assert sorted(j.id for j in claimed) == sorted(ids)
    for job in claimed:
        assert job.attempts == 2
        store.leases.succeed(job.id, "survivor", {"ok": True})
    assert store.jobs.counts()[JobStatus.SUCCEEDED] == 3


def test_jobs_that_keep_killing_runners_fail_attempts_exhausted(
    store: Store, db_url: str, tmp_path: Path
) -> None:
    ids = [
        store.jobs.enqueue(JobSpec(prompt=f"poison {i}"), source="cli", max_attempts=2).job.id
        for i in range(2)
    ]
    crash_while_holding(db_url, tmp_path, "first", 2)
    assert sorted(store.leases.requeue_orphans(now=after_leases_expire()).requeued) == sorted(ids)
    crash_while_holding(db_url, tmp_path, "second", 2)
    report = store.leases.requeue_orphans(now=after_leases_expire())
    assert sorted(report.exhausted) == sorted(ids) and not report.requeued
    for job in store.jobs.get_many(ids):
        assert job.status is JobStatus.FAILED
        assert (job.error_code, job.attempts) == ("attempts_exhausted", 2)
    assert store.leases.claim_batch("anyone", 10, lease_s=60) == []
    assert store.db.integrity_check() == ["ok"]
