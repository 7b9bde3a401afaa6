"""URL downloads through the download worker (downloads/), against a real HTTP server on
127.0.0.1 that serves real files: installed where they belong, resumed with Range after
a dropped connection or a worker that died, restarted when the server ignores Range, and
every bad file refused with its code, leaving nothing in the models directory."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from alice_spool.downloads import files
from alice_spool.downloads.sources import SourceSettings
from alice_spool.downloads.transfer import fetch_to_file
from alice_spool.downloads.worker import PART, DownloadWorker, WorkerOptions, staged
from alice_spool.engine.tiny import create_tiny_lora
from alice_spool.errors import DownloadFailed
from alice_spool.library.loras import LoraRegistry
from alice_spool.states import DownloadStatus
from alice_spool.store import Store
from alice_spool.urls import UrlRules
from tests.support.remote import Remote, serving


@pytest.fixture(scope="module")
def lora_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return create_tiny_lora(tmp_path_factory.mktemp("made")).read_bytes()


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 3 MiB safetensors file with a checkpoint's (not a LoRA's) tensor names."""
    path = tmp_path_factory.mktemp("made") / "checkpoint.safetensors"
    rng = np.random.default_rng(5)
    weights = rng.standard_normal(3 * 1024 * 256).astype(np.float32)
    save_file({"model.diffusion_model.input_blocks.0.0.weight": weights}, str(path))
    return path.read_bytes()


@pytest.fixture
def remote(lora_bytes: bytes, checkpoint_bytes: bytes) -> Iterator[Remote]:
    served = Remote(
        files={
            "/style.safetensors": lora_bytes,
            "/base.safetensors": checkpoint_bytes,
            "/named": lora_bytes,
            "/page.safetensors": b"<!DOCTYPE html><html>Log in to download</html>",
            "/pickled.ckpt": b"\x80\x04\x95 not weights, a pickle",
        },
        headers={
            "/named": {"Content-Disposition": 'attachment; filename="../../escape.safetensors"'}
        },
        statuses={"/private.safetensors": 401},
    )
    with serving(served) as running:
        yield running


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return tmp_path / "models"


def worker(
    store: Store, models: Path, *, sources: SourceSettings | None = None, **options: object
) -> DownloadWorker:
    values = {"owner": "host/1", "progress_every_s": 0.0, **options}
    sources = sources or SourceSettings(allow_private_urls=True)
    return DownloadWorker(store, models, WorkerOptions(**values), sources, sleep=lambda s: None)  # type: ignore[arg-type]


def queue(store: Store, remote: Remote, path: str, **fields: object):
    reference = {"url": remote.url + path, **fields.pop("reference", {})}  # type: ignore[dict-item]
    return store.downloads.queue_download("url", reference, **fields)  # type: ignore[arg-type]


def leftovers(models: Path) -> list[str]:
    staging = models / files.STAGING_DIR
    return sorted(p.name for p in staging.iterdir()) if staging.exists() else []


def test_a_lora_by_url_is_verified_and_installed_where_the_registry_sees_it(
    store: Store, remote: Remote, models: Path, lora_bytes: bytes
) -> None:
    sha = hashlib.sha256(lora_bytes).hexdigest()
    made = queue(store, remote, "/style.safetensors", reference={"sha256": sha.upper()})
    done = worker(store, models).run_once()
    assert done is not None and done.id == made.id
    shown = done.to_dict()
    assert (shown["status"], shown["model"], shown["error"]) == ("succeeded", "lora/style", None)
    assert (done.bytes_done, done.bytes_total) == (len(lora_bytes), len(lora_bytes))
    assert (models / "loras" / "style.safetensors").read_bytes() == lora_bytes
    assert LoraRegistry(models).get("style").family == "sd1"
    assert leftovers(models) == []
    assert worker(store, models).run_once() is None  # nothing else queued


