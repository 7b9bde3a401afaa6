"""The claim's cost and its choices: how many statements a claim and a finish take (so
that they cannot silently grow again), and the runner's fair, compatible claim against
a plain restatement of its rules on random queues."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event

from alice_spool.records import JobRecord
from alice_spool.spec import JobSpec
from alice_spool.states import Source
from alice_spool.store import Store

pytestmark = pytest.mark.both_databases  # SQLite and PostgreSQL (tests/conftest.py)

Spec = Callable[..., JobSpec]
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@contextmanager
def statements(store: Store) -> Iterator[list[str]]:
    """The SQL statements the store sends while the block runs (BEGIN and COMMIT go
    to the driver directly on SQLite, and are not counted on either database)."""
    sent: list[str] = []

    def note(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if statement.split(None, 1)[0].upper() not in ("BEGIN", "COMMIT", "ROLLBACK"):
            sent.append(statement)

    event.listen(store.db.engine, "before_cursor_execute", note)
    try:
        yield sent
    finally:
        event.remove(store.db.engine, "before_cursor_execute", note)


def queue(store: Store, make_spec: Spec, count: int, owner: str | None = None) -> None:
    for i in range(count):
        store.jobs.enqueue(make_spec(f"{owner}-{i}", seed=i), source=Source.API, owner=owner)


# -- statements per operation -----------------------------------------------------------


def test_a_claim_in_queue_order_is_one_statement_and_a_success_two(
    store: Store, make_spec: Spec
) -> None:
    queue(store, make_spec, 10)
    with statements(store) as sent:
        (job,) = store.leases.claim_batch("r1", 1, lease_s=60)
    assert len(sent) == 1  # UPDATE ... RETURNING
    with statements(store) as sent:
        store.leases.succeed(job.id, "r1", {"images": []})
    assert len(sent) == 2  # the job, then every total it adds to in one upsert
    with statements(store) as sent:
        jobs = store.leases.claim_batch("r1", 8, lease_s=60)
    assert len(jobs) == 8 and len(sent) == 1


def test_a_success_with_images_adds_them_to_the_gallery_in_one_more(
    store: Store, make_spec: Spec
) -> None:
    queue(store, make_spec, 1)
    (job,) = store.leases.claim_batch("r1", 1, lease_s=60)
    images = [{"file": f"{job.id}-{i}.png"} for i in range(2)]
    with statements(store) as sent:
        store.leases.succeed(job.id, "r1", {"images": images})
    assert len(sent) == 3


@pytest.mark.parametrize("images", [1, 8])
def test_the_runners_fair_claim_is_three_statements_however_many_owners(
    store: Store, make_spec: Spec, images: int
) -> None:
    for owner in [None, *(f"owner-{i}" for i in range(12))]:
        queue(store, make_spec, 3, owner)
    for _ in range(3):  # the head of the queue, then heads chosen from behind it
        with statements(store) as sent:
            jobs = store.leases.claim_compatible("r1", max_images=images, lease_s=60)
        assert len(jobs) == images
        # the head (fair share), the claim of it and its batch mates, who was served
        assert len(sent) == 3


def test_a_claim_in_strict_queue_order_is_three_statements_too(
    store: Store, make_spec: Spec
) -> None:
    queue(store, make_spec, 4, "alice")
    queue(store, make_spec, 4, "bob")
    with statements(store) as sent:
        jobs = store.leases.claim_compatible("r1", max_images=8, lease_s=60, fair=False)
    assert len(jobs) == 8 and len(sent) == 3


# -- the fair, compatible claim against its rules -----------------------------------------


@dataclass
class Queued:
    seq: int
    record: JobRecord
    key: str | None
    images: int

    @property
    def owner(self) -> str:
        return self.record.owner or ""


def expected_claims(
    queued: list[Queued], served: dict[str, datetime], budget: int, now: datetime
) -> list[set[str]]:
    """What the runner's claim may take, by its rules written out plainly: one set of
    job ids for each owner whose turn it may be (owners served at the same moment, as
    batch mates, are in a tie that either side of may win)."""
    order = sorted(queued, key=lambda q: (-q.record.priority, q.seq))

    def due(q: Queued) -> bool:
        return q.record.not_before is None or q.record.not_before <= now

    ready = [q for q in order if due(q)]
    if not ready:
        return [set()]
    first = ready[0]
    # Fair share: at the first ready job's priority, the owners with ready jobs there;
    # never served first, by name, then the least recently served.
    level = [q for q in ready if q.record.priority == first.record.priority]
    owners = {q.owner for q in level}
    never = sorted(o for o in owners if o not in served)
    if never:
        turns = [never[0]]
    else:
        earliest = min(served[o] for o in owners)
        turns = sorted(o for o in owners if served[o] == earliest)
    heads = [next(q for q in level if q.owner == owner) for owner in turns]
    return [set(_with_mates(head, first, ready, budget)) for head in heads]


def _with_mates(head: Queued, first: Queued, ready: list[Queued], budget: int) -> list[str]:
    """The head and the ready jobs of its batch key, in queue order, that fit `budget`."""
    if head.seq != first.seq:  # the head first, then the mates that fit what is left
        left = budget - head.images
        mates = [q for q in ready if q.key == head.key and q is not head and q.images <= left]
        taken, total = [head], 0
        for q in mates[: max(left, 0)]:
            total += q.images
            if total <= left:
                taken.append(q)
        return [q.record.id for q in taken]
    candidates = [q for q in ready if q.key == head.key and (q.images <= budget or q is head)]
    taken, total = [], 0
    for q in candidates[: max(budget, 1)]:
        total += q.images
        if total <= budget or q is head:
            taken.append(q)
    return [q.record.id for q in taken]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_fair_claim_follows_its_rules_on_random_queues(
    store: Store, make_spec: Spec, seed: int
) -> None:
    rng = random.Random(seed)
    # Names whose order differs between code points and a language's collation.
    owners = [None, "Zoe", "alice", "ärne", "bob"]
    queued: list[Queued] = []
    served: dict[str, datetime] = {}
    clock = 0.0
    seq = 0
    for _ in range(40):
        for _ in range(rng.randint(0, 4)):
            clock += 1
            width = rng.choice([64, 128])  # two batch keys
            spec = make_spec(
                "p", seed=rng.randint(0, 99), width=width, height=64, n=rng.choice([1, 1, 2, 3]),
                priority=rng.choice([0, 0, 0, 1]),
            )  # fmt: skip
            later = at(clock + 5) if rng.random() < 0.15 else None
            job = store.jobs.enqueue(
                spec, source=Source.API, owner=rng.choice(owners), not_before=later, now=at(clock)
            ).job
            seq += 1
            queued.append(Queued(seq, job, job.spec.batch_digest(), job.spec.n))
        clock += 1
        budget = rng.choice([1, 2, 4, 8])
        allowed = expected_claims(queued, served, budget, at(clock))
        taken = store.leases.claim_compatible("r1", max_images=budget, lease_s=600, now=at(clock))
        assert {j.id for j in taken} in allowed
        for job in taken:
            served[job.owner or ""] = at(clock)
        gone = {j.id for j in taken}
        queued = [q for q in queued if q.record.id not in gone]
