"""A FLUX.1-shaped Hugging Face repository through the download manager, from the Hub
stand-in on 127.0.0.1: its transformer and T5 encoder sharded as the
real repositories have them, with the decoys they carry (a single-file checkpoint and the
autoencoder at the root, a GGUF file, an fp8 variant, images). The download fetches
exactly the pipeline's files, the registry lists the model as FLUX.1 schnell, and the
engine runs it; the gated repository (FLUX.1 dev's way) needs the token."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors.numpy import load, save

from alice_spool.downloads.sources import SourceSettings
from alice_spool.downloads.worker import DownloadWorker, WorkerOptions
from alice_spool.engine.device import choose
from alice_spool.engine.generate import generate
from alice_spool.engine.generate import load as load_model
from alice_spool.engine.tiny import create_tiny
from alice_spool.library.registry import ModelRegistry
from alice_spool.records import DownloadRecord
from alice_spool.spec import parse_spec
from alice_spool.states import DownloadStatus
from alice_spool.store import Store
from tests.support.sources import Hub, Repo, files_of, hub_serving

DECOYS = {
    "flux1-schnell.safetensors": b"root single-file checkpoint, a duplicate" * 64,
    "ae.safetensors": b"the autoencoder again, at the root" * 64,
    "flux1-schnell-Q4_K_S.gguf": b"GGUF quantized transformer" * 64,
    "transformer/diffusion_pytorch_model.fp8.safetensors": b"an fp8 variant" * 64,
    "schnell_grid.jpeg": b"\xff\xd8 a picture" * 32,
    "README.md": b"# FLUX.1 [schnell]",
}


def sharded(files: dict[str, bytes], folder: str, name: str, shards: int = 2) -> None:
    """Split `folder/name.safetensors` into shards with an index, as the real
    repositories store their large transformer and T5 encoder."""
    whole = load(files.pop(f"{folder}/{name}.safetensors"))
    keys = sorted(whole)
    weight_map: dict[str, str] = {}
    for index in range(shards):
        part = f"{name}-{index + 1:05d}-of-{shards:05d}.safetensors"
        chunk = {key: whole[key] for key in keys[index::shards]}
        files[f"{folder}/{part}"] = save(chunk)
        weight_map.update(dict.fromkeys(chunk, part))
    total = sum(array.nbytes for array in whole.values())
    index_json = {"metadata": {"total_size": total}, "weight_map": weight_map}
    files[f"{folder}/{name}.safetensors.index.json"] = json.dumps(index_json).encode()


@pytest.fixture(scope="module")
def flux_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    made = create_tiny(tmp_path_factory.mktemp("made"), "flux", family="flux", variant="schnell")
    files = files_of(made)
    sharded(files, "transformer", "diffusion_pytorch_model")
    sharded(files, "text_encoder_2", "model")
    return files


@pytest.fixture(autouse=True)
def hub_reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def hub(flux_files: dict[str, bytes]) -> Iterator[Hub]:
    served = Hub(
        repos={
            "black-forest-labs/tiny-flux-schnell": Repo({**flux_files, **DECOYS}),
            "black-forest-labs/tiny-flux-dev": Repo(dict(flux_files), gated=True),
        }
    )
    with hub_serving(served) as running:
        yield running


def run(store: Store, models: Path, hub: Hub, **sources: str) -> DownloadRecord:
    settings = SourceSettings(hf_endpoint=hub.url, **sources)
    options = WorkerOptions(owner="host/1", progress_every_s=0.0)
    done = DownloadWorker(store, models, options, settings, sleep=lambda s: None).run_once()
    assert done is not None
    return done


def test_a_flux_repository_installs_exactly_its_pipeline_files_and_runs(
    store: Store, hub: Hub, flux_files: dict[str, bytes], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    store.downloads.queue_download("huggingface", {"repo": "black-forest-labs/tiny-flux-schnell"})
    done = run(store, models, hub)
    assert done.status is DownloadStatus.SUCCEEDED, done.error_message
    folder = models / "tiny-flux-schnell"
    got = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert got == flux_files  # the shards and their indexes, nothing else
    for decoy in DECOYS:
        assert hub.files.fetched(decoy) == 0, decoy
    model = ModelRegistry(models).get("sd/tiny-flux-schnell")
    assert (model.family, model.variant) == ("flux", "schnell")
    loaded = load_model(model.path, model.id, choose("cpu"), family="flux")
    asked = {"prompt": "a fox", "model": model.id, "steps": 2, "width": 64, "height": 64}
    spec = ModelRegistry(models).with_model(parse_spec(asked))  # as a door queues it
    output = generate(loaded, [spec])
    assert output.jobs[0].error is None and output.jobs[0].images[0].size == (64, 64)


def test_a_gated_flux_repository_needs_the_token(store: Store, hub: Hub, tmp_path: Path) -> None:
    models = tmp_path / "models"
    store.downloads.queue_download("huggingface", {"repo": "black-forest-labs/tiny-flux-dev"})
    refused = run(store, models, hub)
    assert (refused.status, refused.error_code) == (DownloadStatus.FAILED, "unauthorized")
    assert "models.hf_token" in (refused.error_message or "")
    store.downloads.queue_download("huggingface", {"repo": "black-forest-labs/tiny-flux-dev"})
    done = run(store, models, hub, hf_token=hub.token)
    assert done.status is DownloadStatus.SUCCEEDED, done.error_message
    assert ModelRegistry(models).get("sd/tiny-flux-dev").family == "flux"
