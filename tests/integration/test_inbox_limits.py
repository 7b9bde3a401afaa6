"""The inbox refuses what every other door refuses: an img2img or inpainting request
that would leave diffusers no denoising step (int(steps x strength) < 1), with a reason
that names strength and steps; and it takes any priority (it is the operator's door)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from PIL import Image

from alice_spool.inbox import ACCEPTED, REJECTED, Inbox
from alice_spool.library.registry import ModelRegistry
from alice_spool.spec import BUILTIN_DEFAULTS
from alice_spool.store import Store
from tests.support.fake_model import write_fake_model


def drop(directory: Path, name: str, request: dict[str, Any]) -> None:
    temporary = directory / f".{name}.tmp"
    temporary.write_text(json.dumps(request))
    os.rename(temporary, directory / name)


def test_img2img_without_a_denoising_step_is_rejected_with_its_reason(
    store: Store, tmp_path: Path
) -> None:
    inbox_dir = tmp_path / "inbox"
    (inbox_dir / "pictures").mkdir(parents=True)
    Image.new("RGB", (64, 64), (1, 2, 3)).save(inbox_dir / "pictures" / "boat.png")
    write_fake_model(tmp_path / "models" / "base")
    inbox = Inbox(
        inbox_dir,
        store,
        ModelRegistry(tmp_path / "models"),
        defaults=BUILTIN_DEFAULTS,
        settle_s=0.05,
        data_dir=tmp_path / "var",
    )
    image = "pictures/boat.png"
    drop(inbox_dir, "one-step.json", {"prompt": "a", "init_image": image, "steps": 1})
    drop(inbox_dir, "low.json", {"prompt": "b", "init_image": image, "steps": 3, "strength": 0.2})
    drop(
        inbox_dir, "enough.json", {"prompt": "c", "init_image": image, "steps": 5, "strength": 0.2}
    )
    drop(inbox_dir, "urgent.json", {"prompt": "d", "priority": 100})
    inbox.run_once()

    for name, steps, strength in (("one-step.json", 1, 0.75), ("low.json", 3, 0.2)):
        error = json.loads((inbox_dir / REJECTED / f"{name}.error.json").read_text())["error"]
        assert (error["code"], error["field"]) == ("invalid_parameters", "strength")
        assert f"strength {strength:g} with steps {steps}" in error["message"]
        assert error["message"].startswith(name)
    taken = {job.spec.prompt: job.spec for job in store.jobs.list_jobs(limit=10).jobs}
    assert sorted(taken) == ["c", "d"]
    assert (taken["c"].steps, taken["c"].strength) == (5, 0.2)
    assert taken["d"].priority == 100  # no cap at the operator's door
    assert sorted(p.name for p in (inbox_dir / ACCEPTED).iterdir()) == [
        "enough.json",
        "urgent.json",
    ]
