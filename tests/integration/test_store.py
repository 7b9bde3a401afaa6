"""Every store operation and state transition, the illegal ones included, on a real
Alembic-migrated SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from alice_spool import errors
from alice_spool.records import JobRecord, NewJob
from alice_spool.spec import JobSpec
from alice_spool.states import JobStatus, Source
from alice_spool.store import Store
from alice_spool.store.tables import Job

pytestmark = pytest.mark.both_databases  # SQLite and PostgreSQL (tests/conftest.py)

Spec = Callable[..., JobSpec]
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def enqueue(store: Store, spec: JobSpec, **kw) -> JobRecord:
    return store.jobs.enqueue(spec, source=kw.pop("source", Source.CLI), **kw).job


def running(store: Store, make_spec: Spec, owner: str = "r1", **kw) -> JobRecord:
    job = enqueue(store, make_spec(**kw), now=at(0))
    (claimed,) = store.leases.claim_batch(owner, 1, lease_s=30, now=at(1))
    assert claimed.id == job.id
    return claimed


# -- enqueue ----------------------------------------------------------------------------


def test_enqueue_records_every_column(store: Store, make_spec: Spec) -> None:
    spec = make_spec("a fox", model="tiny", steps=10, n=2, priority=5)
    job = enqueue(store, spec, client="alice", now=at(0))
    assert store.jobs.get(job.id) == job
    assert job.status is JobStatus.QUEUED and not job.finished
    assert (job.source, job.client, job.priority) == (Source.CLI, "alice", 5)
    assert job.created_at == at(0) and job.created_at.tzinfo is not None
    assert (job.attempts, job.max_attempts) == (0, 3)
    assert job.model == "sd/tiny" and job.spec.steps == 10 and job.spec.n == 2
    assert job.spec.seed is not None  # a random seed is drawn and recorded
    assert (job.started_at, job.finished_at, job.lease_owner, job.result) == (None,) * 4
    assert len(job.id) == 30 and all(c in "0123456789abcdef" for c in job.id)


def test_ids_are_unique_and_unguessable(store: Store, make_spec: Spec) -> None:
    ids = {enqueue(store, make_spec()).id for _ in range(200)}
    assert len(ids) == 200
    assert len({i[:4] for i in ids}) > 150  # no shared prefix: random, not sequential


def test_timestamps_round_trip_as_utc(store: Store, make_spec: Spec) -> None:
    local = datetime(2026, 11, 1, 14, 0, tzinfo=UTC).astimezone(
        __import__("datetime").timezone(timedelta(hours=2))
    )
    job = enqueue(store, make_spec(), now=local)
    assert store.jobs.get(job.id).created_at == T0 + timedelta(hours=2)
    assert store.jobs.get(job.id).created_at.utcoffset() == timedelta(0)


def test_naive_timestamps_are_refused(store: Store, make_spec: Spec) -> None:
    with pytest.raises(errors.DatabaseError, match="naive datetime"):
        enqueue(store, make_spec(), now=datetime(2026, 1, 1))


def test_idempotent_enqueue_returns_the_first_job(store: Store, make_spec: Spec) -> None:
    first = store.jobs.enqueue(make_spec(), source="api", idempotency_key="k1")
    again = store.jobs.enqueue(make_spec(), source="api", idempotency_key="k1")
    assert first.created and not again.created
    assert again.job == first.job
    assert store.jobs.counts()[JobStatus.QUEUED] == 1


def test_same_key_different_request_is_a_conflict(store: Store, make_spec: Spec) -> None:
    first = enqueue(store, make_spec(steps=10), idempotency_key="k1")
    with pytest.raises(errors.IdempotencyConflict) as info:
        enqueue(store, make_spec(steps=11), idempotency_key="k1")
    assert first.id in info.value.message
    assert store.jobs.counts()[JobStatus.QUEUED] == 1


def test_batch_is_one_transaction_with_one_batch_id(store: Store, make_spec: Spec) -> None:
    items = [NewJob(make_spec(f"p{i}"), f"key-{i}", "nightly.jsonl") for i in range(5)]
    batch = store.jobs.enqueue_batch(items, source=Source.INBOX, now=at(0))
    assert batch.created and len(batch.job_ids) == 5
    jobs = store.jobs.get_many(batch.job_ids)
    assert {j.batch_id for j in jobs} == {batch.batch_id}
    assert [j.spec.prompt for j in jobs] == [f"p{i}" for i in range(5)]
    assert {(j.source, j.client, j.status) for j in jobs} == {
        (Source.INBOX, "nightly.jsonl", JobStatus.QUEUED)
    }
    assert store.jobs.batch_counts(batch.batch_id)[JobStatus.QUEUED] == 5
    listed = store.jobs.list_jobs(batch_id=batch.batch_id, oldest_first=True).jobs
    assert [j.id for j in listed] == batch.job_ids


def test_repeated_batch_returns_the_first(store: Store, make_spec: Spec) -> None:
    items = [NewJob(make_spec(f"p{i}"), f"key-{i}") for i in range(3)]
    first = store.jobs.enqueue_batch(items, source="inbox")
    again = store.jobs.enqueue_batch(items, source="inbox")
    assert not again.created and again.batch_id == first.batch_id
    assert again.job_ids == first.job_ids
    assert sum(store.jobs.counts().values()) == 3


def test_batch_overlapping_an_earlier_one_is_refused_whole(store: Store, make_spec: Spec) -> None:
    store.jobs.enqueue_batch([NewJob(make_spec("a"), "k1")], source="inbox")
    mixed = [NewJob(make_spec("new"), "k-new"), NewJob(make_spec("a"), "k1")]
    with pytest.raises(errors.IdempotencyConflict, match="'k1'"):
        store.jobs.enqueue_batch(mixed, source="inbox")
    assert sum(store.jobs.counts().values()) == 1  # nothing of the second batch went in


def test_batch_refuses_empty_and_repeated_keys(store: Store, make_spec: Spec) -> None:
    with pytest.raises(errors.InvalidParameters, match="at least one"):
        store.jobs.enqueue_batch([], source="cli")
    twice = [NewJob(make_spec("a"), "same"), NewJob(make_spec("b"), "same")]
    with pytest.raises(errors.InvalidParameters, match="'same' more than once"):
        store.jobs.enqueue_batch(twice, source="cli")
    assert sum(store.jobs.counts().values()) == 0


def test_queue_limit(store: Store, make_spec: Spec) -> None:
    small = Store(store.db, max_queue=3)
    for _ in range(3):
        enqueue(small, make_spec())
    with pytest.raises(errors.QueueFull):
        enqueue(small, make_spec())
    with pytest.raises(errors.QueueFull):
        small.jobs.enqueue_batch([NewJob(make_spec())], source="cli")
    small.leases.claim_batch("r", 1, lease_s=10)  # running jobs do not count
    enqueue(small, make_spec())


def test_a_repeat_is_answered_even_when_the_queue_is_full(store: Store, make_spec: Spec) -> None:
    small = Store(store.db, max_queue=2)
    first = small.jobs.enqueue(make_spec("a"), source="api", idempotency_key="k1")
    small.jobs.enqueue(make_spec("b"), source="api", idempotency_key="k2")
    again = small.jobs.enqueue(make_spec("a"), source="api", idempotency_key="k1")
    assert again.job.id == first.job.id and not again.created
    with pytest.raises(errors.IdempotencyConflict):
        small.jobs.enqueue(make_spec("changed"), source="api", idempotency_key="k1")
    with pytest.raises(errors.QueueFull):
        small.jobs.enqueue(make_spec("c"), source="api", idempotency_key="k3")


def test_new_job_rows_set_exactly_the_inserted_columns(store: Store, make_spec: Spec) -> None:
    from alice_spool.store.enqueue import _NEW_COLUMNS, _UNSET

    row = store.jobs._row(
        make_spec(), source=Source.CLI, client=None, key="k", batch_id=None,
        max_attempts=None, not_before=None, now=T0,
    )  # fmt: skip
    assert tuple(row) == _NEW_COLUMNS
    assert set(row) | set(_UNSET) | {"seq"} == {c.name for c in Job.__table__.columns}


def test_unknown_source_is_refused(store: Store, make_spec: Spec) -> None:
    with pytest.raises(ValueError):
        store.jobs.enqueue(make_spec(), source="fax")


def test_enqueue_keyed_answers_each_item_as_enqueue_would(store: Store, make_spec: Spec) -> None:
    earlier = store.jobs.enqueue(make_spec("fox"), source="inbox", idempotency_key="fox").job
    items = [
        NewJob(make_spec("new"), "new", "a.json"),
        NewJob(make_spec("fox"), "fox", "b.json"),  # a repeat of an earlier job
        NewJob(make_spec("wolf"), "fox", "c.json"),  # the key of another request
        NewJob(make_spec("new"), "new", "d.json"),  # a repeat within the call
        NewJob(make_spec("other"), "other", "e.json"),
    ]
    new, repeat, conflict, again, other = store.jobs.enqueue_keyed(items, source=Source.INBOX)
    assert new.created and other.created and not repeat.created and not again.created
    assert repeat.job.id == earlier.id and again.job.id == new.job.id
    assert (
        isinstance(conflict, errors.IdempotencyConflict)
        and conflict.details["job_id"] == earlier.id
    )
    assert store.jobs.get(new.job.id).client == "a.json"
    assert store.jobs.counts()[JobStatus.QUEUED] == 3
    with pytest.raises(ValueError):
        store.jobs.enqueue_keyed([NewJob(make_spec("x"), None, "x.json")], source=Source.INBOX)
    full = Store(store.db, max_queue=3)
    with pytest.raises(errors.QueueFull):
        full.jobs.enqueue_keyed([NewJob(make_spec("y"), "y", "y.json")], source=Source.INBOX)
    assert store.jobs.enqueue_keyed([], source=Source.INBOX) == []


# -- claim ------------------------------------------------------------------------------


def test_claim_order_is_priority_then_fifo(store: Store, make_spec: Spec) -> None:
    low = enqueue(store, make_spec("low", priority=-5), now=at(0))
    a = enqueue(store, make_spec("a"), now=at(1))
    b = enqueue(store, make_spec("b"), now=at(1))  # same instant: arrival order decides
    high = enqueue(store, make_spec("high", priority=10), now=at(2))
    c = enqueue(store, make_spec("c"), now=at(3))
    claimed = store.leases.claim_batch("r1", 3, lease_s=30, now=at(5))
    assert [j.id for j in claimed] == [high.id, a.id, b.id]
    assert [j.id for j in store.leases.claim_batch("r1", 5, lease_s=30, now=at(5))] == [
        c.id,
        low.id,
    ]
    assert store.leases.claim_batch("r1", 5, lease_s=30, now=at(5)) == []


def test_claim_marks_running_with_a_lease(store: Store, make_spec: Spec) -> None:
    enqueue(store, make_spec(), now=at(0))
    (job,) = store.leases.claim_batch("runner-a", 4, lease_s=30, now=at(10))
    assert job.status is JobStatus.RUNNING
    assert (job.lease_owner, job.lease_expires_at) == ("runner-a", at(40))
    assert (job.started_at, job.attempts) == (at(10), 1)
    assert store.jobs.get(job.id) == job


def test_claim_honours_not_before(store: Store, make_spec: Spec) -> None:
    later = enqueue(store, make_spec(), not_before=at(100), now=at(0))
    assert store.leases.claim_batch("r", 5, lease_s=30, now=at(99)) == []
    assert [j.id for j in store.leases.claim_batch("r", 5, lease_s=30, now=at(100))] == [later.id]


def test_claim_can_stick_to_one_model(store: Store, make_spec: Spec) -> None:
    enqueue(store, make_spec(model="a"), now=at(0))
    b = enqueue(store, make_spec(model="b"), now=at(1))
    assert [j.id for j in store.leases.claim_batch("r", 5, lease_s=9, model="sd/b")] == [b.id]


def test_claim_of_zero_is_nothing(store: Store, make_spec: Spec) -> None:
    enqueue(store, make_spec())
    assert store.leases.claim_batch("r", 0, lease_s=5) == []
    assert store.jobs.counts()[JobStatus.QUEUED] == 1


def compatible(store: Store, *, max_images: int = 8, seconds: float = 10, **kw) -> list[str]:
    jobs = store.leases.claim_compatible(
        "r1", max_images=max_images, lease_s=60, now=at(seconds), **kw
    )
    return [job.spec.prompt for job in jobs]


def test_the_compatible_claim_takes_the_head_and_its_batch_mates(
    store: Store, make_spec: Spec
) -> None:
    for prompt, fields in [
        ("a", {}),
        ("other size", {"width": 768}),
        ("b", {"n": 3}),
        ("other model", {"model": "sd/x"}),
        ("c", {"n": 4}),  # exactly fills the budget of 8
        ("d", {}),  # one too many: next time
    ]:
        enqueue(store, make_spec(prompt, **fields), now=at(0))
    assert compatible(store) == ["a", "b", "c"]  # 1 + 3 + 4 images
    assert compatible(store) == ["other size"]
    assert compatible(store) == ["other model"]
    assert compatible(store) == ["d"]
    assert compatible(store) == []


def test_a_head_over_the_budget_runs_alone_and_priority_leads(
    store: Store, make_spec: Spec
) -> None:
    enqueue(store, make_spec("big", n=6), now=at(0))
    enqueue(store, make_spec("small"), now=at(0))
    enqueue(store, make_spec("urgent", priority=3), now=at(0))
    assert compatible(store, max_images=4) == ["urgent", "small"]
    assert compatible(store, max_images=4) == ["big"]
    held = store.jobs.list_jobs(statuses=[JobStatus.RUNNING]).jobs
    assert {j.lease_owner for j in held} == {"r1"} and {j.attempts for j in held} == {1}


def test_the_compatible_claim_takes_only_what_fits_the_heads_model_and_size(
    store: Store, make_spec: Spec
) -> None:
    """`images_for` (the runner asks the engine: free GPU memory by family and size) is
    asked with the head's spec and lowers the budget; never below one job."""
    for prompt, fields in [
        ("xl 1", {"width": 1024, "height": 1024}),
        ("xl 2", {"width": 1024, "height": 1024}),
        ("xl 3", {"width": 1024, "height": 1024}),
        ("small 1", {}),
        ("small 2", {}),
        ("small 3", {}),
    ]:
        enqueue(store, make_spec(prompt, **fields), now=at(0))
    asked: list[tuple[str, int | None]] = []

    def images_for(spec: JobSpec) -> int:
        asked.append((spec.prompt, spec.width))
        return 2 if spec.width == 1024 else 0

    assert compatible(store, images_for=images_for) == ["xl 1", "xl 2"]
    assert compatible(store, images_for=images_for) == ["xl 3"]
    assert compatible(store, images_for=images_for) == ["small 1"]  # 0 fits: one anyway
    assert compatible(store, images_for=lambda spec: 99, max_images=8) == ["small 2", "small 3"]
    assert asked == [("xl 1", 1024), ("xl 3", 1024), ("small 1", None)]