def test_a_checkpoint_is_named_as_asked_and_a_disposition_cannot_lead_outside(
    store: Store, remote: Remote, models: Path, checkpoint_bytes: bytes, lora_bytes: bytes
) -> None:
    queue(store, remote, "/base.safetensors", name="my-base")
    queue(store, remote, "/named")  # Content-Disposition: ../../escape.safetensors
    run = worker(store, models)
    first, second = run.run_once(), run.run_once()
    assert (first.model, second.model) == ("sd/my-base", "lora/escape")
    assert (models / "my-base.safetensors").read_bytes() == checkpoint_bytes
    assert (models / "loras" / "escape.safetensors").read_bytes() == lora_bytes
    assert not (models.parent / "escape.safetensors").exists()
    assert files.safe_name("../../x y?.safetensors") == "x_y_.safetensors"
    assert files.safe_name("..") == "model" and files.safe_name("a\\..\\.hidden") == "hidden"


def test_a_dropped_connection_resumes_with_range(
    store: Store, remote: Remote, models: Path, checkpoint_bytes: bytes
) -> None:
    remote.drop_after["/base.safetensors"] = 1_500_000
    done = worker(store, models).run_once() if queue(store, remote, "/base.safetensors") else None
    assert done is not None and done.status is DownloadStatus.SUCCEEDED, done
    first, resumed = remote.ranges
    start = int(resumed.removeprefix("bytes=").removesuffix("-"))
    assert first is None and 1_000_000 < start <= 1_500_000  # the done bytes not again
    assert (models / "base.safetensors").read_bytes() == checkpoint_bytes


def test_a_server_that_ignores_range_restarts_the_file(
    store: Store, remote: Remote, models: Path, checkpoint_bytes: bytes
) -> None:
    remote.honour_ranges = False
    remote.drop_after["/base.safetensors"] = 1_500_000
    queue(store, remote, "/base.safetensors")
    done = worker(store, models).run_once()
    assert done is not None and done.status is DownloadStatus.SUCCEEDED
    assert remote.ranges[0] is None and remote.ranges[1] is not None  # asked; got a 200
    assert (models / "base.safetensors").read_bytes() == checkpoint_bytes


def test_a_worker_that_died_mid_file_is_resumed_by_the_next_without_the_done_bytes(
    store: Store, remote: Remote, models: Path, checkpoint_bytes: bytes
) -> None:
    made = queue(store, remote, "/base.safetensors")
    held = store.downloads.claim_download("host/1", lease_s=60)
    part, validator, _ = staged(files.staging_dir(models, made.id), PART)

    class Died(Exception):
        pass

    def die_after_the_first_chunk(done: int, total: int | None) -> bool:
        raise Died  # as a SIGKILL would leave it: the bytes so far on disk, the row held

    with pytest.raises(Died):
        fetch_to_file(remote.url + "/base.safetensors", part, UrlRules(allow_private=True),
                      on_progress=die_after_the_first_chunk, validator_file=validator)  # fmt: skip
    kept = part.stat().st_size
    assert 0 < kept < len(checkpoint_bytes) and held.status is DownloadStatus.DOWNLOADING
    again = worker(store, models)  # the same host and process name, started again
    assert again.start() == [made.id]
    done = again.run_once()
    assert done is not None and done.status is DownloadStatus.SUCCEEDED and done.attempts == 2
    assert remote.ranges == [None, f"bytes={kept}-"]
    assert (models / "base.safetensors").read_bytes() == checkpoint_bytes
    assert leftovers(models) == []


@pytest.mark.parametrize(
    ("path", "fields", "code", "message"),
    [
        ("/style.safetensors", {"reference": {"sha256": "0" * 64}}, "download_failed", "SHA-256"),
        ("/page.safetensors", {}, "download_failed", "web page"),
        ("/pickled.ckpt", {}, "unsafe_format", "models.allow_pickle"),
        ("/private.safetensors", {}, "unauthorized", "answered 401"),
        ("/gone.safetensors", {}, "download_failed", "answered 404"),
        ("/base.safetensors", {"kind": "diffusers"}, "download_failed", "folder"),
    ],
)
def test_every_bad_download_fails_with_its_code_and_installs_nothing(
    store: Store, remote: Remote, models: Path, path: str, fields: dict, code: str, message: str
) -> None:
    queue(store, remote, path, **fields)
    failed = worker(store, models).run_once()
    assert failed is not None and failed.status is DownloadStatus.FAILED
    assert failed.error_code == code and message in failed.error_message, failed.error_message
    installed = [p for p in models.rglob("*") if p.is_file()] if models.exists() else []
    assert installed == [] and leftovers(models) == []


