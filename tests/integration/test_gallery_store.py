"""The gallery's rows in the store, on SQLite and, with
ALICE_TEST_DATABASE_URL, on PostgreSQL: written when a job succeeds, seen by scope,
shared until a given time, tagged, searched, counted and deleted; and the other
per-user rows beside them: web sessions and the dialects' client options."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from alice_spool import errors
from alice_spool.records import JobRecord
from alice_spool.spec import JobSpec
from alice_spool.store import Store

pytestmark = pytest.mark.both_databases  # SQLite and PostgreSQL (tests/conftest.py)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def succeeded(store: Store, prompt: str, owner: str | None, n: int = 2) -> JobRecord:
    job = store.jobs.enqueue(JobSpec(prompt=prompt, n=n), source="api", owner=owner).job
    (taken,) = store.leases.claim_batch("r", 1, lease_s=60)
    assert taken.id == job.id
    files = [{"file": f"{job.id}-{i}.png", "seed": i, "width": 8, "height": 8} for i in range(n)]
    return store.leases.succeed(job.id, "r", {"images": files}, now=T0)


def test_a_succeeded_job_s_images_join_the_gallery_in_its_commit(store: Store) -> None:
    job = succeeded(store, "a fox", "alice")
    assert store.gallery.gallery_files([job.id]) == [f"{job.id}-0", f"{job.id}-1"]
    item = store.gallery.gallery_image(f"{job.id}-1", scope="alice")
    assert (item.owner, item.prompt, item.created_at, item.public) == ("alice", "a fox", T0, False)
    failed = store.jobs.enqueue(JobSpec(prompt="x"), source="api", owner="alice").job
    store.leases.claim_batch("r", 1, lease_s=60)
    store.leases.fail(failed.id, "r", "generation_failed", "no")
    assert store.gallery.gallery_files([failed.id]) == []


def test_scope_sharing_until_a_time_and_changing_only_ones_own(store: Store) -> None:
    mine, theirs = succeeded(store, "mine", "alice"), succeeded(store, "theirs", "bob")
    image = f"{theirs.id}-0"
    assert {i.id for i in store.gallery.gallery_page(scope="alice", now=T0).items} == {
        f"{mine.id}-0",
        f"{mine.id}-1",
    }
    with pytest.raises(errors.ImageNotFound):
        store.gallery.gallery_image(image, scope="alice", now=T0)
    with pytest.raises(errors.ImageNotFound):  # not seen: not changed either, and not told
        store.gallery.set_tags(image, ["x"], scope="alice", now=T0)
    store.gallery.set_privacy(image, T0 + timedelta(hours=2), scope="bob", now=T0)
    assert store.gallery.gallery_image(image, scope="alice", now=T0 + timedelta(hours=1)).public
    with pytest.raises(errors.Forbidden):
        store.gallery.set_privacy(image, None, scope="alice", now=T0)
    with pytest.raises(errors.Forbidden):
        store.gallery.delete_image(image, scope="alice", now=T0)
    later = T0 + timedelta(hours=2)  # the share has ended: private to its owner again
    with pytest.raises(errors.ImageNotFound):
        store.gallery.gallery_image(image, scope="alice", now=later)
    assert store.gallery.gallery_stats(now=T0 + timedelta(hours=1)) == {
        "total": 4,
        "public": 1,
        "private": 3,
        "expired": 0,
    }
    assert store.gallery.gallery_stats(now=later)["expired"] == 1
    assert store.gallery.gallery_page(scope=None, now=later).total == 4  # an admin: all
    assert store.gallery.gallery_page(scope="alice", public_only=True, now=T0).total == 1


def test_tags_search_and_filters(store: Store) -> None:
    a, b = succeeded(store, "A Red fox, 100% wild", "alice"), succeeded(store, "a_b c", "alice")
    store.gallery.set_tags(f"{a.id}-0", ["fox", "red"], scope=None)
    store.gallery.set_tags(f"{b.id}-0", ["fox"], scope="alice")
    page = lambda **kw: {i.id for i in store.gallery.gallery_page(scope="alice", **kw).items}  # noqa: E731
    assert page(tags=["fox"]) == {f"{a.id}-0", f"{b.id}-0"}
    assert page(tags=["fox", "red"]) == {f"{a.id}-0"}
    assert page(search="RED FOX") == {f"{a.id}-0", f"{a.id}-1"}
    assert page(search="100%") == {f"{a.id}-0", f"{a.id}-1"}
    assert page(search="0% w") == {f"{a.id}-0", f"{a.id}-1"}
    assert page(search="a_b") == {f"{b.id}-0", f"{b.id}-1"}
    assert page(search="_") == {f"{b.id}-0", f"{b.id}-1"}  # a plain character
    assert page(search="%") == {f"{a.id}-0", f"{a.id}-1"}
    assert page(since=T0 + timedelta(seconds=1)) == set()
    assert len(page(until=T0 + timedelta(seconds=1))) == 4
    assert store.gallery.gallery_tags(scope="alice") == [("fox", 2), ("red", 1)]
    assert store.gallery.gallery_tags(scope="bob") == []
    store.gallery.set_tags(f"{a.id}-0", [], scope="alice")
    assert store.gallery.gallery_tags(scope="alice") == [("fox", 1)]


def test_delete_forgets_the_image_and_marks_it_in_its_job(store: Store) -> None:
    job = succeeded(store, "gone soon", "alice")
    store.gallery.set_tags(f"{job.id}-0", ["x"], scope="alice")
    gone = store.gallery.delete_image(f"{job.id}-0", scope="alice")
    assert gone.file == f"{job.id}-0.png"
    assert store.gallery.gallery_files([job.id]) == [f"{job.id}-1"]
    images = store.jobs.get(job.id).result["images"]  # type: ignore[index]
    assert [i.get("deleted", False) for i in images] == [True, False]
    assert store.gallery.gallery_tags(scope=None) == []
    with pytest.raises(errors.ImageNotFound):
        store.gallery.delete_image(f"{job.id}-0", scope="alice")


def test_retention_and_purge_take_the_gallery_rows(store: Store) -> None:
    kept, expired = succeeded(store, "kept", None), succeeded(store, "expired", None)
    store.jobs.mark_images_expired([expired.id])
    assert store.gallery.gallery_files([kept.id, expired.id]) == [f"{kept.id}-0", f"{kept.id}-1"]
    assert set(store.jobs.purge(before=T0 + timedelta(seconds=1))) == {kept.id, expired.id}
    assert store.gallery.gallery_files([kept.id, expired.id]) == []


def test_sessions_are_listed_by_a_handle_and_ended_by_it(store: Store) -> None:
    secret = store.keys.open_session("alice", "user", None, max_s=3600, now=T0)
    (listed,) = store.keys.list_sessions(idle_s=900, now=T0 + timedelta(seconds=5))
    assert (listed["name"], len(listed["id"])) == ("alice", 16) and secret not in str(listed)
    assert store.keys.list_sessions(idle_s=900, now=T0 + timedelta(hours=2)) == []  # ended
    assert not store.keys.end_session("zz" * 8)
    assert store.keys.end_session(listed["id"])
    assert store.keys.session(secret, idle_s=900, now=T0 + timedelta(seconds=6)) is None


def test_client_options_are_kept_per_owner(store: Store) -> None:
    """A dialect's per-client setting (A1111's checkpoint): one value per owner and
    name, the admin's (None) apart, replaced when set again."""
    name = "a1111.sd_model_checkpoint"
    assert store.options.client_option("alice", name) is None
    store.options.set_client_option("alice", name, "sd/tiny")
    store.options.set_client_option(None, name, "sd/other")
    store.options.set_client_option("alice", name, "sd/spare")
    assert store.options.client_option("alice", name) == "sd/spare"
    assert store.options.client_option(None, name) == "sd/other"
    assert store.options.client_option("bob", name) is None
    assert store.options.client_option("alice", "another") is None


