"""The outbox on real files: a job's directory appears whole (result.json last), PNGs
carry their parameters as other SD tools read them, nothing is written twice, and a
writer that died leaves nothing a reader could mistake for a result."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from alice_spool import outbox as outbox_module
from alice_spool import samplers
from alice_spool.errors import OutboxWriteFailed
from alice_spool.outbox import RESULT, Outbox, image_name, infotext
from alice_spool.spec import SCHEDULERS, parse_spec


def images(count: int) -> list[Image.Image]:
    return [Image.new("RGB", (64, 48), (40 * i, 120, 200)) for i in range(count)]


def test_infotext_is_the_automatic1111_form() -> None:
    spec = parse_spec(
        {"prompt": "a red fox", "negative_prompt": "blurry", "model": "v1-5", "steps": 30,
         "guidance_scale": 7, "scheduler": "dpm++_2m_karras"}
    )  # fmt: skip
    assert infotext(spec, 1234, 512, 768) == (
        "a red fox\n"
        "Negative prompt: blurry\n"
        "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, "
        "Size: 512x768, Model: v1-5"
    )
    plain = infotext(parse_spec({"prompt": "x", "guidance_scale": 7.5}), 1, 64, 64)
    assert "Negative prompt" not in plain and "CFG scale: 7.5" in plain
    # A sampler alone names no schedule type: A1111 leaves the line out then.
    euler_a = parse_spec({"prompt": "x", "scheduler": "euler_a"})
    assert "Sampler: Euler a, CFG scale" in infotext(euler_a, 1, 64, 64)
    for name in SCHEDULERS:  # every name has its A1111 sampler, and its schedule if any
        text = infotext(parse_spec({"prompt": "x", "scheduler": name}), 1, 64, 64)
        has_schedule = samplers.parse(name)[1] is not None
        assert "Sampler: " in text and ("Schedule type: " in text) == has_schedule


def test_a_job_directory_appears_whole(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    result = {"job_id": "abc", "status": "succeeded", "images": []}
    written = outbox.write("abc", result, images(2), ["first", "second"])
    assert written.directory == tmp_path / "outbox" / "abc" and not written.already_there
    assert written.files == ["abc-0.png", "abc-1.png"] == [image_name("abc", i) for i in (0, 1)]
    assert sorted(p.name for p in written.directory.iterdir()) == ["abc-0.png", "abc-1.png", RESULT]
    assert outbox.read_result("abc") == result
    with Image.open(written.directory / "abc-1.png") as png:
        assert png.size == (64, 48) and png.text["parameters"] == "second"
    assert [p.name for p in outbox.root.iterdir()] == ["abc"]  # no staging left


def test_result_json_is_written_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(descriptor: int) -> None:
        order.append(Path(os.readlink(f"/proc/self/fd/{descriptor}")).name)
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    Outbox(tmp_path).write("job", {"ok": True}, images(2), ["a", "b"])
    files = [name for name in order if name.endswith((".png", ".json"))]
    assert files == ["job-0.png", "job-1.png", RESULT]


def test_a_failed_job_gets_a_result_too(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    failure = {"job_id": "j", "status": "failed", "error": {"code": "generation_failed"}}
    written = outbox.write("j", failure)
    assert written.files == [] and outbox.read_result("j") == failure


def test_an_earlier_complete_write_is_kept(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.write("j", {"run": 1, "status": "succeeded"}, images(1), ["first run"])
    again = outbox.write("j", {"run": 2, "status": "succeeded"}, images(1), ["second run"])
    assert again.already_there
    assert outbox.read_result("j") == {"run": 1, "status": "succeeded"}
    with Image.open(tmp_path / "j" / "j-0.png") as png:
        assert png.text["parameters"] == "first run"


def test_a_failure_is_replaced_when_the_retried_job_succeeds(tmp_path: Path) -> None:
    """A retry is a later claim: its success replaces the earlier claim's failure (one of
    an older version, with no claim recorded, too)."""
    outbox = Outbox(tmp_path)
    outbox.write("old", {"status": "failed"})
    assert not outbox.write("old", {"status": "succeeded", "claim": 1}).superseded
    outbox.write("j", {"status": "failed", "error": {"code": "timeout"}, "claim": 1})
    written = outbox.write("j", {"status": "succeeded", "claim": 2}, images(2), ["a", "b"])
    assert not written.already_there and not written.superseded
    assert outbox.read_result("j") == {"status": "succeeded", "claim": 2}
    assert sorted(p.name for p in (tmp_path / "j").iterdir()) == ["j-0.png", "j-1.png", RESULT]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j", "old"]  # no staging left


def test_an_incomplete_directory_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "j-0.png").write_bytes(b"half")
    Outbox(tmp_path).write("j", {"complete": True}, images(1), ["x"])
    assert json.loads((tmp_path / "j" / RESULT).read_text()) == {"complete": True}


def test_stale_working_directories_are_removed_and_live_writers_kept(tmp_path: Path) -> None:
    """Runners on several hosts share one outbox: at start-up a runner removes what dead
    writers left (an older version's, this host's dead processes', another host's after a
    day), never what a live writer is staging now."""
    outbox = Outbox(tmp_path)
    outbox.write("kept", {"ok": True})
    host = outbox_module._HOST
    gone = _exited_pid()
    names = {
        "older": ".tmp-dead-1234",
        "dead_here": f".tmp-{host}.{gone}.j1-staged-00000000",
        "live_here": f".tmp-{host}.{os.getpid()}.j2-staged-00000000",
        "fresh_elsewhere": ".tmp-otherhost.77.j3-staged-00000000",
        "old_elsewhere": ".tmp-otherhost.78.j4-staged-00000000",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "partial.png").write_bytes(b"partial")
    day_ago = time.time() - outbox_module.STALE_ELSEWHERE_S - 60
    os.utime(tmp_path / names["old_elsewhere"], (day_ago, day_ago))
    removed = outbox.remove_stale()
    assert sorted(removed) == sorted([names["older"], names["dead_here"], names["old_elsewhere"]])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["kept", names["live_here"], names["fresh_elsewhere"]])
    assert Outbox(tmp_path / "missing").remove_stale() == []


def _exited_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_later_claims_directory_is_never_replaced_or_removed_by_an_earlier_claim(
    tmp_path: Path,
) -> None:
    """The outbox's fence: each directory belongs to the claim that wrote it."""
    outbox = Outbox(tmp_path)
    later_failure = {"status": "failed", "claim": 2, "images": []}
    outbox.write("j", later_failure)
    late = outbox.write("j", {"status": "succeeded", "claim": 1}, images(1), ["x"])
    assert late.superseded and not late.already_there
    assert outbox.read_result("j") == later_failure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j"]  # nothing staged is left
    assert [p.name for p in (tmp_path / "j").iterdir()] == [RESULT]  # no image of claim 1's
    assert outbox.remove("j", claim=1) is False  # not claim 1's files: left alone
    assert outbox.read_result("j") == later_failure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j"]
    # A still later claim replaces the failure, and may remove its own files.
    again = outbox.write("j", {"status": "succeeded", "claim": 3}, images(2), ["a", "b"])
    assert not again.superseded and outbox.read_result("j") == {"status": "succeeded", "claim": 3}
    assert sorted(p.name for p in (tmp_path / "j").iterdir()) == ["j-0.png", "j-1.png", RESULT]
    assert outbox.remove("j", claim=3) is True
    assert list(tmp_path.iterdir()) == []
    assert outbox.remove("j", claim=3) is False  # nothing there


