"""The totals behind Prometheus' counters and histograms: added to in the transaction
that finishes a job, by every way a job can finish, and never lowered (purge, retry)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import insert, update

from alice_spool.spec import JobSpec
from alice_spool.store import Store, utcnow
from alice_spool.store.tables import Counter, Job

pytestmark = pytest.mark.both_databases  # SQLite and PostgreSQL (tests/conftest.py)


def spec(prompt: str, n: int = 1) -> JobSpec:
    return JobSpec(prompt=prompt, n=n, steps=2, width=64, height=64)


def claim_one(store: Store, owner: str = "r") -> str:
    (job,) = store.leases.claim_batch(owner, 1, lease_s=60)
    return job.id


def finished(store: Store) -> dict[str, float]:
    totals = store.counters.counters()
    return {
        state: totals.get(f"jobs_finished:{state}", 0)
        for state in ("succeeded", "failed", "cancelled")
    }


def test_every_way_to_finish_is_counted_once(store: Store) -> None:
    assert store.counters.counters() == {}
    for i in range(9):
        store.jobs.enqueue(spec(f"job {i}", n=2 if i == 0 else 1), source="cli")

    done = claim_one(store)  # 1. succeeds (2 images)
    store.leases.succeed(done, "r", {"images": []})
    failed = claim_one(store)  # 2. fails for good
    store.leases.fail(failed, "r", "generation_failed", "broken")
    again = claim_one(store)  # 3. a retryable failure with attempts left: not finished
    store.leases.fail(again, "r", "gpu_out_of_memory", "oom", retryable=True)
    assert finished(store) == {"succeeded": 1, "failed": 1, "cancelled": 0}

    queued = store.jobs.list_jobs(statuses=["queued"], oldest_first=True, limit=100).jobs
    store.jobs.cancel(queued[-1].id)  # 4. cancelled while queued
    running = claim_one(store)  # 5. cancelled while running, stopped by its runner
    store.jobs.cancel(running)
    store.leases.finish_cancelled(running, "r")
    released = claim_one(store)  # 6. cancelled, then given back at shutdown
    store.jobs.cancel(released)
    store.leases.release("r", [released])
    orphan = claim_one(store, owner="dead/1/x")  # 7. its runner died on its last attempt
    store.db.write(
        lambda c: c.exec_driver_sql(
            f"UPDATE jobs SET attempts = max_attempts WHERE id = '{orphan}'"
        )
    )
    store.leases.requeue_orphans(held_by="dead/")
    assert finished(store) == {"succeeded": 1, "failed": 2, "cancelled": 3}

    totals = store.counters.counters()
    assert totals["images"] == 2
    for histogram in ("job_wait_seconds", "job_run_seconds"):
        assert totals[f"{histogram}:count"] == 1  # succeeded jobs only
        assert totals[f"{histogram}:le:+Inf"] == 1
        assert totals[f"{histogram}:sum"] >= 0

    # Never lowered: a retry queues a failed job again; purging deletes finished jobs.
    store.jobs.retry(failed)
    store.jobs.purge(before=utcnow() + timedelta(days=1))
    assert finished(store) == {"succeeded": 1, "failed": 2, "cancelled": 3}
    assert store.counters.counters()["images"] == 2


def test_a_cancelled_batch_counts_its_queued_jobs(store: Store) -> None:
    from alice_spool.records import NewJob

    batch = store.jobs.enqueue_batch(
        [NewJob(spec(f"b{i}"), None, None) for i in range(3)], source="cli"
    )
    claim_one(store)  # one is running: it is only asked to stop
    report = store.jobs.cancel_batch(batch.batch_id)
    assert report.cancelled == 2
    assert finished(store)["cancelled"] == 2


def test_histogram_buckets_are_cumulative_over_old_and_new_rows(store: Store) -> None:
    """A finished job adds one to the one slot its time falls in; the totals read back
    are Prometheus' cumulative buckets, and rows a server wrote before the slots (already
    cumulative) are added as they are."""
    from alice_spool.store.counters import BUCKETS, bucket_name

    waits = [0.2, 3.0, 3.0, 700.0]  # seconds queued: slots 0.5, 5, 5 and +Inf
    for index, wait in enumerate(waits):
        queued = store.jobs.enqueue(spec(f"w{index}"), source="cli").job
        at = utcnow() - timedelta(seconds=wait)
        earlier = update(Job).where(Job.id == queued.id).values(created_at=at)
        store.db.write(lambda c, change=earlier: c.execute(change))
        store.leases.succeed(claim_one(store), "r", {"images": []})
    totals = store.counters.counters()
    wanted = {0.5: 1, 1: 1, 2: 1, 5: 3, 10: 3, 300: 3, 600: 3, float("inf"): 4}
    for bound, count in wanted.items():
        assert totals[bucket_name("job_wait_seconds", bound)] == count, bound
    assert totals["job_wait_seconds:count"] == 4
    assert not any(":in:" in name for name in totals)  # the slots are not shown

    # A cumulative row from before the slots: added to every bucket's sum as it is.
    old = insert(Counter).values(name=bucket_name("job_wait_seconds", 5), value=10.0)
    store.db.write(lambda c: c.execute(old))
    again = store.counters.counters()
    assert again[bucket_name("job_wait_seconds", 5)] == 13
    assert again[bucket_name("job_wait_seconds", BUCKETS[-1])] == 4
