"""The inbox on real directories with a real watcher thread (watchdog's native inotify
observer, and its polling observer for the same suite), a real migrated database, and
the CLI in a real process for the crash between commit and move."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from alice_spool.faults import CRASH_EXIT_CODE
from alice_spool.inbox import ACCEPTED, REJECTED, Inbox, is_request_name
from alice_spool.library.registry import ModelRegistry
from alice_spool.spec import BUILTIN_DEFAULTS
from alice_spool.states import JobStatus, Source
from alice_spool.store import Store
from tests.support.fake_model import write_fake_model

pytestmark = pytest.mark.both_databases  # SQLite and PostgreSQL (tests/conftest.py)

SETTLE_S = 0.2


@pytest.fixture(params=["native", "polling"])
def observer(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def inbox_dir(tmp_path: Path) -> Path:
    return tmp_path / "inbox"


@pytest.fixture
def make_inbox(
    store: Store, inbox_dir: Path, tmp_path: Path, observer: str
) -> Iterator[Callable[..., Inbox]]:
    made: list[Inbox] = []

    def make(**options: Any) -> Inbox:
        values: dict[str, Any] = {
            "defaults": BUILTIN_DEFAULTS,
            "polling": observer == "polling",
            "settle_s": SETTLE_S,
            "rescan_interval_s": 5.0,
            **options,
        }
        if not (tmp_path / "models").exists():  # the default model every request gets
            write_fake_model(tmp_path / "models" / "base")
        inbox = Inbox(inbox_dir, store, ModelRegistry(tmp_path / "models"), **values)
        made.append(inbox)
        return inbox

    yield make
    for inbox in made:
        inbox.stop()


@pytest.fixture
def watching(make_inbox: Callable[..., Inbox]) -> Inbox:
    inbox = make_inbox()
    inbox.start()
    return inbox


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def drop(directory: Path, name: str, content: str | bytes) -> Path:
    """Write elsewhere (a dot-name), then rename in: how writers should do it."""
    data = content.encode() if isinstance(content, str) else content
    temporary = directory / f".{name}.tmp"
    temporary.write_bytes(data)
    os.rename(temporary, directory / name)
    return directory / name


def request(prompt: str = "a cat", **fields: Any) -> str:
    return json.dumps({"prompt": prompt, **fields})


def jobs(store: Store) -> list:
    return store.jobs.list_jobs(limit=10_000).jobs


def settled(inbox: Inbox, total: int) -> Callable[[], bool]:
    return lambda: inbox.stats.accepted + inbox.stats.rejected + inbox.stats.duplicates >= total


def rejection(inbox_dir: Path, name: str) -> dict[str, Any]:
    return json.loads((inbox_dir / REJECTED / f"{name}.error.json").read_text())


# -- the happy paths -----------------------------------------------------------------------


def test_a_renamed_in_file_becomes_one_job(store: Store, watching: Inbox, inbox_dir: Path) -> None:
    drop(inbox_dir, "cat.json", request("a cat", steps=30, priority=5))
    wait_until(lambda: (inbox_dir / ACCEPTED / "cat.json").exists())
    (job,) = jobs(store)
    assert (job.source, job.client, job.priority) == (Source.INBOX, "cat.json", 5)
    assert job.spec.prompt == "a cat" and job.spec.steps == 30
    assert job.spec.model == job.model == "sd/base"  # the default, named at enqueue
    assert not (inbox_dir / "cat.json").exists()
    assert store.jobs.list_jobs(source=Source.INBOX, client="cat.json").jobs == [job]


def test_a_jsonl_file_is_one_batch(store: Store, watching: Inbox, inbox_dir: Path) -> None:
    lines = [request(f"line {i}", id=f"night-{i}") for i in range(3)]
    drop(inbox_dir, "night.jsonl", "\n".join(lines) + "\n\n")
    wait_until(lambda: (inbox_dir / ACCEPTED / "night.jsonl").exists())
    made = jobs(store)
    assert len(made) == 3 and len({j.batch_id for j in made}) == 1
    assert sorted(j.idempotency_key for j in made) == ["night-0", "night-1", "night-2"]
    assert {j.client for j in made} == {"night.jsonl"}
    assert {j.model for j in made} == {"sd/base"}


def test_requests_name_images_beside_them_and_never_outside(
    store: Store, make_inbox: Callable[..., Inbox], inbox_dir: Path, tmp_path: Path
) -> None:
    from PIL import Image

    data_dir = tmp_path / "var"
    inbox = make_inbox(data_dir=data_dir)
    inbox.start()
    (inbox_dir / "pictures").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (72, 64), (1, 2, 3)).save(inbox_dir / "pictures" / "boat.png")
    Image.new("L", (72, 64), 255).save(inbox_dir / "pictures" / "mask.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "private.png")
    drop(inbox_dir, "boat.json", request("a boat", init_image="pictures/boat.png", strength=0.3))
    lines = [
        request("masked", init_image="pictures/boat.png", mask_image="pictures/mask.png"),
        request("plain"),
    ]
    drop(inbox_dir, "night.jsonl", "\n".join(lines) + "\n")
    drop(inbox_dir, "escape.json", request("x", init_image="../private.png"))
    drop(inbox_dir, "escape.jsonl", request("y", init_image="/etc/hostname") + "\n")
    wait_until(settled(inbox, 4))
    made = {j.spec.prompt: j for j in jobs(store)}
    assert sorted(made) == ["a boat", "masked", "plain"]
    assert made["a boat"].spec.mode == "img2img" and made["a boat"].spec.strength == 0.3
    assert made["masked"].spec.mode == "inpaint" and made["plain"].spec.mode == "txt2img"
    stored = sorted(p.name for p in (data_dir / "inputs").iterdir())
    assert stored == sorted([made["a boat"].id, made["masked"].id])
    for name in ("escape.json", "escape.jsonl"):
        error = rejection(inbox_dir, name)["error"]
        assert "outside the inbox" in error["message"] and error["field"] == "init_image"
    no_images = make_inbox()  # an inbox given no data directory takes no images
    assert no_images.data_dir is None


def test_requests_name_image_urls_fetched_under_the_address_rules(
    store: Store, make_inbox: Callable[..., Inbox], inbox_dir: Path, tmp_path: Path
) -> None:
    """ALICE's input_image_urls in a request file: fetched by an inbox whose rules allow
    private addresses; a loopback URL is refused by the default rules (the file
    rejected, saying forbidden_url); an inbox with no fetcher refuses them by name."""
    import io

    from PIL import Image

    from alice_spool import urls
    from tests.support.remote import Remote, serving

    buffer = io.BytesIO()
    Image.new("RGB", (72, 64), (9, 8, 7)).save(buffer, "PNG")
    with serving(Remote(files={"/boat.png": buffer.getvalue()})) as remote:
        link = [f"{remote.url}/boat.png"]
        fetchers = {
            "fetched": urls.fetcher(allow_private=True, max_bytes=10**6),
            "refused": urls.fetcher(allow_private=False, max_bytes=10**6),
            "unfetched": None,  # an inbox given no fetcher
        }
        for prompt, fetch in fetchers.items():
            inbox = make_inbox(data_dir=tmp_path / "var", fetch=fetch)
            inbox.start()
            drop(inbox_dir, f"{prompt}.json", request(prompt, input_image_urls=link))
            wait_until(settled(inbox, 1))
            inbox.stop()
    (job,) = jobs(store)
    assert job.spec.prompt == "fetched" and job.spec.mode == "img2img"
    stored = tmp_path / "var" / "inputs" / job.id / "init.png"
    assert stored.read_bytes() == buffer.getvalue()
    refused = rejection(inbox_dir, "refused.json")["error"]
    assert refused["code"] == "forbidden_url" and refused["field"] == "input_image_urls"
    unfetched = rejection(inbox_dir, "unfetched.json")["error"]
    assert "not taken here" in unfetched["message"]
    assert len(remote.requests) == 1


def test_a_slow_writer_in_place_is_read_whole(
    store: Store, watching: Inbox, inbox_dir: Path, observer: str
) -> None:
    """Byte by byte into the file itself, pausing longer than the settle time once in
    the middle: exactly one job, with the whole prompt."""
    text = request("written one byte at a time, slowly", steps=12).encode()
    with open(inbox_dir / "slow.json", "wb") as writer:
        for index in range(len(text)):
            writer.write(text[index : index + 1])
            writer.flush()
            time.sleep(0.003)
            if index == len(text) // 2 and observer == "native":
                time.sleep(SETTLE_S * 3)  # a pause; the file is still open
    wait_until(lambda: (inbox_dir / ACCEPTED / "slow.json").exists())
    (job,) = jobs(store)
    assert job.spec.prompt == "written one byte at a time, slowly" and job.spec.steps == 12
    assert not list((inbox_dir / REJECTED).iterdir())


def test_the_same_file_again_is_a_logged_no_op_and_changed_content_is_new(
    store: Store, watching: Inbox, inbox_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="alice_spool.inbox")
    drop(inbox_dir, "again.json", request("once"))
    wait_until(settled(watching, 1))
    drop(inbox_dir, "again.json", request("once"))
    wait_until(settled(watching, 2))
    assert len(jobs(store)) == 1 and watching.stats.duplicates == 1
    assert "again.json was taken before" in caplog.text
    drop(inbox_dir, "again.json", request("twice"))
    wait_until(settled(watching, 3))
    assert sorted(j.spec.prompt for j in jobs(store)) == ["once", "twice"]
    assert len(list((inbox_dir / ACCEPTED).iterdir())) == 3  # kept side by side


def test_an_explicit_id_is_the_idempotency_key(
    store: Store, watching: Inbox, inbox_dir: Path
) -> None:
    drop(inbox_dir, "a.json", request("fox", id="fox-1"))
    drop(inbox_dir, "b.json", request("fox", id="fox-1"))  # same request, another name
    wait_until(settled(watching, 2))
    assert len(jobs(store)) == 1
    drop(inbox_dir, "c.json", request("wolf", id="fox-1"))
    wait_until(settled(watching, 3))
    assert rejection(inbox_dir, "c.json")["error"]["code"] == "idempotency_conflict"
    assert len(jobs(store)) == 1


def test_files_can_be_deleted_once_taken(
    store: Store, make_inbox: Callable[..., Inbox], inbox_dir: Path
) -> None:
    inbox = make_inbox(after_accept="delete")
    inbox.start()
    drop(inbox_dir, "gone.json", request())
    wait_until(settled(inbox, 1))
    assert not (inbox_dir / "gone.json").exists() and not list((inbox_dir / ACCEPTED).iterdir())
    assert len(jobs(store)) == 1


def test_other_names_are_left_alone(store: Store, watching: Inbox, inbox_dir: Path) -> None:
    names = [".hidden.json", "x.json.tmp", "x.json.part", ".x.json.swp", "x.json~", "notes.txt"]
    for name in names:
        (inbox_dir / name).write_text(request())
    drop(inbox_dir, "real.json", request())
    wait_until(settled(watching, 1))
    time.sleep(SETTLE_S * 2)
    assert len(jobs(store)) == 1
    assert sorted(p.name for p in inbox_dir.iterdir()) == sorted([*names, ACCEPTED, REJECTED])
    assert not is_request_name(".json") and is_request_name("a.b.jsonl")


# -- bad input --------------------------------------------------------------------------------


def test_every_bad_file_is_rejected_with_its_reason(
    store: Store, watching: Inbox, inbox_dir: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "secret.json"
    outside.write_text(request("not yours"))
    drop(inbox_dir, "syntax.json", '{"prompt": "unclosed"')
    drop(inbox_dir, "invalid.json", request("x", steps=0))
    drop(inbox_dir, "unknown.json", request("x", stpes=3))
    drop(inbox_dir, "latin1.json", '{"prompt": "caf\xe9"}'.encode("latin-1"))
    drop(inbox_dir, "huge.json", request("x" * 100) + " " * 2_000_000)
    drop(inbox_dir, "model.json", request("x", model="sd/not-installed"))
    drop(inbox_dir, "array.json", "[1, 2]")
    drop(inbox_dir, "batch.jsonl", "\n".join([request("fine"), request("fine too"), "{oops"]))
    (inbox_dir / "folder.json").mkdir()
    (inbox_dir / "link.json").symlink_to(outside)
    wait_until(settled(watching, 10), timeout=30)
    drop(inbox_dir, "real.json", request("the real one"))
    (inbox_dir / "alias.json").symlink_to(inbox_dir / "real.json")
    wait_until(settled(watching, 12), timeout=30)
    assert [j.spec.prompt for j in jobs(store)] == ["the real one"]  # once, not twice
    assert "a request file of its own" in rejection(inbox_dir, "alias.json")["error"]["message"]
    bare_store_jobs = [j for j in jobs(store) if j.client != "real.json"]

    assert bare_store_jobs == []  # nothing queued for any of them, not even the good lines
    reasons = {
        name: rejection(inbox_dir, name)["error"]
        for name in (
            "syntax.json", "invalid.json", "unknown.json", "latin1.json", "huge.json",
            "model.json", "array.json", "batch.jsonl", "folder.json", "link.json",
        )
    }  # fmt: skip
    assert "invalid JSON" in reasons["syntax.json"]["message"]
    assert reasons["invalid.json"]["field"] == "steps"
    assert reasons["invalid.json"]["message"].startswith("invalid.json: steps must be")
    assert "did you mean 'steps'" in reasons["unknown.json"]["message"]
    assert "not UTF-8" in reasons["latin1.json"]["message"]
    assert "inbox.max_file_bytes" in reasons["huge.json"]["message"]
    assert reasons["model.json"]["code"] == "model_not_found"
    assert reasons["array.json"]["message"] == (
        "array.json: a request must be a JSON object, got a list"
    )
    assert reasons["batch.jsonl"]["line"] == 3 and "line 3" in reasons["batch.jsonl"]["message"]
    assert "directory" in reasons["folder.json"]["message"]
    assert "outside the inbox" in reasons["link.json"]["message"]
    for name, error in reasons.items():
        assert error["code"] in ("invalid_parameters", "model_not_found"), name
        assert (inbox_dir / REJECTED / name).exists() or (inbox_dir / REJECTED / name).is_symlink()
    assert outside.read_text() == request("not yours")  # the link's target is untouched
    assert sorted(p.name for p in inbox_dir.iterdir()) == [ACCEPTED, REJECTED]


def test_no_bad_file_holds_back_another(
    store: Store, inbox_dir: Path, tmp_path: Path, observer: str
) -> None:
    """Each of these once jammed the inbox (never taken nor rejected, retried forever,
    the files after it waiting). Now each costs one rejection with its reason, or is
    taken, and the good files dropped among them are taken."""
    small = Store(store.db, max_queue=5, max_attempts=3)  # a batch of 6 can never fit
    write_fake_model(tmp_path / "models" / "base")
    inbox = Inbox(
        inbox_dir,
        small,
        ModelRegistry(tmp_path / "models"),
        defaults=BUILTIN_DEFAULTS,
        polling=observer == "polling",
        settle_s=SETTLE_S,
        max_file_bytes=12_000,
    )
    inbox_dir.mkdir()
    long_name = "L" * 240 + ".json"  # 245 bytes: with a time stamp, over 255
    drop(inbox_dir, long_name, request("long name"))
    with open(os.fsencode(inbox_dir) + b"/bad\xff.json", "wb") as handle:  # not UTF-8
        handle.write(request("bad name").encode())
    digits = "9" * 5000  # more digits than Python turns into an int
    drop(inbox_dir, "digits.json", '{"prompt": "x", "seed": ' + digits + "}")
    drop(inbox_dir, "digits.jsonl", request("fine") + '\n{"prompt": "y", "steps": ' + digits + "}")
    drop(inbox_dir, "six.jsonl", "\n".join(request(f"line {i}") for i in range(6)))
    (inbox_dir / ("R" * 250 + ".json")).write_text("{not json")  # +.error.json: 266 bytes
    (inbox_dir / "data.txt").write_text(request("through a link"))
    (inbox_dir / "linked.json").symlink_to(inbox_dir / "data.txt")
    (inbox_dir / "big.txt").write_text(request("x" * 13_000))
    (inbox_dir / "big-link.json").symlink_to(inbox_dir / "big.txt")
    drop(inbox_dir, "good-1.json", request("good one"))
    inbox.start()
    try:
        wait_until(settled(inbox, 9), timeout=30)
        drop(inbox_dir, long_name, request("long name"))  # again: the same file, taken before
        drop(inbox_dir, "good-2.json", request("good two"))
        wait_until(settled(inbox, 11), timeout=30)
        wait_until(lambda: not inbox._pending, timeout=10)
    finally:
        inbox.stop()

    prompts = sorted(j.spec.prompt for j in jobs(small))
    assert prompts == ["good one", "good two", "long name", "through a link"]
    assert (inbox.stats.accepted, inbox.stats.duplicates, inbox.stats.rejected) == (4, 1, 6)
    assert sorted(os.listdir(inbox_dir)) == sorted([ACCEPTED, REJECTED, "big.txt", "data.txt"])
    accepted = os.listdir(inbox_dir / ACCEPTED)
    assert sum(name.startswith("L" * 200) for name in accepted) == 2  # both moved out
    rejected = os.listdir(os.fsencode(inbox_dir / REJECTED))
    assert all(len(name) <= 255 for name in [*accepted, *rejected])
    assert b"bad\xff.json" in rejected and b"bad\xff.json.error.json" in rejected
    assert len([n for n in rejected if n.startswith(b"RRR")]) == 2  # the file and its reason

    def reason(name: str) -> str:
        return rejection(inbox_dir, name)["error"]["message"]

    assert (
        "not valid UTF-8"
        in json.loads((inbox_dir / REJECTED / os.fsdecode(b"bad\xff.json.error.json")).read_text())[
            "error"
        ]["message"]
    )
    assert "more than 4300 digits" in reason("digits.json")
    assert "digits.jsonl line 2" in reason("digits.jsonl")
    six = rejection(inbox_dir, "six.jsonl")["error"]
    assert six["code"] == "batch_too_large" and "generation.max_queue" in six["message"]
    assert "inbox.max_file_bytes" in reason("big-link.json")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
def test_the_inotify_move_wait_is_shortened_on_this_watchdog() -> None:
    """inbox.py sets a watchdog class attribute that is not public API: the pinned
    watchdog must have it (a newer one that lacks it fails here, not silently)."""
    from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper

    from alice_spool.inbox.watcher import MOVE_PAIRING_S, _shorten_inotify_move_wait

    assert _shorten_inotify_move_wait() is True
    assert InotifyMoveEventGrouper.delay == MOVE_PAIRING_S


# -- many files, restarts, crashes -------------------------------------------------------------


@pytest.mark.slow
def test_a_burst_of_5000_files(store: Store, watching: Inbox, inbox_dir: Path) -> None:
    """Half renamed in, half written in place, from two threads at once."""

    def renamed() -> None:
        for i in range(2500):
            drop(inbox_dir, f"renamed-{i}.json", request(f"renamed {i}"))

    def in_place() -> None:
        for i in range(2500):
            (inbox_dir / f"inplace-{i}.json").write_text(request(f"in place {i}"))

    writers = [threading.Thread(target=renamed), threading.Thread(target=in_place)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    wait_until(settled(watching, 5000), timeout=120)
    made = jobs(store)
    assert len(made) == 5000
    assert len({j.client for j in made}) == 5000  # every file once, none twice
    assert len(list((inbox_dir / ACCEPTED).iterdir())) == 5000
    assert watching.stats.rejected == 0 and watching.stats.duplicates == 0


@pytest.mark.slow
def test_files_dropped_while_stopped_and_during_start_are_each_taken_once(
    store: Store, make_inbox: Callable[..., Inbox], inbox_dir: Path
) -> None:
    first = make_inbox()
    first.start()
    first.stop()
    for i in range(500):
        drop(inbox_dir, f"while-down-{i}.json", request(f"down {i}"))

    def keep_dropping() -> None:
        for i in range(200):
            drop(inbox_dir, f"during-{i}.json", request(f"during {i}"))
            time.sleep(0.001)

    writer = threading.Thread(target=keep_dropping)
    writer.start()
    second = make_inbox()
    second.start()
    writer.join()
    wait_until(lambda: len(jobs(store)) >= 700, timeout=60)
    wait_until(lambda: not second._pending)
    made = jobs(store)
    assert len(made) == 700 and len({j.client for j in made}) == 700
    assert sorted(p.name for p in inbox_dir.iterdir()) == [ACCEPTED, REJECTED]


def test_a_crash_between_commit_and_move_does_not_queue_twice(
    store: Store, inbox_dir: Path, tmp_path: Path, db_url: str
) -> None:
    inbox_dir.mkdir()
    write_fake_model(tmp_path / "models" / "base")
    drop(inbox_dir, "once.json", request("only once"))
    drop(inbox_dir, "batch.jsonl", request("a") + "\n" + request("b"))
    env = {
        **os.environ,
        "ALICE_PATHS_DATA_DIR": str(tmp_path),
        "ALICE_PATHS_DATABASE_URL": db_url,
        "ALICE_PATHS_INBOX": str(inbox_dir),
        "ALICE_INBOX_SETTLE_S": str(SETTLE_S),
    }
    command = [sys.executable, "-m", "alice_spool", "watch", "--once", "--json"]
    crashed = subprocess.run(
        [*command[:3], "--crash-at", "inbox_committed", *command[3:]], env=env, capture_output=True
    )
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr.decode()
    # the first file's jobs (one, or the batch's two) are committed; no file was moved
    assert len(jobs(store)) in (1, 2)
    assert sorted(p.name for p in inbox_dir.iterdir() if p.is_file()) == [
        "batch.jsonl",
        "once.json",
    ]
    again = subprocess.run(command, env=env, capture_output=True, check=True)
    summary = json.loads(again.stdout)
    assert (summary["accepted"], summary["duplicates"]) == (1, 1)
    made = jobs(store)
    assert sorted(j.spec.prompt for j in made) == ["a", "b", "only once"]
    assert sorted(p.name for p in (inbox_dir / ACCEPTED).iterdir()) == ["batch.jsonl", "once.json"]
    assert all(j.status is JobStatus.QUEUED for j in made)


# -- the watcher looks after itself -------------------------------------------------------------


def test_a_dead_observer_is_restarted(store: Store, watching: Inbox, inbox_dir: Path) -> None:
    assert watching.health()["observer_alive"]
    watching._observer.stop()  # its thread ends, as if it had died
    watching._observer.join(5)
    wait_until(lambda: watching.stats.observer_restarts == 1)
    assert watching.health()["observer_alive"]
    drop(inbox_dir, "after.json", request())
    wait_until(settled(watching, 1))
    assert len(jobs(store)) == 1


def test_the_rescan_takes_what_no_event_announced(
    store: Store, make_inbox: Callable[..., Inbox], inbox_dir: Path
) -> None:
    inbox = make_inbox(rescan_interval_s=0.3)
    inbox.start()
    inbox._observer.unschedule_all()  # events are lost from now on
    drop(inbox_dir, "unannounced.json", request())
    wait_until(settled(inbox, 1), timeout=10)
    assert len(jobs(store)) == 1
    health = inbox.health()
    assert health["accepted"] == 1 and health["last_scan_at"] is not None
