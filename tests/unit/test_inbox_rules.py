"""The inbox's rules for files, without files: names, when a file is read, how long an
invalid .json is waited for, and names that fit the file system."""

from __future__ import annotations

import os

import pytest

from alice_spool.inbox.files import (
    NAME_MAX,
    Seen,
    fit_name,
    is_request_name,
    settled,
    still_writing,
    worth_reading,
)

SETTLE = 0.5


def seen(
    complete: bool = False, written: bool = False, changed: float = 0.0, modified: float = 0.0
):
    return Seen(complete, written, changed_ago_s=changed, modified_ago_s=modified)


@pytest.mark.parametrize(
    ("name", "is_request"),
    [
        ("cat.json", True),
        ("night.jsonl", True),
        (".cat.json", False),
        ("cat.json.tmp", False),
        ("cat.json.part", False),
        ("#cat.json#", False),
        ("~cat.json", False),
        (".json", False),
        ("cat.txt", False),
    ],
)
def test_request_names(name: str, is_request: bool) -> None:
    assert is_request_name(name) is is_request


def test_a_file_settles_after_settle_s_or_ten_times_that_while_written_in_place() -> None:
    assert not settled(seen(changed=0.4, modified=0.4), SETTLE)
    assert settled(seen(changed=0.5, modified=0.1), SETTLE)  # unchanged that long here
    assert settled(seen(changed=0.1, modified=0.6), SETTLE)  # or old by its own time
    assert not settled(seen(written=True, changed=4.9, modified=4.9), SETTLE)
    assert settled(seen(written=True, changed=5.0, modified=0.0), SETTLE)


def test_what_is_read_at_once() -> None:
    fresh = seen(changed=0.0, modified=0.0)
    assert not worth_reading(fresh, SETTLE, "night.jsonl")  # a .jsonl waits to settle
    assert worth_reading(fresh, SETTLE, "cat.json")  # its text says if it is whole
    assert worth_reading(seen(complete=True), SETTLE, "night.jsonl")  # renamed in
    assert worth_reading(seen(changed=1.0, modified=1.0), SETTLE, "night.jsonl")


def test_an_invalid_json_is_waited_for_ten_settle_times_unless_complete() -> None:
    assert still_writing(seen(changed=4.0, modified=4.0), SETTLE)
    assert not still_writing(seen(changed=5.0, modified=1.0), SETTLE)
    assert not still_writing(seen(changed=1.0, modified=5.0), SETTLE)
    assert not still_writing(seen(complete=True), SETTLE)  # renamed in whole: it is bad


def test_names_are_shortened_to_fit_keeping_extension_tag_and_ending() -> None:
    long = "é" * 200 + ".jsonl"  # 406 bytes
    fitted = fit_name(long, ".20261201T000000Z", ".error.json")
    assert len(os.fsencode(fitted)) <= NAME_MAX
    assert fitted.endswith(".20261201T000000Z.jsonl.error.json") and fitted.startswith("é")
    assert fit_name("short.json") == "short.json"
    reserved = fit_name("x" * 250 + ".json", reserve=11)
    assert len(reserved) == NAME_MAX - 11 and reserved.endswith(".json")
    assert fit_name("\udcff" * 300 + ".json").endswith(".json")  # undecodable bytes count 1 each