def test_the_compatible_claim_skips_jobs_not_yet_due(store: Store, make_spec: Spec) -> None:
    enqueue(store, make_spec("later"), now=at(0), not_before=at(100))
    enqueue(store, make_spec("now"), now=at(0))
    assert compatible(store) == ["now"]
    assert compatible(store, seconds=101) == ["later"]


def test_the_resident_model_is_preferred_at_equal_priority(store: Store, make_spec: Spec) -> None:
    enqueue(store, make_spec("x first", model="sd/x"), now=at(0))
    enqueue(store, make_spec("default"), now=at(1))
    enqueue(store, make_spec("y", model="sd/y"), now=at(2))
    enqueue(store, make_spec("y urgent", model="sd/x", priority=1, steps=30), now=at(3))
    # a higher priority goes first whatever is loaded
    assert compatible(store, prefer_models=["sd/y"]) == ["y urgent"]
    assert compatible(store, prefer_models=["sd/y"]) == ["y"]
    # the default model counts as resident when it is the one loaded
    assert compatible(store, prefer_models=["sd/tiny"], prefer_default=True) == ["default"]
    assert compatible(store, prefer_models=["sd/tiny"], prefer_default=True) == ["x first"]


def test_the_preference_gives_way_to_jobs_waiting_past_the_bound(
    store: Store, make_spec: Spec
) -> None:
    enqueue(store, make_spec("x", model="sd/x"), now=at(0))
    enqueue(store, make_spec("y", model="sd/y"), now=at(50))
    prefer = {"prefer_models": ["sd/y"], "seconds": 60}
    # x was queued at 0: before the bound of 30 s ago, so it gets its switch
    assert compatible(store, switch_for_jobs_queued_before=at(30), **prefer) == ["x"]
    enqueue(store, make_spec("x again", model="sd/x"), now=at(55))
    assert compatible(store, switch_for_jobs_queued_before=at(30), **prefer) == ["y"]


