"""`alice-spool submit --hires 2x` and its companions become the request's `hires` and
`clip_skip` fields, checked like any other."""

from __future__ import annotations

from pathlib import Path

import pytest

from alice_spool.hires import HiresFix
from alice_spool.store import Store
from tests.integration.cli.results import fails, ok
from tests.support.fake_model import write_fake_model


@pytest.fixture(autouse=True)
def installed_model(data_dir: Path) -> None:
    write_fake_model(data_dir / "models" / "tiny")


def test_submit_with_hires_and_clip_skip(run, store: Store) -> None:
    job_id = ok(
        run(
            "submit", "a fox", "--hires", "2x", "--hires-upscaler", "lanczos",
            "--hires-steps", "10", "--hires-strength", "0.5", "--clip-skip", "2",
        )
    ).strip()  # fmt: skip
    spec = store.jobs.get(job_id).spec
    assert spec.hires == HiresFix(scale=2.0, upscaler="Lanczos", steps=10, strength=0.5)
    assert (spec.clip_skip, spec.mode) == (2, "hires")
    sized = ok(run("submit", "a fox", "--hires", "1024x768")).strip()
    assert store.jobs.get(sized).spec.hires == HiresFix(scale=None, width=1024, height=768)


def test_hires_options_are_checked(run, store: Store) -> None:
    fails(run("submit", "a fox", "--hires", "9x"), 3, "a scale of 1 to 4")
    fails(run("submit", "a fox", "--hires-steps", "5"), 2, "need --hires")
    fails(run("submit", "a fox", "--hires", "2x", "--hires-upscaler", "ESRGAN"), 3, "upscaler")
    assert sum(store.jobs.counts().values()) == 0
