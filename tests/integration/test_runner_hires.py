"""Hires and plain jobs through the runner and the real engine on the tiny model, on the
CPU: result.json and each PNG's infotext record the schedule types the passes ran on
and a hires job's first pass's size; generation.max_pixels refuses a hires target at
the model's native size."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from alice_spool.config import GenerationSettings, PathsSettings, Settings
from alice_spool.engine.device import choose
from alice_spool.engine.resident import Engine
from alice_spool.engine.tiny import create_tiny
from alice_spool.library.registry import ModelRegistry
from alice_spool.outbox import Outbox
from alice_spool.runner import Runner, RunnerOptions
from alice_spool.spec import JobSpec, parse_spec
from alice_spool.states import JobStatus
from alice_spool.store import Store


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    create_tiny(directory, "tiny")  # 64x64 native; SD 1.5's scheduler: leading from 1
    return directory


def spec(**fields: object) -> JobSpec:
    return parse_spec({"prompt": "a lighthouse", "steps": 1, "seed": 7, **fields})


def run_queue(store: Store, models: Path, tmp_path: Path, *, max_pixels: int) -> Outbox:
    settings = Settings(
        paths=PathsSettings(data_dir=str(tmp_path)),
        generation=GenerationSettings(max_pixels=max_pixels),
    )
    options = RunnerOptions.from_settings(settings, name="hires", exit_when_idle=True)
    outbox = Outbox(tmp_path / "outbox")
    engine = Engine(ModelRegistry(models), choose("cpu"), preload=False)
    Runner(store, outbox, engine, options, lock_dir=tmp_path).run()
    return outbox


def settings_line(outbox: Outbox, job_id: str) -> str:
    result = outbox.read_result(job_id) or {}
    with Image.open(outbox.job_dir(job_id) / result["images"][0]["file"]) as png:
        return str(png.text["parameters"]).splitlines()[-1]


def test_results_and_infotexts_name_the_schedule_types_and_the_first_pass(
    store: Store, models: Path, tmp_path: Path
) -> None:
    hires = spec(scheduler="euler", hires={"scale": 1.5, "steps": 1, "scheduler": "euler_karras"})
    ids = {
        name: store.jobs.enqueue(job, source="cli").job.id
        for name, job in {
            "hires": hires,
            "plain": spec(scheduler="dpm++_2m"),
            "ddim": spec(scheduler="ddim"),
        }.items()
    }
    outbox = run_queue(store, models, tmp_path, max_pixels=1024 * 1024)
    result = {name: outbox.read_result(job_id) or {} for name, job_id in ids.items()}
    assert {r["status"] for r in result.values()} == {"succeeded"}
    made = result["hires"]
    assert (made["schedule"], made["hires_schedule"]) == ("DDIM", "Karras")
    assert made["first_pass"] == {"width": 64, "height": 64} and made["images"][0]["width"] == 96
    text = settings_line(outbox, ids["hires"])
    assert "Sampler: Euler, Schedule type: DDIM, " in text and "Size: 64x64, " in text
    assert "Hires schedule type: Karras, " in text
    # A plain job gains its schedule type, nothing else; DDIM runs on its own timesteps.
    assert set(made) - set(result["plain"]) == {"hires_schedule", "first_pass"}
    assert result["plain"]["schedule"] == "DDIM"
    assert "Sampler: DPM++ 2M, Schedule type: DDIM, " in settings_line(outbox, ids["plain"])
    assert set(result["plain"]) - set(result["ddim"]) == {"schedule"}
    assert "Sampler: DDIM, CFG scale" in settings_line(outbox, ids["ddim"])


def test_generation_max_pixels_fails_a_hires_job_at_the_native_size(
    store: Store, models: Path, tmp_path: Path
) -> None:
    job = store.jobs.enqueue(spec(hires={"scale": 1.5}), source="cli").job  # 64x64 -> 96x96
    fits = store.jobs.enqueue(spec(hires={"scale": 1.25}), source="cli").job  # 80x80
    run_queue(store, models, tmp_path, max_pixels=96 * 96 - 1)
    refused = store.jobs.get(job.id)
    assert refused.status is JobStatus.FAILED and refused.error_code == "invalid_parameters"
    assert refused.error_message is not None and "hires" in refused.error_message
    assert "9216 pixels; the limit is 9215" in refused.error_message
    assert store.jobs.get(fits.id).status is JobStatus.SUCCEEDED