def test_jobs_queued_before_batch_keys_existed_run_alone(store: Store, make_spec: Spec) -> None:
    old = [enqueue(store, make_spec(f"old {i}"), now=at(0)) for i in range(2)]
    store.db.write(lambda conn: conn.exec_driver_sql("UPDATE jobs SET batch_key = NULL"))
    assert compatible(store) == ["old 0"]
    assert compatible(store) == ["old 1"]
    assert {store.jobs.get(j.id).status for j in old} == {JobStatus.RUNNING}


# -- leases -----------------------------------------------------------------------------


def test_heartbeat_renews_only_own_leases_and_reports_cancels(
    store: Store, make_spec: Spec
) -> None:
    mine = running(store, make_spec, "r1")
    theirs = running(store, make_spec, "r2")
    store.jobs.cancel(mine.id)
    beat = store.leases.heartbeat("r1", [mine.id, theirs.id, "nope"], lease_s=60, now=at(20))
    assert beat.owned == {mine.id} and beat.cancel_requested == {mine.id}
    assert beat.lost([mine.id, theirs.id]) == {theirs.id}
    assert store.jobs.get(mine.id).lease_expires_at == at(80)
    assert store.jobs.get(theirs.id).lease_expires_at == at(31)
    assert store.leases.heartbeat("r1", [], lease_s=60).owned == frozenset()


