"""A native `/v1/jobs` request that names a VAE, through a real server on 127.0.0.1: one
that is not installed is refused at the door naming `vae`; an installed one (A1111's
single-file layout) is queued, a runner on the real tiny model runs it next to a plain
job, and the result and the PNG's infotext say which VAE it was (the plain job's, none)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from PIL import Image

from alice_spool.engine.device import choose
from alice_spool.engine.resident import Engine
from alice_spool.engine.tiny import create_tiny
from alice_spool.library.registry import ModelRegistry
from alice_spool.outbox import Outbox
from alice_spool.runner import Runner, RunnerOptions
from tests.support.bare import Bare
from tests.support.vaes import grain_vae, write_vae_file

pytestmark = pytest.mark.slow


def test_a_native_job_with_a_vae_runs_and_a_missing_one_is_refused(
    make_bare: Callable[..., Bare], tmp_path: Path
) -> None:
    bare = make_bare()
    tiny = create_tiny(bare.models, "tiny", replace=True)  # the real one, not a stand-in
    weights = write_vae_file(grain_vae(tiny), bare.models, "grain")
    request = {"prompt": "a harbour", "steps": 2, "seed": 5, "scheduler": "euler"}
    post = lambda body: httpx.post(f"{bare.url}/v1/jobs", json=body, timeout=30)  # noqa: E731

    missing = post({**request, "vae": "nope"})
    error = missing.json()["error"]
    assert missing.status_code == 404, missing.text
    assert (error["code"], error["param"]) == ("vae_not_found", "vae")
    assert (
        error["message"] == "vae: vae/nope is not installed in <models>/vae/ (installed: vae/grain)"
    )
    assert not any(bare.store.jobs.counts().values())

    created = [post({**request, "vae": "grain.safetensors"}), post(request)]
    assert [c.status_code for c in created] == [202, 202], created[0].text
    job_ids = [c.json()["id"] for c in created]
    engine = Engine(ModelRegistry(bare.models), choose("cpu"))
    options = RunnerOptions(name="vae-test", exit_when_idle=True)
    Runner(bare.store, Outbox(bare.outbox), engine, options, lock_dir=tmp_path).run()
    assert [bare.store.jobs.get(job_id).status.value for job_id in job_ids] == ["succeeded"] * 2

    result = json.loads((bare.outbox / job_ids[0] / "result.json").read_text())
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert result["spec"]["vae"] == "vae/grain"
    assert result["vae"] == {
        "name": "vae/grain",
        "file_name": "grain.safetensors",
        "sha256": sha256,
    }
    image = Image.open(bare.outbox / job_ids[0] / result["images"][0]["file"])
    assert (
        f"Model: tiny, VAE hash: {sha256[:10]}, VAE: grain.safetensors" in image.info["parameters"]
    )
    plain = json.loads((bare.outbox / job_ids[1] / "result.json").read_text())
    assert "vae" not in plain and plain["spec"]["vae"] is None  # a plain job's: as it was