def test_loopback_is_refused_by_default_and_an_existing_model_is_never_overwritten(
    store: Store, remote: Remote, models: Path, lora_bytes: bytes
) -> None:
    queue(store, remote, "/style.safetensors")
    refused = worker(store, models, sources=SourceSettings()).run_once()
    assert refused.error_code == "forbidden_url" and remote.requests == []
    (models / "loras").mkdir(parents=True)
    (models / "loras" / "style.safetensors").write_bytes(b"the one already there")
    queue(store, remote, "/style.safetensors")
    exists = worker(store, models).run_once()
    assert exists.error_code == "model_exists"
    assert (models / "loras" / "style.safetensors").read_bytes() == b"the one already there"
    assert leftovers(models) == []


def test_a_download_installed_by_an_attempt_that_died_before_its_row_said_so_succeeds(
    store: Store, remote: Remote, models: Path, lora_bytes: bytes
) -> None:
    """The same bytes already in place (an earlier attempt linked them in, then died):
    the download succeeds with that model instead of failing model_exists."""
    (models / "loras").mkdir(parents=True)
    (models / "loras" / "style.safetensors").write_bytes(lora_bytes)
    queue(store, remote, "/style.safetensors")
    done = worker(store, models).run_once()
    assert done.status is DownloadStatus.SUCCEEDED and done.model == "lora/style"
    assert (models / "loras" / "style.safetensors").read_bytes() == lora_bytes
    assert leftovers(models) == []


def test_a_stopping_worker_hands_its_download_back_with_its_bytes(
    store: Store, remote: Remote, models: Path, checkpoint_bytes: bytes
) -> None:
    """serve stopping mid-download: the download goes back in the queue at the next
    progress report, its bytes kept, and the next run resumes from them."""
    import threading

    made = queue(store, remote, "/base.safetensors")
    stopping = worker(store, models)
    stopping._stop = threading.Event()
    stopping._stop.set()  # as WorkerPool.stop sets it while the transfer runs
    held = store.downloads.claim_download("host/1", lease_s=60)
    back = stopping.run_download(held)
    assert (back.status, back.lease_owner) == (DownloadStatus.QUEUED, None)
    kept = (files.staging_dir(models, made.id) / PART).stat().st_size
    assert 0 < kept < len(checkpoint_bytes)
    done = worker(store, models).run_once()
    assert done.status is DownloadStatus.SUCCEEDED and remote.ranges == [None, f"bytes={kept}-"]
    assert (models / "base.safetensors").read_bytes() == checkpoint_bytes


def test_a_starting_worker_removes_the_files_of_downloads_that_ended(
    store: Store, remote: Remote, models: Path
) -> None:
    waiting = queue(store, remote, "/a")
    gone = queue(store, remote, "/b")
    store.downloads.cancel_download(gone.id)  # cancelled while no worker ran
    for name in (waiting.id, gone.id, "0" * 30):  # the last: no row at all
        (files.staging_dir(models, name) / PART).parent.mkdir(parents=True)
        (files.staging_dir(models, name) / PART).write_bytes(b"partial")
    worker(store, models).start()
    assert leftovers(models) == [waiting.id]


def test_a_diffusers_kind_is_refused_before_anything_is_fetched(
    store: Store, remote: Remote, models: Path
) -> None:
    queue(store, remote, "/base.safetensors", kind="diffusers")
    failed = worker(store, models).run_once()
    assert failed.error_code == "download_failed" and remote.requests == []