def test_progress_is_recorded_for_owned_jobs(store: Store, make_spec: Spec) -> None:
    job = running(store, make_spec)
    assert store.leases.set_progress("r1", [job.id], 3, 25).owned == {job.id}
    assert (store.jobs.get(job.id).progress_step, store.jobs.get(job.id).progress_total) == (3, 25)
    assert store.leases.set_progress("other", [job.id], 4, 25).owned == set()
    assert store.jobs.get(job.id).progress_step == 3


def test_succeed(store: Store, make_spec: Spec) -> None:
    job = running(store, make_spec)
    done = store.leases.succeed(job.id, "r1", {"images": [{"file": "x.png"}]}, now=at(9))
    assert done.status is JobStatus.SUCCEEDED and done.finished
    assert done.result == {"images": [{"file": "x.png"}]} and done.finished_at == at(9)
    assert (done.lease_owner, done.lease_expires_at) == (None, None)


def test_only_the_lease_holder_finishes(store: Store, make_spec: Spec) -> None:
    job = running(store, make_spec, "r1")
    with pytest.raises(errors.LeaseLost, match="no longer holds"):
        store.leases.succeed(job.id, "r2", {})
    with pytest.raises(errors.LeaseLost):
        store.leases.fail(job.id, "r2", "generation_failed", "x")
    assert store.jobs.get(job.id).status is JobStatus.RUNNING


def test_finishing_twice_is_an_illegal_transition(store: Store, make_spec: Spec) -> None:
    job = running(store, make_spec)
    store.leases.succeed(job.id, "r1", {})
    with pytest.raises(errors.IllegalTransition, match="already succeeded"):
        store.leases.succeed(job.id, "r1", {})
    with pytest.raises(errors.IllegalTransition):
        store.leases.fail(job.id, "r1", "generation_failed", "late")
    with pytest.raises(errors.JobNotFound):
        store.leases.succeed("no-such-job", "r1", {})


def test_fail_for_good(store: Store, make_spec: Spec) -> None:
    job = running(store, make_spec)
    failed = store.leases.fail(job.id, "r1", "generation_failed", "NaN in the latents", now=at(5))
    assert failed.status is JobStatus.FAILED and failed.finished_at == at(5)
    assert (failed.error_code, failed.error_message) == ("generation_failed", "NaN in the latents")


def test_retryable_failure_requeues_while_attempts_remain(store: Store, make_spec: Spec) -> None:
    job = running(store, make_spec)
    again = store.leases.fail(job.id, "r1", "disk_full", "no space left", retryable=True)
    assert again.status is JobStatus.QUEUED and again.finished_at is None
    assert again.error_code == "disk_full"  # the last error stays visible
    for attempt in (2, 3):
        (claimed,) = store.leases.claim_batch("r1", 1, lease_s=30)
        assert claimed.attempts == attempt
        last = store.leases.fail(claimed.id, "r1", "disk_full", "no space left", retryable=True)
    assert last.status is JobStatus.FAILED and last.attempts == 3


def test_release_gives_jobs_back_without_counting(store: Store, make_spec: Spec) -> None:
    keep = running(store, make_spec)
    cancelled = running(store, make_spec)
    store.jobs.cancel(cancelled.id)
    assert store.leases.release("r1", [keep.id, cancelled.id]) == 1
    released = store.jobs.get(keep.id)
    assert released.status is JobStatus.QUEUED and released.attempts == 0
    assert released.lease_owner is None
    assert store.jobs.get(cancelled.id).status is JobStatus.CANCELLED
    assert store.leases.release("r1", []) == 0


def test_requeue_orphans(store: Store, make_spec: Spec) -> None:
    orphan = running(store, make_spec)  # lease until at(31)
    alive = enqueue(store, make_spec(), now=at(0))
    store.leases.claim_batch("r2", 1, lease_s=300, now=at(1))
    assert store.leases.requeue_orphans(now=at(30)).requeued == []  # not expired yet
    report = store.leases.requeue_orphans(now=at(32))
    assert report.requeued == [orphan.id] and not report.exhausted
    job = store.jobs.get(orphan.id)
    assert job.status is JobStatus.QUEUED and job.attempts == 1 and job.lease_owner is None
    assert store.jobs.get(alive.id).status is JobStatus.RUNNING


