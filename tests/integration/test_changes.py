"""The process's watcher (store/changes.py) on both databases: a waiter wakes when what it
watches changes through another connection (another process's, as far as the database
knows), and not when something else changes; PostgreSQL's notifications, and the safety
net when one is lost."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from alice_spool import migrate
from alice_spool.spec import JobSpec
from alice_spool.store import Store

pytestmark = pytest.mark.both_databases  # SQLite and PostgreSQL (tests/conftest.py)

WOKEN_WITHIN_S = 5.0  # far below the waiters' own last resort (15 s): a wake-up, not a timeout


@pytest.fixture
def other(db_url: str, store: Store) -> Iterator[Store]:
    """A second store on the same database: the changes of "another process"."""
    second = Store.open(db_url)
    migrate.upgrade(second.db)
    yield second
    second.close()


def submit(store: Store, prompt: str = "a fox") -> str:
    return store.jobs.enqueue(JobSpec(prompt=prompt, steps=4, seed=1), source="cli").job.id


def test_a_waiter_wakes_when_its_job_changes_elsewhere_and_only_then(
    store: Store, other: Store
) -> None:
    mine, theirs = submit(store, "mine"), submit(store, "theirs")
    with (
        store.changes.watch(jobs=[mine]) as watching_mine,
        store.changes.watch(jobs=[theirs]) as watching_theirs,
    ):
        # the first reading after subscribing may wake each once: taken here
        watching_mine.wait(0.5)
        watching_theirs.wait(0.5)
        other.jobs.cancel(mine)
        assert watching_mine.wait(WOKEN_WITHIN_S)
        assert not watching_theirs.wait(1.0)  # another job changed, not this one
        other.jobs.cancel(theirs)
        assert watching_theirs.wait(WOKEN_WITHIN_S)


def test_progress_wakes_its_waiters_and_a_lease_renewal_does_not(
    store: Store, other: Store
) -> None:
    job_id = submit(store)
    [claimed] = other.leases.claim_batch("r/1/x", 1, lease_s=60)
    with store.changes.watch(jobs=[job_id]) as changes:
        changes.wait(0.5)
        other.leases.set_progress("r/1/x", [job_id], 1, 4)
        assert changes.wait(WOKEN_WITHIN_S)
        other.leases.heartbeat("r/1/x", [claimed.id], lease_s=60)
        assert not changes.wait(1.5)


def test_a_queue_waiter_wakes_for_new_and_returned_jobs_not_for_progress(
    store: Store, other: Store
) -> None:
    with store.changes.watch(queue=True) as queue:
        queue.wait(0.5)
        job_id = submit(other)
        assert queue.wait(WOKEN_WITHIN_S)
        other.leases.claim_batch("r/1/x", 1, lease_s=60)
        queue.wait(0.5)  # SQLite: the queue's signature changed (a job left it)
        other.leases.set_progress("r/1/x", [job_id], 2, 4)
        assert not queue.wait(1.5)
        other.leases.release("r/1/x", [job_id])  # back in the queue
        assert queue.wait(WOKEN_WITHIN_S)


def test_a_coroutine_waits_without_a_thread_and_is_woken(store: Store, other: Store) -> None:
    job_id = submit(store)

    async def wait() -> bool:
        with store.changes.watch(jobs=[job_id], loop=asyncio.get_running_loop()) as changes:
            await changes.wait_async(0.5)
            threading.Timer(0.2, other.jobs.cancel, [job_id]).start()
            return await changes.wait_async(WOKEN_WITHIN_S)

    assert asyncio.run(wait())


def test_store_wait_for_returns_when_the_jobs_finish_elsewhere(store: Store, other: Store) -> None:
    ids = [submit(store, f"job {i}") for i in range(3)]
    threading.Timer(0.3, lambda: [other.jobs.cancel(job_id) for job_id in ids]).start()
    started = time.monotonic()
    final = store.jobs.wait_for(ids, timeout_s=10)
    assert [job.id for job in final] == ids and all(job.finished for job in final)
    assert time.monotonic() - started < WOKEN_WITHIN_S


def test_postgresql_a_lost_notification_is_made_good_by_the_safety_net(
    store: Store, other: Store, db_url: str
) -> None:
    """A change whose notification never came (the triggers off, as while the listener
    reconnects) still wakes its waiter, at the watcher's next slow check."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite has no notifications to lose")
    job_id = submit(store)
    with store.changes.watch(jobs=[job_id]) as changes:
        changes.wait(0.5)  # the listener is up (it wakes everyone once then)
        time.sleep(store.changes.safety_s * 1.5)  # and the safety net has read the job once
        with other.db.engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL session_replication_role = replica"))  # no triggers
            conn.execute(
                sa.text("UPDATE jobs SET status = 'cancelled' WHERE id = :id"), {"id": job_id}
            )
        assert changes.wait(store.changes.safety_s + WOKEN_WITHIN_S)