def test_a_cancel_stops_the_download_and_removes_its_files(
    store: Store, remote: Remote, models: Path
) -> None:
    made = queue(store, remote, "/base.safetensors")
    held = store.downloads.claim_download("host/1", lease_s=60)
    store.downloads.cancel_download(
        made.id
    )  # asked while it runs: the worker sees it at its report
    ended = worker(store, models).run_download(held)
    assert ended.status is DownloadStatus.CANCELLED
    assert leftovers(models) == [] and not (models / "base.safetensors").exists()


def test_too_little_room_is_refused_before_writing(tmp_path: Path) -> None:
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    files.check_room(tmp_path, 1024)  # fine
    with pytest.raises(Exception, match="bytes free") as info:
        files.check_room(tmp_path, free)  # the headroom of 1 GiB no longer fits
    assert info.value.code == "insufficient_storage"


def test_worker_names_are_stable_per_host_and_never_shared_by_two_processes(
    tmp_path: Path,
) -> None:
    from alice_spool.downloads.worker import take_names

    first, held = take_names(tmp_path, "host", 2)
    assert first == ["host:download-0", "host:download-1"]
    second, more = take_names(tmp_path, "host", 2)  # another pool while the first runs
    assert second == ["host:download-2", "host:download-3"]
    for fd in held:
        os.close(fd)  # the first stops (or dies): its names are free again, as they were
    again, rest = take_names(tmp_path, "host", 1)
    assert again == ["host:download-0"]
    for fd in more + rest:
        os.close(fd)


def test_a_torn_verified_mark_means_the_file_is_fetched_again(
    store: Store, remote: Remote, models: Path, checkpoint_bytes: bytes
) -> None:
    made = queue(store, remote, "/base.safetensors")
    part, _, verified = staged(files.staging_dir(models, made.id), PART)
    part.parent.mkdir(parents=True)
    part.write_bytes(checkpoint_bytes[:1000])
    verified.parent.mkdir(parents=True)
    verified.write_text('{"name": "base.safet')  # cut off mid-write by a crash
    done = worker(store, models).run_once()
    assert done is not None and done.status is DownloadStatus.SUCCEEDED, done.error_message
    assert (models / "base.safetensors").read_bytes() == checkpoint_bytes


def safetensors(tensors: dict[str, dict[str, object]], data: bytes) -> bytes:
    header = json.dumps(tensors).encode()
    return struct.pack("<Q", len(header)) + header + data


def test_a_truncated_safetensors_file_is_refused_and_installs_nothing(
    store: Store, remote: Remote, models: Path
) -> None:
    """110 bytes whose header declares 90 MiB of tensor data: a valid header, so only
    comparing the declared data with the file's own finds it."""
    head = safetensors(
        {"w": {"dtype": "F32", "shape": [23592960], "data_offsets": [0, 90 << 20]}}, b""
    )
    remote.files["/cut.safetensors"] = head + b"\0" * (110 - len(head))
    assert len(remote.files["/cut.safetensors"]) == 110
    queue(store, remote, "/cut.safetensors", kind="checkpoint")
    failed = worker(store, models).run_once()
    assert (failed.status, failed.error_code) == (DownloadStatus.FAILED, "download_failed")
    assert "declares 94371840 bytes of tensor data" in failed.error_message
    installed = [p for p in models.rglob("*") if p.is_file()] if models.exists() else []
    assert installed == [] and leftovers(models) == []


F32_2x2 = {"dtype": "F32", "shape": [2, 2]}  # 16 bytes