def test_orphans_past_max_attempts_fail_exhausted(store: Store, make_spec: Spec) -> None:
    job = enqueue(store, make_spec(), max_attempts=2, now=at(0))
    for attempt in (1, 2):
        (claimed,) = store.leases.claim_batch("r", 1, lease_s=10, now=at(attempt * 100))
        assert claimed.attempts == attempt
        report = store.leases.requeue_orphans(now=at(attempt * 100 + 11))
    assert report.exhausted == [job.id] and report.requeued == []
    final = store.jobs.get(job.id)
    assert final.status is JobStatus.FAILED and final.error_code == "attempts_exhausted"
    assert final.finished_at == at(211)


def test_orphan_with_a_pending_cancel_is_cancelled(store: Store, make_spec: Spec) -> None:
    job = running(store, make_spec)
    store.jobs.cancel(job.id)
    assert store.leases.requeue_orphans(now=at(100)).cancelled == [job.id]
    assert store.jobs.get(job.id).status is JobStatus.CANCELLED


# -- the user's side ----------------------------------------------------------------------


def test_cancel_queued_is_immediate(store: Store, make_spec: Spec) -> None:
    job = enqueue(store, make_spec())
    cancelled = store.jobs.cancel(job.id, now=at(3))
    assert cancelled.status is JobStatus.CANCELLED and cancelled.finished_at == at(3)
    assert store.leases.claim_batch("r", 5, lease_s=10) == []
    assert store.jobs.cancel(job.id) == cancelled  # cancelling again changes nothing


def test_cancel_running_sets_the_flag_then_the_runner_stops(store: Store, make_spec: Spec) -> None:
    job = running(store, make_spec)
    flagged = store.jobs.cancel(job.id)
    assert flagged.status is JobStatus.RUNNING and flagged.cancel_requested
    stopped = store.leases.finish_cancelled(job.id, "r1", now=at(4))
    assert stopped.status is JobStatus.CANCELLED and stopped.finished_at == at(4)


@pytest.mark.parametrize("outcome", ["succeed", "fail"])
def test_cancelling_a_finished_job_is_a_clear_error(
    store: Store, make_spec: Spec, outcome: str
) -> None:
    job = running(store, make_spec)
    if outcome == "succeed":
        store.leases.succeed(job.id, "r1", {})
    else:
        store.leases.fail(job.id, "r1", "generation_failed", "x")
    before = store.jobs.get(job.id)
    with pytest.raises(errors.IllegalTransition, match="only queued or running"):
        store.jobs.cancel(job.id)
    assert store.jobs.get(job.id) == before


def test_cancel_unknown_job(store: Store) -> None:
    with pytest.raises(errors.JobNotFound, match="no job nope"):
        store.jobs.cancel("nope")


def test_cancel_batch(store: Store, make_spec: Spec) -> None:
    batch = store.jobs.enqueue_batch([NewJob(make_spec(f"p{i}")) for i in range(4)], source="cli")
    first, second = store.leases.claim_batch("r1", 2, lease_s=30)
    store.leases.succeed(first.id, "r1", {})
    report = store.jobs.cancel_batch(batch.batch_id)
    assert (report.cancelled, report.requested, report.untouched) == (2, 1, 1)
    assert store.jobs.get(second.id).cancel_requested
    counts = store.jobs.batch_counts(batch.batch_id)
    assert counts[JobStatus.CANCELLED] == 2 and counts[JobStatus.SUCCEEDED] == 1
    with pytest.raises(errors.BatchNotFound):
        store.jobs.cancel_batch("nope")


def test_retry_failed_and_cancelled(store: Store, make_spec: Spec) -> None:
    job = running(store, make_spec)
    store.leases.fail(job.id, "r1", "generation_failed", "x")
    again = store.jobs.retry(job.id)
    assert again.status is JobStatus.QUEUED and again.attempts == 0
    assert (again.error_code, again.finished_at, again.result) == (None, None, None)
    store.jobs.cancel(job.id)
    assert store.jobs.retry(job.id).status is JobStatus.QUEUED


@pytest.mark.parametrize("state", ["queued", "running", "succeeded"])
def test_retry_is_only_for_failed_or_cancelled(store: Store, make_spec: Spec, state: str) -> None:
    job = enqueue(store, make_spec())
    if state != "queued":
        store.leases.claim_batch("r", 1, lease_s=9)
    if state == "succeeded":
        store.leases.succeed(job.id, "r", {})
    with pytest.raises(errors.IllegalTransition, match=f"(is|already) {state}; only failed"):
        store.jobs.retry(job.id)
    assert store.jobs.get(job.id).status.value == state


def test_retry_failed_in_bulk(store: Store, make_spec: Spec) -> None:
    batch = store.jobs.enqueue_batch([NewJob(make_spec(f"p{i}")) for i in range(3)], source="cli")
    other = enqueue(store, make_spec())
    for job in store.leases.claim_batch("r", 4, lease_s=9):
        store.leases.fail(job.id, "r", "generation_failed", "x")
    assert sorted(store.jobs.retry_failed(batch_id=batch.batch_id)) == sorted(batch.job_ids)
    assert store.jobs.get(other.id).status is JobStatus.FAILED
    assert store.jobs.retry_failed() == [other.id]
    assert store.jobs.retry_failed() == []