def test_a_success_is_kept_for_any_later_claim_and_a_failure_of_the_same_claim_too(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path)
    success = {"status": "succeeded", "claim": 1, "images": []}
    outbox.write("s", success)
    kept = outbox.write("s", {"status": "failed", "claim": 2})
    assert kept.already_there and outbox.read_result("s") == success
    # the rescuer wrote a failure for claim 1's attempt: that attempt's late files wait
    failure = {"status": "failed", "claim": 1}
    outbox.write("f", failure)
    late = outbox.write("f", {"status": "succeeded", "claim": 1}, images(1), ["x"])
    assert late.superseded and outbox.read_result("f") == failure
    # the claim that wrote it removes it
    assert outbox.remove("s", claim=1) is True and not (tmp_path / "s").exists()


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "outbox"
    root.mkdir()
    outbox = Outbox(root)
    with pytest.raises(TypeError):  # a result that cannot be JSON: refused before writing
        outbox.write("j", {"x": object()}, images(1), ["x"])
    assert list(root.iterdir()) == []
    with pytest.raises(ValueError):  # a parameters text per image, or none at all
        outbox.write("j", {"ok": True}, images(2), ["only one"])
    assert list(root.iterdir()) == []
    blocked = Outbox(tmp_path / "a-file")
    (tmp_path / "a-file").write_text("the outbox root is a file")
    with pytest.raises(OutboxWriteFailed, match="cannot write the outputs of job k"):
        blocked.write("k", {"ok": True})


def test_a_sampler_alone_names_the_schedule_type_it_ran_on() -> None:
    """A1111 reads no Schedule type as its own choice for the sampler (DPM++ 2M: Karras):
    a sampler named alone writes the one the engine reports it ran on."""
    bare = parse_spec({"prompt": "x", "scheduler": "dpm++_2m"})
    text = infotext(bare, 1, 64, 64, schedule="Uniform")
    assert "Sampler: DPM++ 2M, Schedule type: Uniform, CFG scale" in text
    assert "Sampler: DPM++ 2M, CFG scale" in infotext(bare, 1, 64, 64)  # none reported
    named = parse_spec({"prompt": "x", "scheduler": "dpm++_2m_karras"})
    assert "Schedule type: Karras," in infotext(named, 1, 64, 64, schedule="Uniform")


def test_a_hires_infotext_has_the_first_pass_size_and_its_second_schedule_type() -> None:
    job = parse_spec({"prompt": "x", "scheduler": "euler", "hires": {"scale": 1.5}})
    same = infotext(job, 1, 96, 96, schedule="DDIM", hires_schedule="DDIM", first_size=(64, 64))
    assert "Schedule type: DDIM," in same and "Size: 64x64," in same
    assert "Hires schedule type" not in same  # as A1111: only when it differs
    # Karras first, then the model's own spacing (A1111 would run Karras in both)
    curved = parse_spec(
        {"prompt": "x", "scheduler": "euler_karras", "hires": {"scale": 1.5, "scheduler": "euler"}}
    )
    text = infotext(curved, 1, 96, 96, schedule="Karras", hires_schedule="DDIM")
    assert "Schedule type: Karras, " in text and "Hires schedule type: DDIM, " in text
    assert "Hires sampler" not in text
    assert "Size: 96x96," in text  # no first pass reported, no size asked: the image's
