"""The downloads' rows (store/downloads.py) on a real migrated database: queued, claimed
by one worker at a time, progress under a renewed lease, finished once, cancelled, and
put back in the queue with their bytes when their worker died."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from alice_spool import errors
from alice_spool.states import DownloadStatus
from alice_spool.store import Store, utcnow

pytestmark = pytest.mark.both_databases  # SQLite and PostgreSQL (tests/conftest.py)


def queue(store: Store, url: str = "https://example.com/model.safetensors", **fields):
    return store.downloads.queue_download("url", {"url": url}, client="test", **fields)


def test_a_download_is_queued_claimed_reported_and_finished(store: Store) -> None:
    made = queue(store, name="model", kind="checkpoint")
    assert (made.status, made.bytes_done, made.attempts) == (DownloadStatus.QUEUED, 0, 0)
    assert made.to_dict()["error"] is None and made.to_dict()["model"] is None
    claimed = store.downloads.claim_download("worker-a", lease_s=30)
    assert claimed is not None and claimed.id == made.id
    assert (claimed.status, claimed.lease_owner, claimed.attempts) == (
        DownloadStatus.DOWNLOADING, "worker-a", 1,
    )  # fmt: skip
    assert store.downloads.claim_download("worker-b", lease_s=30) is None  # nothing else queued
    progress = store.downloads.download_progress(
        made.id, "worker-a", bytes_done=512, bytes_total=1024, speed_bps=2048.0, lease_s=30
    )
    assert (progress.bytes_done, progress.bytes_total, progress.speed_bps) == (512, 1024, 2048.0)
    assert progress.lease_expires_at > claimed.lease_expires_at - timedelta(seconds=1)
    with pytest.raises(errors.LeaseLost):  # another worker cannot report on it
        store.downloads.download_progress(
            made.id, "worker-b", bytes_done=1, bytes_total=None, speed_bps=None, lease_s=30
        )
    done = store.downloads.finish_download(
        made.id, "worker-a", DownloadStatus.SUCCEEDED, model="sd/model"
    )
    shown = done.to_dict()
    assert (shown["status"], shown["model"], shown["error"]) == ("succeeded", "sd/model", None)
    assert done.lease_owner is None and done.finished_at is not None
    with pytest.raises(errors.LeaseLost):  # finished once
        store.downloads.finish_download(
            made.id, "worker-a", DownloadStatus.SUCCEEDED, model="sd/model"
        )
    assert store.downloads.get_download(made.id) == done


def test_one_download_can_be_claimed_by_its_id_while_it_is_queued(store: Store) -> None:
    older, mine = queue(store, "https://example.com/a"), queue(store, "https://example.com/b")
    taken = store.downloads.claim_download("cli", lease_s=30, download_id=mine.id)
    assert taken is not None and taken.id == mine.id
    assert store.downloads.claim_download("cli", lease_s=30, download_id=mine.id) is None  # held
    assert store.downloads.get_download(older.id).status is DownloadStatus.QUEUED  # left alone


def test_downloads_are_claimed_in_order_and_never_twice(store: Store) -> None:
    made = [queue(store, f"https://example.com/{i}.safetensors") for i in range(40)]
    taken: list[tuple[str, str]] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (claimed := store.downloads.claim_download(name, lease_s=30)) is not None:
            with lock:
                taken.append((claimed.id, name))

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    ids = [download_id for download_id, _ in taken]
    assert sorted(ids) == sorted(d.id for d in made) and len(set(ids)) == len(made)
    assert all(
        d.status is DownloadStatus.DOWNLOADING for d in store.downloads.list_downloads(limit=100)
    )


def test_a_failed_download_keeps_its_error_and_the_rules_of_finishing(store: Store) -> None:
    made = queue(store)
    store.downloads.claim_download("w", lease_s=30)
    with pytest.raises(ValueError):
        store.downloads.finish_download(made.id, "w", DownloadStatus.FAILED)  # no error given
    with pytest.raises(ValueError):
        store.downloads.finish_download(made.id, "w", DownloadStatus.SUCCEEDED)  # no model
    with pytest.raises(ValueError):
        store.downloads.finish_download(made.id, "w", DownloadStatus.DOWNLOADING)
    failed = store.downloads.finish_download(
        made.id, "w", DownloadStatus.FAILED, error=errors.DownloadFailed("the body was HTML")
    )
    assert failed.to_dict()["error"] == {"code": "download_failed", "message": "the body was HTML"}
    with pytest.raises(errors.IllegalTransition):
        store.downloads.cancel_download(made.id)


def test_cancel_ends_a_queued_download_and_asks_a_running_one_to_stop(store: Store) -> None:
    waiting, running = queue(store, "https://example.com/a"), queue(store, "https://example.com/b")
    assert store.downloads.claim_download("w", lease_s=30).id == waiting.id
    store.downloads.cancel_download(running.id)  # still queued: cancelled at once
    assert store.downloads.get_download(running.id).status is DownloadStatus.CANCELLED
    assert (
        store.downloads.cancel_download(running.id).status is DownloadStatus.CANCELLED
    )  # again: same
    asked = store.downloads.cancel_download(waiting.id)
    assert asked.status is DownloadStatus.DOWNLOADING and asked.cancel_requested
    report = store.downloads.download_progress(
        waiting.id, "w", bytes_done=10, bytes_total=100, speed_bps=None, lease_s=30
    )
    assert report.cancel_requested  # what the worker sees, to stop and clean up
    ended = store.downloads.finish_download(waiting.id, "w", DownloadStatus.CANCELLED)
    assert ended.status is DownloadStatus.CANCELLED and ended.finished_at is not None
    with pytest.raises(errors.DownloadNotFound):
        store.downloads.cancel_download("0" * 30)


def test_a_dead_workers_downloads_go_back_with_their_bytes(store: Store) -> None:
    started = utcnow()
    first, second, third = (queue(store, f"https://example.com/{i}") for i in range(3))
    claimed = [store.downloads.claim_download("old", lease_s=10, now=started) for _ in range(3)]
    assert [d.id for d in claimed] == [first.id, second.id, third.id]
    store.downloads.download_progress(
        first.id, "old", bytes_done=700, bytes_total=1000, speed_bps=1.0, lease_s=10, now=started
    )
    store.downloads.cancel_download(third.id)  # asked to stop before its worker died
    # Within the lease nothing moves; after it, all of them do.
    assert store.downloads.requeue_download_orphans(now=started + timedelta(seconds=5)) == []
    later = started + timedelta(seconds=11)
    assert sorted(store.downloads.requeue_download_orphans(now=later)) == sorted(
        [first.id, second.id]
    )
    back = store.downloads.get_download(first.id)
    assert (back.status, back.bytes_done, back.bytes_total, back.lease_owner) == (
        DownloadStatus.QUEUED, 700, 1000, None,
    )  # fmt: skip
    assert store.downloads.get_download(third.id).status is DownloadStatus.CANCELLED
    again = store.downloads.claim_download("new", lease_s=10, now=later)
    assert again.id == first.id and again.attempts == 2 and again.bytes_done == 700


def test_a_worker_starting_again_takes_back_what_it_held(store: Store) -> None:
    held = queue(store)
    store.downloads.claim_download("host-1", lease_s=600)
    other = queue(store)
    store.downloads.claim_download("host-2", lease_s=600)
    assert store.downloads.requeue_download_orphans(owner="host-1") == [held.id]
    assert store.downloads.get_download(other.id).status is DownloadStatus.DOWNLOADING


def test_bad_rows_are_refused_before_anything_is_written(store: Store) -> None:
    with pytest.raises(errors.InvalidParameters) as info:
        store.downloads.queue_download("ftp", {"url": "ftp://x"})
    assert info.value.field == "source"
    with pytest.raises(errors.InvalidParameters) as info:
        store.downloads.queue_download("url", {"url": "https://x"}, kind="embedding")
    assert info.value.field == "kind"
    assert store.downloads.list_downloads() == []
    statuses = [DownloadStatus.QUEUED]
    queue(store)
    assert [d.status for d in store.downloads.list_downloads(statuses=statuses)] == statuses