def test_set_priority(store: Store, make_spec: Spec) -> None:
    a = enqueue(store, make_spec("a"))
    b = enqueue(store, make_spec("b"))
    assert store.jobs.set_priority(b.id, 50).priority == 50
    assert store.jobs.get(b.id).spec.priority == 50
    assert store.leases.claim_batch("r", 1, lease_s=9)[0].id == b.id
    with pytest.raises(errors.IllegalTransition, match="only a queued job"):
        store.jobs.set_priority(b.id, 1)
    with pytest.raises(errors.InvalidParameters, match="between -100 and 100"):
        store.jobs.set_priority(a.id, 101)
    with pytest.raises(errors.JobNotFound):
        store.jobs.set_priority("nope", 1)


def test_purge_removes_only_old_finished_jobs(store: Store, make_spec: Spec) -> None:
    old = running(store, make_spec)
    store.leases.succeed(old.id, "r1", {}, now=at(10))
    queued_long_ago = enqueue(store, make_spec(), now=at(0))
    recent = enqueue(store, make_spec(), now=at(0))
    store.jobs.cancel(recent.id, now=at(500))
    assert store.jobs.purge(before=at(100), dry_run=True) == [old.id]
    assert store.jobs.get(old.id)  # a dry run deletes nothing
    assert store.jobs.purge(before=at(100)) == [old.id]
    with pytest.raises(errors.JobNotFound):
        store.jobs.get(old.id)
    assert store.jobs.get(queued_long_ago.id).status is JobStatus.QUEUED
    assert store.jobs.get(recent.id).status is JobStatus.CANCELLED


# -- reading ----------------------------------------------------------------------------


def test_list_filters_and_pages_newest_first(store: Store, make_spec: Spec) -> None:
    jobs = [
        enqueue(
            store, make_spec(f"p{i}", model="a" if i % 2 else "b"), now=at(i), client=f"c{i % 3}"
        )
        for i in range(7)
    ]
    page = store.jobs.list_jobs(limit=3)
    assert [j.id for j in page.jobs] == [j.id for j in jobs[::-1][:3]]
    page2 = store.jobs.list_jobs(limit=3, before=page.next_cursor)
    page3 = store.jobs.list_jobs(limit=3, before=page2.next_cursor)
    assert [j.id for j in page.jobs + page2.jobs + page3.jobs] == [j.id for j in jobs[::-1]]
    assert page3.next_cursor is None
    assert {j.model for j in store.jobs.list_jobs(model="sd/a").jobs} == {"sd/a"}
    assert len(store.jobs.list_jobs(client="c0").jobs) == 3
    assert [j.id for j in store.jobs.list_jobs(since=at(5)).jobs] == [jobs[6].id, jobs[5].id]
    store.jobs.cancel(jobs[0].id)
    assert [j.id for j in store.jobs.list_jobs(statuses=["cancelled"]).jobs] == [jobs[0].id]
    assert store.jobs.list_jobs(source="api").jobs == []
    with pytest.raises(errors.JobNotFound, match="cursor"):
        store.jobs.list_jobs(before="nope")
    with pytest.raises(errors.InvalidParameters):
        store.jobs.list_jobs(limit=0)


def test_counts_have_every_state(store: Store, make_spec: Spec) -> None:
    assert store.jobs.counts() == dict.fromkeys(JobStatus, 0)
    running(store, make_spec)
    enqueue(store, make_spec())
    counts = store.jobs.counts()
    assert counts[JobStatus.RUNNING] == 1 and counts[JobStatus.QUEUED] == 1
    with pytest.raises(errors.BatchNotFound):
        store.jobs.batch_counts("nope")


def test_get_many_keeps_order_and_names_the_missing(store: Store, make_spec: Spec) -> None:
    a, b = enqueue(store, make_spec("a")), enqueue(store, make_spec("b"))
    assert [j.id for j in store.jobs.get_many([b.id, a.id])] == [b.id, a.id]
    with pytest.raises(errors.JobNotFound, match="no job zzz"):
        store.jobs.get_many([a.id, "zzz"])


def test_stats_over_a_window(store: Store, make_spec: Spec) -> None:
    for i, outcome in enumerate(["ok", "ok", "fail"]):
        enqueue(store, make_spec(n=2), now=at(i))
        (job,) = store.leases.claim_batch("r", 1, lease_s=99, now=at(10 + i))
        if outcome == "ok":
            store.leases.succeed(job.id, "r", {}, now=at(14 + i))
        else:
            store.leases.fail(job.id, "r", "generation_failed", "x", now=at(14 + i))
    enqueue(store, make_spec(), now=at(20))
    stats = store.jobs.stats(window_s=60, now=at(60))
    assert stats.counts[JobStatus.QUEUED] == 1
    assert stats.finished[JobStatus.SUCCEEDED] == 2 and stats.finished[JobStatus.FAILED] == 1
    assert stats.images == 4
    assert stats.mean_wait_s == 10.0 and stats.mean_run_s == 4.0
    assert stats.jobs_per_minute == 2.0 and stats.images_per_minute == 4.0
    assert store.jobs.stats(window_s=10, now=at(60)).finished[JobStatus.SUCCEEDED] == 0
    assert stats.to_dict()["depth"]["queued"] == 1
    with pytest.raises(errors.InvalidParameters):
        store.jobs.stats(window_s=0)


def test_images_timeline_counts_each_minutes_images(store: Store, make_spec: Spec) -> None:
    for finish_at, n, outcome in [(20, 2, "ok"), (50, 1, "ok"), (170, 3, "ok"), (175, 4, "fail")]:
        enqueue(store, make_spec(n=n), now=at(finish_at - 10))
        (job,) = store.leases.claim_batch("r", 1, lease_s=999, now=at(finish_at - 5))
        if outcome == "ok":
            store.leases.succeed(job.id, "r", {}, now=at(finish_at))
        else:
            store.leases.fail(job.id, "r", "generation_failed", "x", now=at(finish_at))
    # The window is [0 s, 180 s): three minutes, oldest first; failures make no images,
    # and what finished after `now` is not in it.
    assert store.jobs.images_timeline(window_s=180, bucket_s=60, now=at(180)) == [3, 0, 3]
    assert store.jobs.images_timeline(window_s=120, bucket_s=60, now=at(180)) == [0, 3]
    assert store.jobs.images_timeline(window_s=60, bucket_s=30, now=at(60)) == [2, 1]
    for window, bucket in ((0, 60), (60, 0), (86_400, 1)):
        with pytest.raises(errors.InvalidParameters):
            store.jobs.images_timeline(window_s=window, bucket_s=bucket)


