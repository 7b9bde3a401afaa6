"""The outbox on real files: a job's directory appears whole (result.json last), PNGs
carry their parameters as other SD tools read them, nothing is written twice, and a
writer that died leaves nothing a reader could mistake for a result."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from alice_spool.errors import OutboxWriteFailed
from alice_spool.outbox import RESULT, SAMPLER_NAMES, Outbox, image_name, infotext
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
        "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 512x768, "
        "Model: v1-5"
    )
    plain = infotext(parse_spec({"prompt": "x", "guidance_scale": 7.5}), 1, 64, 64)
    assert "Negative prompt" not in plain and "CFG scale: 7.5" in plain
    assert set(SAMPLER_NAMES) == set(SCHEDULERS)


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
    outbox = Outbox(tmp_path)
    outbox.write("j", {"status": "failed", "error": {"code": "timeout"}})
    written = outbox.write("j", {"status": "succeeded"}, images(2), ["a", "b"])
    assert not written.already_there
    assert outbox.read_result("j") == {"status": "succeeded"}
    assert sorted(p.name for p in (tmp_path / "j").iterdir()) == ["j-0.png", "j-1.png", RESULT]
    assert [p.name for p in tmp_path.iterdir()] == ["j"]  # no staging left behind


def test_an_incomplete_directory_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "j-0.png").write_bytes(b"half")
    Outbox(tmp_path).write("j", {"complete": True}, images(1), ["x"])
    assert json.loads((tmp_path / "j" / RESULT).read_text()) == {"complete": True}


def test_stale_staging_directories_are_removed(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.write("kept", {"ok": True})
    (tmp_path / ".tmp-dead-1234").mkdir()
    (tmp_path / ".tmp-dead-1234" / "dead-0.png").write_bytes(b"partial")
    assert outbox.remove_stale() == [".tmp-dead-1234"]
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]
    assert Outbox(tmp_path / "missing").remove_stale() == []


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
