"""The resident-model engine on two tiny models: defaults resolved, one model resident,
switching, parking in host RAM, a model that fails to load."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from alice_spool.database import Database
from alice_spool.engine import generate as generate_module
from alice_spool.engine.device import choose
from alice_spool.engine.resident import Engine
from alice_spool.engine.tiny import create_tiny
from alice_spool.errors import InvalidParameters, ModelLoadFailed, ModelNotFound
from alice_spool.library.registry import ModelRegistry
from alice_spool.outbox import Outbox
from alice_spool.runner import Runner, RunnerOptions
from alice_spool.spec import parse_spec
from alice_spool.states import JobStatus
from alice_spool.store import Store


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    create_tiny(directory, "tiny")
    create_tiny(directory, "other")
    return directory


def spec(**fields: object):
    return parse_spec({"prompt": "a lighthouse", "steps": 2, "seed": 3, **fields})


def test_defaults_are_resolved_from_the_registry(models: Path) -> None:
    registry = ModelRegistry(models)
    resolved = registry.resolve(spec())
    assert (resolved.model, resolved.width, resolved.height) == ("sd/other", 64, 64)
    assert registry.resolve(spec(), "tiny").model == "sd/tiny"
    assert registry.resolve(spec(model="tiny", width=128)).height == 64
    with pytest.raises(ModelNotFound):
        registry.resolve(spec(model="nope"))
    # With the model it resolved to (the engine's batch limit needs its family).
    filled, model = registry.resolve_with_model(spec(), "tiny")
    assert filled == registry.resolve(spec(), "tiny")
    assert (model.id, model.family) == ("sd/tiny", "sd1")


def test_one_model_resident_switching_on_demand(models: Path) -> None:
    engine = Engine(ModelRegistry(models), choose("cpu"), default_model="tiny")
    first = engine.generate([spec()])
    assert engine.current is not None and engine.current.model_id == "sd/tiny"
    assert engine.current.memory_mode == "full"
    resident = engine.current
    engine.generate([spec()])
    assert engine.current is resident  # not loaded again
    engine.generate([spec(model="other")])
    assert engine.current.model_id == "sd/other" and resident.pipeline is None  # freed
    again = engine.generate([spec(model="tiny")])
    # The two tiny models have the same weights: the same image, whichever is loaded.
    assert np.array_equal(np.asarray(first.jobs[0].images[0]), np.asarray(again.jobs[0].images[0]))
    with pytest.raises(InvalidParameters):
        engine.generate([])
    engine.unload()
    assert engine.current is None


def test_keep_in_ram_parks_the_previous_model(models: Path) -> None:
    engine = Engine(ModelRegistry(models), choose("cpu"), keep_in_ram=True)
    engine.generate([spec(model="tiny")])
    tiny = engine.current
    engine.generate([spec(model="other")])
    assert tiny is not None and tiny.pipeline is not None  # parked, not freed
    engine.generate([spec(model="tiny")])
    assert engine.current is tiny  # back without loading from disk


def test_a_model_that_fails_to_load(models: Path, tmp_path: Path) -> None:
    shutil.copytree(models, tmp_path / "models")
    weights = next((tmp_path / "models" / "other" / "unet").glob("*.safetensors"))
    weights.write_bytes(b"not weights")
    engine = Engine(ModelRegistry(tmp_path / "models"), choose("cpu"))
    with pytest.raises(ModelLoadFailed, match="cannot load sd/other"):
        engine.generate([spec(model="other")])
    assert engine.generate([spec(model="tiny")]).image_count == 1  # the engine lives on


def test_the_default_model_is_loaded_before_the_first_job_unless_told_not_to(
    models: Path,
) -> None:
    eager = Engine(ModelRegistry(models), choose("cpu"), default_model="tiny")
    eager.warm_up_default()  # what the runner does before its first claim
    assert eager.resident_model == "sd/tiny"
    lazy = Engine(ModelRegistry(models), choose("cpu"), default_model="tiny", preload=False)
    lazy.warm_up_default()
    assert lazy.resident_model is None
    empty = Engine(ModelRegistry(models / "none"), choose("cpu"))
    empty.warm_up_default()  # no model installed yet: nothing to load, no error
    assert empty.resident_model is None


def test_an_out_of_memory_call_is_freed_before_its_halves_run(
    models: Path, database: Database, tmp_path: Path
) -> None:
    """The runner splits a call that ran out of memory, and each smaller call starts only
    once the failed one's memory (held in its error's frames) is gone."""
    engine = Engine(ModelRegistry(models), choose("cpu"), oom_above=1, preload=False)
    alive_at_each_call: list[bool] = []
    real_generate = engine.generate

    def watched(specs, **options):
        ballast = generate_module.injected_ballast
        alive_at_each_call.append(ballast is not None and ballast() is not None)
        return real_generate(specs, **options)

    engine.generate = watched  # type: ignore[method-assign]
    store = Store(database, max_queue=100, max_attempts=3)
    job = store.jobs.enqueue(spec(n=2, model="tiny"), source="cli").job
    runner = Runner(
        store,
        Outbox(tmp_path / "outbox"),
        engine,
        RunnerOptions(name="oom", exit_when_idle=True),
        lock_dir=tmp_path,
    )
    runner.run()
    done = store.jobs.get(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.attempts == 1
    assert len(alive_at_each_call) == 3  # 2 images: out of memory; then 1 and 1
    assert alive_at_each_call == [False, False, False]