def test_batch_job_ids_in_submission_order(store: Store, make_spec: Spec) -> None:
    batch = store.jobs.enqueue_batch([NewJob(make_spec(f"p{i}")) for i in range(5)], source="cli")
    enqueue(store, make_spec("not in the batch"))
    assert store.jobs.batch_job_ids(batch.batch_id) == batch.job_ids
    with pytest.raises(errors.BatchNotFound, match="no batch nope"):
        store.jobs.batch_job_ids("nope")


def test_wait_for_keeps_the_order_asked(store: Store, make_spec: Spec) -> None:
    a, b = enqueue(store, make_spec("a")), enqueue(store, make_spec("b"))
    for job in store.leases.claim_batch("r", 2, lease_s=60):
        store.leases.succeed(job.id, "r", {})
    assert [j.id for j in store.jobs.wait_for([b.id, a.id, b.id], timeout_s=1)] == [
        b.id,
        a.id,
        b.id,
    ]
    with pytest.raises(errors.JobNotFound):
        store.jobs.wait_for([a.id, "nope"], timeout_s=1)


def test_wait_for_returns_when_finished_or_times_out(store: Store, make_spec: Spec) -> None:
    job = running(store, make_spec)
    with pytest.raises(errors.JobTimeout, match="1 of 1"):
        store.jobs.wait_for([job.id], timeout_s=0.2)
    store.leases.succeed(job.id, "r1", {})
    (final,) = store.jobs.wait_for([job.id], timeout_s=1)
    assert final.status is JobStatus.SUCCEEDED


# -- the database itself ----------------------------------------------------------------


def test_pinned_keeps_one_connection_for_the_thread(store: Store, make_spec: Spec) -> None:
    seen: list[object] = []

    def note(conn) -> None:  # type: ignore[no-untyped-def]
        seen.append(conn.connection.driver_connection)

    pool = store.db.engine.pool
    with store.db.pinned():
        assert pool.checkedout() == 1  # held for the whole block
        store.db.read(note)
        job = enqueue(store, make_spec())
        with store.db.pinned():  # nested: the same connection
            store.db.write(note)
        with pytest.raises(errors.IllegalTransition):  # an error inside a transaction...
            store.jobs.retry(job.id)
        store.db.read(note)  # ...leaves the pinned connection usable
        assert store.jobs.get(job.id).status is JobStatus.QUEUED
    assert len({id(c) for c in seen}) == 1
    assert pool.checkedout() == 0  # given back when the block ended


def test_pinned_connections_are_per_thread(store: Store, make_spec: Spec) -> None:
    import threading

    owners: dict[str, object] = {}
    together = threading.Barrier(3)  # all three hold their connections at once

    def worker(name: str) -> None:
        with store.db.pinned():
            owners[name] = store.db.read(lambda conn: conn.connection.driver_connection)
            enqueue(store, make_spec(name))
            assert store.db.read(lambda conn: conn.connection.driver_connection) is owners[name]
            together.wait(10)

    threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(c) for c in owners.values()}) == 3
    assert store.jobs.counts()[JobStatus.QUEUED] == 3


@pytest.mark.sqlite_only
def test_database_runs_in_wal_mode(store: Store, db_url: str) -> None:
    with store.db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    path = db_url.removeprefix("sqlite:///")
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.sqlite_only
def test_full_synchronous_and_busy_timeout_are_configurable(db_url: str, make_spec: Spec) -> None:
    store = Store.open(db_url, synchronous="full", busy_timeout_s=2.5)
    with store.db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 2_500
    with pytest.raises(errors.DatabaseError, match="normal or full"):
        Store.open(db_url, synchronous="off")


def test_unmigrated_database_says_what_to_do(tmp_path) -> None:
    bare = Store.open(f"sqlite:///{tmp_path / 'bare.db'}")
    with pytest.raises(errors.DatabaseNotMigrated, match="alice-spool db upgrade"):
        bare.jobs.counts()


@pytest.mark.sqlite_only
def test_writer_waits_for_a_held_lock_instead_of_failing(
    store: Store, make_spec: Spec, db_url: str
) -> None:
    import threading

    blocker = sqlite3.connect(
        db_url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False
    )
    blocker.execute("BEGIN IMMEDIATE")
    threading.Timer(0.5, blocker.execute, args=("COMMIT",)).start()
    job = enqueue(store, make_spec())  # waits for the lock, then succeeds
    assert store.jobs.get(job.id).status is JobStatus.QUEUED


@pytest.mark.sqlite_only
def test_a_lock_held_past_the_deadline_is_database_busy(
    make_spec: Spec, db_url: str, store
) -> None:
    impatient = Store.open(db_url, busy_timeout_s=0.05, busy_deadline_s=0.3)
    blocker = sqlite3.connect(
        db_url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False
    )
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(errors.DatabaseBusy):
            enqueue(impatient, make_spec())
    finally:
        blocker.execute("ROLLBACK")
    assert store.jobs.counts()[JobStatus.QUEUED] == 0


# -- fair share between owners ----------------------------------------


