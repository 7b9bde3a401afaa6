"""Retention on real outbox directories: by age, by total size (oldest first), never a
file of an unfinished job; jobs whose images are gone say so."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from alice_spool.outbox import Outbox
from alice_spool.records import JobRecord
from alice_spool.retention import GB, apply_retention
from alice_spool.spec import JobSpec
from alice_spool.states import JobStatus
from alice_spool.store import Store

pytestmark = pytest.mark.both_databases  # SQLite and PostgreSQL (tests/conftest.py)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def finished(store: Store, outbox: Outbox, prompt: str, *, days_ago: float, size: int) -> JobRecord:
    """A job that succeeded `days_ago`, with `size` bytes of images in its directory."""
    job = store.jobs.enqueue(JobSpec(prompt=prompt), source="cli").job
    when = NOW - timedelta(days=days_ago)
    (claimed,) = store.leases.claim_batch("r", 1, lease_s=60, now=when - timedelta(seconds=5))
    assert claimed.id == job.id
    outbox.write(job.id, {"status": "succeeded"})
    (outbox.job_dir(job.id) / f"{job.id}-0.png").write_bytes(b"x" * size)
    return store.leases.succeed(job.id, "r", {"images": [{"file": f"{job.id}-0.png"}]}, now=when)


def test_by_age_and_by_size_oldest_first(store: Store, tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    ancient = finished(store, outbox, "ancient", days_ago=30, size=1000)
    old = finished(store, outbox, "old", days_ago=5, size=4000)
    middle = finished(store, outbox, "middle", days_ago=3, size=4000)
    new = finished(store, outbox, "new", days_ago=1, size=4000)
    # A job whose complete directory is there but which runs again (its runner died
    # before recording it): never touched, however old and big.
    rerun = store.jobs.enqueue(JobSpec(prompt="rerun"), source="cli").job
    outbox.write(rerun.id, {"status": "succeeded"})
    (outbox.job_dir(rerun.id) / "big.png").write_bytes(b"y" * 50_000)
    store.leases.claim_batch("r2", 1, lease_s=60)

    limit_gb = 9000 / GB  # room for two of the 4000-byte directories
    preview = apply_retention(store, outbox, days=7, max_storage_gb=limit_gb, dry_run=True, now=NOW)
    assert preview.by_age == [ancient.id] and preview.by_size == [old.id]
    assert outbox.job_dir(ancient.id).exists()  # a dry run deletes nothing

    report = apply_retention(store, outbox, days=7, max_storage_gb=limit_gb, now=NOW)
    assert report.by_age == [ancient.id] and report.by_size == [old.id]
    assert (
        report.kept_unfinished == [rerun.id] and 5000 < report.bytes_freed < 5200
    )  # + result.json
    assert sorted(p.name for p in outbox.root.iterdir()) == sorted([middle.id, new.id, rerun.id])
    for job in (ancient, old):
        assert store.jobs.get(job.id).images_expired_at == NOW
        assert store.jobs.get(job.id).to_dict()["images_expired_at"] == "2026-11-22T12:00:00Z"
    assert store.jobs.get(new.id).images_expired_at is None
    assert store.jobs.get(rerun.id).status is JobStatus.RUNNING

    again = apply_retention(store, outbox, days=7, max_storage_gb=limit_gb, now=NOW)
    assert again.deleted == []  # within the limits now


def test_zero_means_no_limit_and_orphans_follow_the_rules(store: Store, tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    job = finished(store, outbox, "kept", days_ago=400, size=10)
    assert apply_retention(store, outbox, days=0, max_storage_gb=0, now=NOW).deleted == []
    store.jobs.purge(before=NOW)  # the row is gone, the directory stays
    assert store.jobs.list_jobs().jobs == []
    report = apply_retention(
        store, outbox, days=7, max_storage_gb=0, now=datetime.now(UTC) + timedelta(days=30)
    )
    assert report.by_age == [job.id] and not outbox.job_dir(job.id).exists()


def test_inputs_go_with_their_job_and_orphans_after_an_hour(store: Store, tmp_path: Path) -> None:
    import os

    from alice_spool import inputs

    outbox, data_dir = Outbox(tmp_path / "outbox"), tmp_path / "var"
    staged = inputs.Staged({"init_image": inputs.Decoded("init_image", b"png", "png", 8, 8)})
    old = finished(store, outbox, "old", days_ago=30, size=10)
    kept = finished(store, outbox, "kept", days_ago=1, size=10)
    queued = store.jobs.enqueue(JobSpec(prompt="waiting"), source="cli").job
    for job_id in (old.id, kept.id, queued.id, "f" * 30, "e" * 30):
        inputs.store(data_dir, job_id, staged)
    hour_ago = (NOW - timedelta(minutes=61)).timestamp()
    for job_id in (queued.id, "f" * 30):  # both old; only one has a job
        os.utime(inputs.job_dir(data_dir, job_id), (hour_ago, hour_ago))
    fresh_orphan = inputs.job_dir(data_dir, "e" * 30)  # its job may be committing now
    report = apply_retention(
        store, outbox, days=7, max_storage_gb=0, now=NOW, dry_run=True, data_dir=data_dir
    )
    assert report.orphan_inputs == ["f" * 30] and inputs.job_dir(data_dir, "f" * 30).exists()
    report = apply_retention(store, outbox, days=7, max_storage_gb=0, now=NOW, data_dir=data_dir)
    assert report.deleted == [old.id] and report.orphan_inputs == ["f" * 30]
    left = sorted(p.name for p in (data_dir / "inputs").iterdir())
    assert left == sorted([kept.id, queued.id, fresh_orphan.name])


def test_a_gallery_delete_cut_short_by_a_crash_is_finished_or_undone(
    store: Store, tmp_path: Path
) -> None:
    """The delete moves the file aside, commits, then removes it. A crash before the
    commit leaves the image listed with its file aside: it goes back. A crash after it
    leaves a file nobody lists: it goes. A delete in progress (a fresh move) is left."""
    from alice_spool.library.removal import ASIDE
    from alice_spool.retention import finish_deletions

    outbox = Outbox(tmp_path / "outbox")
    listed = finished(store, outbox, "listed", days_ago=1, size=10)
    forgotten = finished(store, outbox, "forgotten", days_ago=1, size=10)
    image = f"{forgotten.id}-0.png"
    [image_id] = store.gallery.gallery_files([forgotten.id])
    store.gallery.delete_image(image_id, scope=None)  # committed: the job no longer lists it
    for job in (listed, forgotten):
        name = f"{job.id}-0.png"
        (outbox.job_dir(job.id) / name).rename(outbox.job_dir(job.id) / f"{ASIDE}0a1b2c3d-{name}")
    assert finish_deletions(store, outbox) == ([], [])  # just moved: a delete in progress
    restored, removed = finish_deletions(store, outbox, older_than_s=0)
    assert restored == [f"{listed.id}/{listed.id}-0.png"]
    assert removed == [f"{forgotten.id}/{image}"]
    assert (outbox.job_dir(listed.id) / f"{listed.id}-0.png").read_bytes() == b"x" * 10
    assert sorted(p.name for p in outbox.job_dir(forgotten.id).iterdir()) == ["result.json"]
    assert finish_deletions(store, outbox, older_than_s=0) == ([], [])  # nothing left to do


def test_a_cut_short_delete_is_settled_at_once_when_its_process_has_ended(
    store: Store, tmp_path: Path
) -> None:
    """The name a file has aside says which process moved it: one of this host that has
    ended is settled at once, one still running (or of another host, which cannot be
    asked) only after `older_than_s`. A server starting up has deleted nothing yet: a
    file under its own pid is an earlier process's (pids repeat in a container)."""
    import os
    import subprocess

    from alice_spool.library import removal
    from alice_spool.retention import finish_deletions

    outbox = Outbox(tmp_path / "outbox")
    process = subprocess.Popen(["true"])
    process.wait()  # its pid: a process of this host that has ended
    dead_pid = process.pid
    host = removal._host()
    jobs = {
        who: finished(store, outbox, who, days_ago=1, size=10)
        for who in ("ended", "running", "elsewhere")
    }
    deleters = {
        "ended": f"{host}.{dead_pid}",
        "running": f"{host}.{os.getpid()}",
        "elsewhere": f"another-host.{os.getpid()}",
    }
    for who, job in jobs.items():
        name = f"{job.id}-0.png"
        aside = f"{removal.ASIDE}{deleters[who]}.0a1b2c3d-{name}"
        (outbox.job_dir(job.id) / name).rename(outbox.job_dir(job.id) / aside)
    assert removal.image_aside(aside) == (f"{jobs['elsewhere'].id}-0.png", False)
    assert finish_deletions(store, outbox) == ([f"{jobs['ended'].id}/{jobs['ended'].id}-0.png"], [])
    assert finish_deletions(store, outbox, starting=True) == (
        [f"{jobs['running'].id}/{jobs['running'].id}-0.png"],
        [],
    )
    assert finish_deletions(store, outbox, starting=True) == ([], [])  # another host's
    restored, _ = finish_deletions(store, outbox, older_than_s=0)
    assert restored == [f"{jobs['elsewhere'].id}/{jobs['elsewhere'].id}-0.png"]
    for job in jobs.values():
        assert (outbox.job_dir(job.id) / f"{job.id}-0.png").read_bytes() == b"x" * 10