@pytest.mark.parametrize(
    ("tensors", "data", "words"),
    [
        ({"a": {**F32_2x2, "data_offsets": [0, 16]}}, b"\0" * 8, "declares 16 bytes"),
        ({"a": {**F32_2x2, "data_offsets": [0, 16]}}, b"\0" * 20, "declares 16 bytes"),
        ({"a": {**F32_2x2, "data_offsets": [-16, 0]}}, b"\0" * 16, "no valid data_offsets"),
        ({"a": {**F32_2x2, "data_offsets": [16, 0]}}, b"\0" * 16, "no valid data_offsets"),
        ({"a": {**F32_2x2, "data_offsets": [0, 12]}}, b"\0" * 12, "needs 16 bytes"),
        (
            {"a": {**F32_2x2, "shape": [-2, 2], "data_offsets": [0, 16]}},
            b"\0" * 16,
            "no valid shape",
        ),
        (
            {"a": {**F32_2x2, "data_offsets": [0, 16]}, "b": {**F32_2x2, "data_offsets": [8, 24]}},
            b"\0" * 24,
            "overlaps",
        ),
        (
            {"a": {**F32_2x2, "data_offsets": [0, 16]}, "b": {**F32_2x2, "data_offsets": [20, 36]}},
            b"\0" * 36,
            "gap",
        ),
        ({"a": {**F32_2x2, "data_offsets": [0, 16]}, "b": [1]}, b"\0" * 16, "not described"),
    ],
    ids=["short", "data-beyond", "negative", "reversed", "too-few", "bad-shape", "overlap", "gap",
         "not-an-object"],
)  # fmt: skip
def test_safetensors_data_that_does_not_match_its_header_is_refused(
    tmp_path: Path, tensors: dict[str, dict[str, object]], data: bytes, words: str
) -> None:
    path = tmp_path / "file.part"
    path.write_bytes(safetensors(tensors, data))
    with pytest.raises(DownloadFailed, match=words):
        files.check_weights(path, allow_pickle=False)
    good = {
        "__metadata__": {"format": "pt"},
        "a": {**F32_2x2, "data_offsets": [16, 32]},
        "b": {"dtype": "BF16", "shape": [0], "data_offsets": [32, 32]},
        "c": {"dtype": "U8", "shape": [16], "data_offsets": [0, 16]},
    }
    path.write_bytes(safetensors(good, b"\1" * 32))
    assert files.check_weights(path, allow_pickle=False) == "safetensors"


def smoke_test_model(models: Path) -> None:
    """A model like `models create-tiny`'s (marked in its index as random weights)."""
    from alice_spool.library.registry import TINY_MARKER
    from tests.support.fake_model import write_fake_model

    folder = models / "tiny"
    folder.mkdir(parents=True)
    write_fake_model(folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, TINY_MARKER: "noise"}))


def test_only_an_admins_real_model_takes_the_smoke_test_models_place_as_default(
    store: Store, remote: Remote, models: Path
) -> None:
    from alice_spool.library.registry import ModelRegistry

    made = models.parent / "real.safetensors"
    weights = np.zeros(1024, dtype=np.float32)
    names = ("model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.transformer.x")
    save_file({name: weights for name in names}, str(made))
    remote.files["/base.safetensors"] = made.read_bytes()  # an SD 1.x checkpoint
    smoke_test_model(models)
    assert ModelRegistry(models).default().id == "sd/tiny"  # worked out, and so pinned
    store.keys.add_key("someone", role="user")
    user = store.keys.get_key("someone")
    store.keys.add_key("boss", role="admin")
    boss = store.keys.get_key("boss")
    # A user's download leaves the default where it is, smoke-test model or not.
    queue(store, remote, "/base.safetensors", name="users-model", owner=user.id)
    assert worker(store, models).run_once().model == "sd/users-model"
    assert ModelRegistry(models).default().id == "sd/tiny"
    # An admin's first real model takes the smoke-test model's place...
    queue(store, remote, "/base.safetensors", name="admins-model", owner=boss.id)
    assert worker(store, models).run_once().model == "sd/admins-model"
    assert ModelRegistry(models).default().id == "sd/admins-model"
    # ...and once a real model is the default, no download moves it, an admin's neither.
    queue(store, remote, "/base.safetensors", name="aaa-model")  # the CLI's: the admin's
    assert worker(store, models).run_once().model == "sd/aaa-model"
    assert ModelRegistry(models).default().id == "sd/admins-model"