def claim_one(store: Store) -> JobRecord:
    (job,) = store.leases.claim_compatible("runner-1", max_images=1, lease_s=60)
    store.leases.succeed(job.id, "runner-1", {"images": []})
    return job


def test_one_owners_long_queue_delays_anothers_job_by_at_most_one_claim(
    store: Store, make_spec: Spec
) -> None:
    a = [store.jobs.enqueue(make_spec(f"a{i}", seed=i), source="api", owner="alice").job
         for i in range(20)]  # fmt: skip
    claim_one(store)  # alice's first, as the queue's head
    b = store.jobs.enqueue(make_spec("b", seed=99), source="api", owner="bob").job
    taken = [claim_one(store).id for _ in range(2)]
    assert b.id in taken  # bob's one job starts within the next two claims
    assert taken[0] == b.id  # bob was never served: he goes first
    assert taken[1] == a[1].id
    rest = [claim_one(store).id for _ in range(18)]
    assert rest == [job.id for job in a[2:]]  # alice's, in her own order
    assert store.jobs.counts()[JobStatus.QUEUED] == 0


def test_owners_take_turns_and_priority_still_comes_first(store: Store, make_spec: Spec) -> None:
    for owner in ("alice", "bob", None):  # None: the inbox's and the CLI's jobs
        for i in range(3):
            store.jobs.enqueue(make_spec(f"{owner}-{i}", seed=i), source="api", owner=owner)
    urgent = store.jobs.enqueue(make_spec("urgent", priority=10), source="api", owner="alice").job
    assert claim_one(store).id == urgent.id  # priority first, whoever's it is
    order = [claim_one(store).owner for _ in range(9)]
    # Never served before all (by name: "" is no key's), then the least recently served:
    # alice, served last (the urgent one), comes after them.
    assert order[:3] == [None, "bob", "alice"]
    assert order[3:6] == [None, "bob", "alice"] and order[6:] == [None, "bob", "alice"]


def test_compatible_jobs_of_different_owners_still_share_a_call(
    store: Store, make_spec: Spec
) -> None:
    jobs = [store.jobs.enqueue(make_spec(f"p{i}", seed=i), source="api", owner=owner).job
            for i, owner in enumerate(["alice", "bob", "carol", "alice"])]  # fmt: skip
    taken = store.leases.claim_compatible("runner-1", max_images=8, lease_s=60)
    assert sorted(j.id for j in taken) == sorted(j.id for j in jobs)  # one call for all
    served = dict(store.db.read(lambda c: c.execute(text("SELECT owner, 1 FROM served")).all()))
    assert set(served) == {"alice", "bob", "carol"}  # each owner batched along was served


def test_the_owner_and_not_the_client_name_decides_the_turns(store: Store, make_spec: Spec) -> None:
    # CLI and inbox jobs name their file or user as `client`, but all are the admin's:
    # one owner, however many names; a key's jobs are its own owner's.
    for i in range(3):
        store.jobs.enqueue(make_spec(f"cli{i}", seed=i), source="cli", client=f"file{i}.json")
    keyed = store.jobs.enqueue(
        make_spec("k", seed=7), source="api", client="bob", owner="k-bob"
    ).job
    order = [claim_one(store) for _ in range(4)]
    assert [j.owner for j in order] == [None, "k-bob", None, None]
    assert order[1].id == keyed.id


@pytest.mark.sqlite_only
def test_idempotency_lookups_search_the_per_owner_index(store: Store) -> None:
    """Every lookup of an owner's idempotency key uses the unique index's own expression
    (`COALESCE(owner, '')`), so it searches the index rather than reading every keyed job."""
    from alice_spool.store._base import COLUMNS, owner_scope

    query = select(*COLUMNS).where(owner_scope == "alice", Job.idempotency_key == "k")
    compiled = query.compile(store.db.engine)  # as it is sent: with its bound parameters
    values = tuple(compiled.params[name] for name in compiled.positiontup or ())
    with store.db.engine.connect() as conn:
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", values)
        plan = " ".join(row[-1] for row in rows)
    assert "SEARCH jobs USING INDEX uq_jobs_idempotency_key (<expr>=? AND" in plan, plan


def test_each_owners_idempotency_key_is_its_own(store: Store, make_spec: Spec) -> None:
    spec = make_spec("a harbour", model="sd/tiny")
    admins = store.jobs.enqueue(spec, source=Source.CLI, idempotency_key="nightly")
    users = store.jobs.enqueue(spec, source=Source.API, idempotency_key="nightly", owner="u1")
    assert admins.created and users.created and admins.job.id != users.job.id
    again = store.jobs.enqueue(spec, source=Source.API, idempotency_key="nightly", owner="u1")
    assert not again.created and again.job.id == users.job.id
    assert store.jobs.get_by_key("u1", "nightly").id == users.job.id
    assert store.jobs.get_by_key(None, "nightly").id == admins.job.id
    with pytest.raises(errors.JobNotFound):
        store.jobs.get_by_key("u2", "nightly")
    with pytest.raises(errors.IdempotencyConflict):
        store.jobs.enqueue(
            make_spec("other"), source=Source.API, idempotency_key="nightly", owner="u1"
        )
    batch = [NewJob(spec, "n-1", owner="u2"), NewJob(spec, "n-2", owner="u2")]
    first = store.jobs.enqueue_batch(batch, source=Source.API)
    repeat = store.jobs.enqueue_batch(batch, source=Source.API)
    assert first.created and not repeat.created and repeat.batch_id == first.batch_id
    admins_batch = store.jobs.enqueue_batch(
        [NewJob(spec, "n-1"), NewJob(spec, "n-2")], source=Source.INBOX
    )
    assert admins_batch.created and admins_batch.batch_id != first.batch_id