def test_an_options_object_is_merged_key_by_key_per_owner(store: Store) -> None:
    """A1111's options object: each change sets its keys and keeps the others, per
    owner; the plain options given with it change in the same transaction; writers on
    several threads (API nodes) lose none of each other's keys."""
    import threading

    name = "a1111.options"
    assert store.options.client_options("alice", name) == {}
    merged = store.options.merge_client_options(
        "alice", name, {"send_seed": False, "x": [1]}, also={"a1111.sd_model_checkpoint": "sd/a"}
    )
    assert merged == {"send_seed": False, "x": [1]}
    assert store.options.client_option("alice", "a1111.sd_model_checkpoint") == "sd/a"
    store.options.merge_client_options(
        "alice", name, {"x": {"y": 2}, "CLIP_stop_at_last_layers": 2}
    )
    assert store.options.client_options("alice", name) == {
        "send_seed": False, "x": {"y": 2}, "CLIP_stop_at_last_layers": 2,
    }  # fmt: skip
    assert (
        store.options.client_options(None, name) == {}
        and store.options.client_options("bob", name) == {}
    )

    def write(index: int) -> None:
        store.options.merge_client_options("bob", name, {f"key{index}": index})

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert store.options.client_options("bob", name) == {f"key{i}": i for i in range(8)}


def test_tag_filters_are_bounded_and_text_no_driver_can_send_is_refused(store: Store) -> None:
    """Each tag filter is a subquery: 1,500 of them went past SQLite's expression depth
    (a `database_error` that marked the node degraded) and keep PostgreSQL planning for
    minutes. Past 20, the store refuses before any SQL; a lone surrogate, or a NUL on
    PostgreSQL, is the parameters' fault (`invalid_parameters`), not the database's."""
    job = succeeded(store, "a fox", "alice")
    store.gallery.set_tags(f"{job.id}-0", ["fox"], scope="alice", now=T0)
    with pytest.raises(errors.InvalidParameters) as refused:
        store.gallery.gallery_page(scope=None, tags=[f"t{i}" for i in range(1500)], now=T0)
    assert refused.value.field == "tags"
    twenty = ["fox", *(f"t{i}" for i in range(19))]
    assert store.gallery.gallery_page(scope=None, tags=twenty, now=T0).items == []
    assert [
        i.id for i in store.gallery.gallery_page(scope=None, tags=["fox"] * 30, now=T0).items
    ] == [f"{job.id}-0"]
    unsendable = ["\ud800"] + (["a\x00b"] if store.db.engine.dialect.name != "sqlite" else [])
    for text in unsendable:
        with pytest.raises(errors.QueryRefused) as caught:
            store.gallery.gallery_page(scope=None, search=text, now=T0)
        assert caught.value.code == "invalid_parameters"
        assert not isinstance(caught.value, errors.DatabaseError)
        with pytest.raises(errors.QueryRefused):
            store.gallery.set_tags(f"{job.id}-0", [text], scope="alice", now=T0)
    assert store.gallery.gallery_image(f"{job.id}-0", scope="alice", now=T0).tags == ("fox",)
