"""Several OS processes on one SQLite file: 4 enqueue 1,000 jobs each while 2 claim and
finish them. Every job must succeed exactly once, with no `database is locked`."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from alice_spool.states import JobStatus
from alice_spool.store import Store

pytestmark = pytest.mark.both_databases  # SQLite and PostgreSQL (tests/conftest.py)

REPO = Path(__file__).resolve().parents[2]
ENQUEUERS, PER_ENQUEUER, CLAIMERS = 4, 1_000, 2
TOTAL = ENQUEUERS * PER_ENQUEUER


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.workers", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_many_writers_and_claimers_lose_nothing(store: Store, db_url: str, tmp_path: Path) -> None:
    outs = [tmp_path / f"claimer-{i}.txt" for i in range(CLAIMERS)]
    workers = [
        spawn("drain", db_url, f"claimer-{i}", str(TOTAL), str(out)) for i, out in enumerate(outs)
    ]
    workers += [
        spawn("enqueue", db_url, f"writer-{i}", str(PER_ENQUEUER)) for i in range(ENQUEUERS)
    ]
    results = [w.communicate(timeout=600) for w in workers]
    for worker, (_, stderr) in zip(workers, results, strict=True):
        assert "database is locked" not in stderr
        assert worker.returncode == 0, stderr[-3000:]

    counts = store.jobs.counts()
    assert counts[JobStatus.SUCCEEDED] == TOTAL
    assert sum(counts.values()) == TOTAL

    finished = Counter(line for out in outs for line in out.read_text().split())
    assert len(finished) == TOTAL and set(finished.values()) == {1}  # each exactly once

    jobs = store.jobs.list_jobs(limit=10_000).jobs
    assert {j.id for j in jobs} == set(finished)
    assert {j.attempts for j in jobs} == {1}
    assert {j.result["runner"] for j in jobs} <= {f"claimer-{i}" for i in range(CLAIMERS)}
    keys = Counter(j.idempotency_key for j in jobs)
    assert len(keys) == TOTAL
    assert store.db.integrity_check() == ["ok"]
