"""Hugging Face and CivitAI downloads through the download worker, against local
stand-ins of both services (tests/support/sources.py) serving the tiny model's real
files: exactly the pipeline's files fetched (never a .bin or .ckpt decoy), the fp16
variant when wanted, gated repositories, resumes, every refusal with its code and
nothing installed, the token only ever in the header to its own service; and search
in both services' modes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from alice_spool.downloads import civitai, huggingface
from alice_spool.downloads.sources import SourceSettings
from alice_spool.downloads.worker import DownloadWorker, WorkerOptions
from alice_spool.engine.tiny import create_tiny, create_tiny_lora
from alice_spool.errors import SourceUnavailable
from alice_spool.library.registry import ModelRegistry
from alice_spool.records import DownloadRecord
from alice_spool.states import DownloadStatus
from alice_spool.store import Store
from tests.support.sources import (
    Civitai,
    Hub,
    Repo,
    checkpoint_bytes,
    civitai_model,
    civitai_serving,
    files_of,
    hub_serving,
)

DECOYS = {
    "unet/diffusion_pytorch_model.bin": b"\x80\x04\x95 a pickled duplicate" * 64,
    "unet/diffusion_pytorch_model.msgpack": b"flax weights" * 128,
    "text_encoder/pytorch_model.bin": b"\x80\x04\x95 another pickle" * 64,
    "tiny-sd.ckpt": b"\x80\x04\x95 a root checkpoint" * 64,
    "tiny-sd.safetensors": b"root-level single file, not part of a pipeline" * 32,
    "README.md": b"# tiny",
}


@pytest.fixture(autouse=True)
def hub_reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite keeps huggingface_hub offline (conftest); these tests reach only the
    stand-in on 127.0.0.1."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The tiny pipeline's real files, by path in the model."""
    return files_of(create_tiny(tmp_path_factory.mktemp("made")))


@pytest.fixture(scope="module")
def fp16_unet(tiny_files: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The tiny UNet's weights in fp16, as a repository's `fp16` variant has them."""
    work = tmp_path_factory.mktemp("fp16")
    full = work / "full.safetensors"
    full.write_bytes(tiny_files["unet/diffusion_pytorch_model.safetensors"])
    half = {k: v.astype(np.float16) for k, v in load_file(str(full)).items()}
    save_file(half, str(work / "half.safetensors"))
    return (work / "half.safetensors").read_bytes()


@pytest.fixture(scope="module")
def lora_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return create_tiny_lora(tmp_path_factory.mktemp("made")).read_bytes()


@pytest.fixture
def hub(tiny_files: dict[str, bytes], fp16_unet: bytes, lora_bytes: bytes) -> Iterator[Hub]:
    pipeline = {**tiny_files, **DECOYS, "unet/diffusion_pytorch_model.fp16.safetensors": fp16_unet}
    served = Hub(
        repos={
            "org/tiny-sd": Repo(pipeline, downloads=50, likes=3),
            "org/gated-sd": Repo(dict(tiny_files), gated=True, downloads=10),
            "org/tiny-lora": Repo(
                {"pytorch_lora_weights.safetensors": lora_bytes, "README.md": b"# a LoRA"},
                tags=["diffusers", "lora"],
                downloads=5,
            ),
            "org/pickles": Repo(
                {
                    "model_index.json": b'{"unet": ["diffusers", "U"]}',
                    "unet/config.json": b"{}",
                    "unet/diffusion_pytorch_model.bin": DECOYS["tiny-sd.ckpt"],
                }
            ),
        }
    )
    with hub_serving(served) as running:
        yield running


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return tmp_path / "models"


def worker(store: Store, models: Path, sources: SourceSettings, **options: Any) -> DownloadWorker:
    values = {"owner": "host/1", "progress_every_s": 0.0, **options}
    return DownloadWorker(store, models, WorkerOptions(**values), sources, sleep=lambda s: None)


def hf(hub: Hub, **fields: Any) -> SourceSettings:
    return SourceSettings(hf_endpoint=hub.url, **fields)


def run(store: Store, models: Path, sources: SourceSettings) -> DownloadRecord:
    done = worker(store, models, sources).run_once()
    assert done is not None
    return done


def leftovers(models: Path) -> list[str]:
    staging = models / ".downloads"
    return (
        sorted(str(p.relative_to(staging)) for p in staging.rglob("*")) if staging.exists() else []
    )


def installed(models: Path) -> list[str]:
    if not models.exists():
        return []
    return sorted(p.name for p in models.iterdir() if not p.name.startswith("."))


# -- Hugging Face ---------------------------------------------------------------------


def test_a_diffusers_repository_installs_exactly_the_pipeline_files(
    store: Store, hub: Hub, models: Path, tiny_files: dict[str, bytes]
) -> None:
    store.downloads.queue_download("huggingface", {"repo": "org/tiny-sd"})
    done = run(store, models, hf(hub))
    assert done.status is DownloadStatus.SUCCEEDED, done.error_message
    assert (done.model, done.kind, done.name) == ("sd/tiny-sd", "diffusers", "tiny-sd")
    folder = models / "tiny-sd"
    got = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert got == tiny_files  # every file the pipeline needs, as served, and nothing else
    fetched = {path for method, path, _ in hub.files.requests if "/resolve/" in path}
    for decoy in DECOYS:
        assert not any(path.endswith(decoy) for path in fetched), decoy
    assert not any(path.endswith(".fp16.safetensors") for path in fetched)
    assert done.bytes_done == done.bytes_total == sum(len(b) for b in tiny_files.values())
    revision = done.reference["plan"]["revision"]  # pinned: a resume fetches the same commit
    assert all(f"/resolve/{revision}/" in path for path in fetched)
    assert ModelRegistry(models).get("sd/tiny-sd").ok
    assert leftovers(models) == []


def test_the_fp16_variant_is_fetched_where_wanted_and_installed_under_the_plain_name(
    store: Store, hub: Hub, models: Path, fp16_unet: bytes
) -> None:
    store.downloads.queue_download("huggingface", {"repo": "org/tiny-sd"}, name="half")
    done = run(store, models, hf(hub, hf_variant="fp16"))
    assert done.status is DownloadStatus.SUCCEEDED, done.error_message
    assert (
        models / "half" / "unet" / "diffusion_pytorch_model.safetensors"
    ).read_bytes() == fp16_unet
    assert hub.files.fetched("unet/diffusion_pytorch_model.safetensors") == 0
    assert hub.files.fetched("unet/diffusion_pytorch_model.fp16.safetensors") == 1
    assert not (models / "half" / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists()
    # The folders without a variant keep their full weights.
    assert (models / "half" / "vae" / "diffusion_pytorch_model.safetensors").exists()


def test_the_variant_setting_follows_the_runner_device() -> None:
    from alice_spool.config import Settings, load_settings

    assert SourceSettings.from_settings(Settings()).hf_variant == "fp16"  # auto, a GPU maybe
    on_cpu = load_settings(overrides={"runner.device": "cpu"}, env={})
    assert SourceSettings.from_settings(on_cpu).hf_variant == ""


def test_a_gated_repository_without_a_token_fails_unauthorized_naming_the_setting(
    store: Store, hub: Hub, models: Path
) -> None:
    store.downloads.queue_download("huggingface", {"repo": "org/gated-sd"})
    done = run(store, models, hf(hub))
    assert (done.status, done.error_code) == (DownloadStatus.FAILED, "unauthorized")
    assert "models.hf_token" in (done.error_message or "")
    assert not any("/resolve/" in path for _, path, _ in hub.files.requests)  # nothing fetched
    assert installed(models) == [] and leftovers(models) == []


def test_a_gated_repository_with_its_token_downloads_and_the_token_goes_only_in_the_header(
    store: Store, hub: Hub, models: Path
) -> None:
    store.downloads.queue_download("huggingface", {"repo": "org/gated-sd"})
    done = run(store, models, hf(hub, hf_token=hub.token))
    assert done.status is DownloadStatus.SUCCEEDED, done.error_message
    files = [(path, auth) for _, path, auth in hub.files.requests if "/resolve/" in path]
    assert files and all(auth == f"Bearer {hub.token}" for _, auth in files)
    row = json.dumps(store.downloads.get_download(done.id).reference) + json.dumps(done.to_dict())
    assert hub.token not in row and not any(hub.token in path for _, path, _ in hub.files.requests)


def test_a_wrong_token_for_a_gated_repository_says_the_token_has_no_access(
    store: Store, hub: Hub, models: Path
) -> None:
    store.downloads.queue_download("huggingface", {"repo": "org/gated-sd"})
    done = run(store, models, hf(hub, hf_token="hf_not_the_right_one"))
    assert (done.status, done.error_code) == (DownloadStatus.FAILED, "unauthorized")
    assert "has no access" in (done.error_message or "")
    assert "hf_not_the_right_one" not in (done.error_message or "")
    assert installed(models) == [] and leftovers(models) == []


@pytest.mark.parametrize(
    ("reference", "token", "code", "words"),
    [
        ({"repo": "org/missing"}, "", "unauthorized", "models.hf_token"),
        ({"repo": "org/missing"}, "hf_some_token", "download_failed", "not found"),
        ({"repo": "org/tiny-sd", "revision": "nope"}, "", "download_failed", "no such revision"),
        ({"repo": "org/tiny-sd", "file": "absent.safetensors"}, "", "download_failed", "no file"),
        ({"repo": "org/tiny-sd", "file": "tiny-sd.ckpt"}, "", "unsafe_format", "allow_pickle"),
        ({"repo": "org/pickles"}, "", "unsafe_format", "no safetensors"),
    ],
)
def test_bad_hugging_face_references_fail_with_their_code_and_install_nothing(
    store: Store,
    hub: Hub,
    models: Path,
    reference: dict[str, str],
    token: str,
    code: str,
    words: str,
) -> None:
    store.downloads.queue_download("huggingface", reference)
    done = run(store, models, hf(hub, hf_token=token))
    assert (done.status, done.error_code) == (DownloadStatus.FAILED, code), done.error_message
    assert words in (done.error_message or "")
    assert installed(models) == [] and leftovers(models) == []


def test_a_file_whose_bytes_differ_from_the_listing_fails_and_installs_nothing(
    store: Store, hub: Hub, models: Path, tiny_files: dict[str, bytes]
) -> None:
    body = tiny_files["vae/diffusion_pytorch_model.safetensors"]
    hub.corrupt["org/tiny-sd/vae/diffusion_pytorch_model.safetensors"] = body[:-8] + b"\0" * 8
    store.downloads.queue_download("huggingface", {"repo": "org/tiny-sd"})
    done = run(store, models, hf(hub))
    assert (done.status, done.error_code) == (DownloadStatus.FAILED, "download_failed")
    assert "SHA-256" in (done.error_message or "")
    assert installed(models) == [] and leftovers(models) == []


def test_a_lora_file_of_a_repository_lands_among_the_loras(
    store: Store, hub: Hub, models: Path, lora_bytes: bytes
) -> None:
    store.downloads.queue_download(
        "huggingface", {"repo": "org/tiny-lora"}
    )  # its one safetensors file
    done = run(store, models, hf(hub))
    assert done.status is DownloadStatus.SUCCEEDED, done.error_message
    assert done.model == "lora/tiny-lora"
    assert (models / "loras" / "tiny-lora.safetensors").read_bytes() == lora_bytes
    assert installed(models) == ["loras"]


def test_a_dropped_connection_resumes_the_file_with_range(
    store: Store, hub: Hub, models: Path, tiny_files: dict[str, bytes]
) -> None:
    key = "org/tiny-sd/unet/diffusion_pytorch_model.safetensors"
    hub.files.drop_after[key] = 20_000
    store.downloads.queue_download("huggingface", {"repo": "org/tiny-sd"})
    done = run(store, models, hf(hub))
    assert done.status is DownloadStatus.SUCCEEDED, done.error_message
    asked = hub.files.ranges[key]
    assert asked[0] is None and asked[1] is not None and asked[1].startswith("bytes=")
    assert int(asked[1].removeprefix("bytes=").rstrip("-")) >= 16_384  # the kept bytes
    unet = models / "tiny-sd" / "unet" / "diffusion_pytorch_model.safetensors"
    assert unet.read_bytes() == tiny_files["unet/diffusion_pytorch_model.safetensors"]


def test_a_server_that_ignores_range_restarts_the_file_from_zero(
    store: Store, hub: Hub, models: Path, tiny_files: dict[str, bytes]
) -> None:
    key = "org/tiny-sd/unet/diffusion_pytorch_model.safetensors"
    hub.files.drop_after[key] = 20_000
    hub.files.honour_ranges = False
    store.downloads.queue_download("huggingface", {"repo": "org/tiny-sd"})
    done = run(store, models, hf(hub))
    assert done.status is DownloadStatus.SUCCEEDED, done.error_message
    assert len(hub.files.ranges[key]) == 2  # asked to resume, answered 200, taken whole
    unet = models / "tiny-sd" / "unet" / "diffusion_pytorch_model.safetensors"
    assert unet.read_bytes() == tiny_files["unet/diffusion_pytorch_model.safetensors"]


def test_a_restarted_worker_fetches_no_file_it_had_verified(
    store: Store, hub: Hub, models: Path
) -> None:
    made = store.downloads.queue_download("huggingface", {"repo": "org/tiny-sd"})

    class Died(BaseException):  # as a SIGKILL leaves it: files on disk, the row held
        pass

    def fetched() -> list[str]:
        return [p for m, p, _ in hub.files.requests if m == "GET" and "/resolve/" in p]

    first = worker(store, models, hf(hub))
    real_report = first._report

    def report(*args: Any, **kwargs: Any) -> Any:
        if len(fetched()) >= 6:
            raise Died
        return real_report(*args, **kwargs)

    first._report = report  # type: ignore[method-assign]
    with pytest.raises(Died):
        first.run_once()
    before, asked_before = fetched(), len(hub.files.requests)
    assert store.downloads.get_download(made.id).status is DownloadStatus.DOWNLOADING
    again = worker(store, models, hf(hub))
    assert again.start() == [made.id]
    done = again.run_once()
    assert done is not None and done.status is DownloadStatus.SUCCEEDED, done and done.error_message
    after = fetched()[len(before) :]
    assert set(before[:-1]).isdisjoint(after)  # the verified ones were not asked for again
    assert not any(
        "/api/models" in p for _, p, _ in hub.files.requests[asked_before:]
    )  # the kept plan
    assert leftovers(models) == []


def test_an_installed_name_fails_model_exists_before_anything_is_fetched(
    store: Store, hub: Hub, models: Path
) -> None:
    (models / "tiny-sd").mkdir(parents=True)
    (models / "tiny-sd" / "keep.txt").write_text("mine")
    store.downloads.queue_download("huggingface", {"repo": "org/tiny-sd"})
    done = run(store, models, hf(hub))
    assert (done.status, done.error_code) == (DownloadStatus.FAILED, "model_exists")
    assert not any("/resolve/" in path for _, path, _ in hub.files.requests)
    assert (models / "tiny-sd" / "keep.txt").read_text() == "mine"


def test_hugging_face_search_pages_with_a_cursor(hub: Hub) -> None:
    settings = hf(hub)
    first = huggingface.search(settings, "tiny", sort="downloads", limit=1, cursor=None)
    assert [m["id"] for m in first.data] == ["org/tiny-sd"] and first.next_cursor == "1"
    second = huggingface.search(settings, "tiny", sort="downloads", limit=1, cursor="1")
    assert [(m["id"], m["type"]) for m in second.data] == [("org/tiny-lora", "lora")]
    assert second.next_cursor is None


def test_hugging_face_search_in_offline_mode_says_so(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SourceUnavailable, match="HF_HUB_OFFLINE"):
        huggingface.search(hf(hub), "tiny", sort="downloads", limit=1, cursor=None)
    assert hub.files.requests == []


# -- CivitAI --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint() -> bytes:
    return checkpoint_bytes()


@pytest.fixture
def civitai_service(lora_bytes: bytes, checkpoint: bytes) -> Iterator[Civitai]:
    page = b"<!DOCTYPE html><html>Please log in</html>" * 4
    served = Civitai(
        models=[
            civitai_model(1, "Ink Style", "LORA", [(11, "inkStyle_v1.safetensors", lora_bytes)]),
            civitai_model(
                2, "Dream Base", "Checkpoint", [(21, "dreamBase_v2.safetensors", checkpoint)]
            ),
            civitai_model(
                3, "Risky", "LORA", [(31, "risky.safetensors", lora_bytes)], scan="Danger"
            ),
            civitai_model(
                4,
                "Old Pickle",
                "Checkpoint",
                [(41, "old.ckpt", b"\x80\x04pickle")],
                file_format="PickleTensor",
            ),
            civitai_model(
                5, "Wrong Hash", "LORA", [(51, "wrong.safetensors", lora_bytes)], sha256="0" * 64
            ),
            civitai_model(6, "A VAE", "VAE", [(61, "vae.safetensors", checkpoint)]),
            civitai_model(
                7,
                "Login Page",
                "LORA",
                [(71, "page.safetensors", page)],
                sha256=hashlib.sha256(page).hexdigest(),
            ),
            civitai_model(
                8, "Spicy Style", "LORA", [(81, "spicy.safetensors", lora_bytes)], nsfw=True
            ),
            civitai_model(9, "Ink Base", "Checkpoint", [(91, "inkBase.safetensors", checkpoint)]),
        ],
        blobs={
            11: lora_bytes,
            21: checkpoint,
            31: lora_bytes,
            41: b"\x80\x04pickle",
            51: lora_bytes,
            61: checkpoint,
            71: page,
            81: lora_bytes,
            91: checkpoint,
        },
    )
    with civitai_serving(served) as running:
        yield running


def cv(service: Civitai, *, token: bool = True, **fields: Any) -> SourceSettings:
    """Settings for the stand-in, whose storage host is another port on loopback: a
    private address, reached only where `models.allow_private_urls` allows it."""
    fields = {"allow_private_urls": True, **fields}
    return SourceSettings(
        civitai_url=service.url, civitai_token=service.token if token else "", **fields
    )


def test_a_civitai_lora_lands_among_the_loras_and_the_storage_host_never_sees_the_token(
    store: Store, civitai_service: Civitai, models: Path, lora_bytes: bytes
) -> None:
    store.downloads.queue_download("civitai", {"model_id": 1})
    done = run(store, models, cv(civitai_service))
    assert done.status is DownloadStatus.SUCCEEDED, done.error_message
    assert (done.model, done.kind, done.name) == ("lora/inkStyle_v1", "lora", "inkStyle_v1")
    assert (models / "loras" / "inkStyle_v1.safetensors").read_bytes() == lora_bytes
    to_civitai = [auth for _, path, auth in civitai_service.files.requests if "/download/" in path]
    assert to_civitai == [f"Bearer {civitai_service.token}"]
    assert civitai_service.storage is not None
    assert [auth for _, _, auth in civitai_service.storage.files.requests] == [None]
    stored = json.dumps(store.downloads.get_download(done.id).reference)
    assert civitai_service.token not in stored and "sig=" not in stored


def test_a_civitai_checkpoint_by_version_id_lands_in_the_models_folder(
    store: Store, civitai_service: Civitai, models: Path, checkpoint: bytes
) -> None:
    store.downloads.queue_download("civitai", {"version_id": 20}, name="dream")
    done = run(store, models, cv(civitai_service))
    assert done.status is DownloadStatus.SUCCEEDED, done.error_message
    assert done.model == "sd/dream"
    assert (models / "dream.safetensors").read_bytes() == checkpoint


@pytest.mark.parametrize(
    ("reference", "token", "code", "words"),
    [
        ({"model_id": 1}, False, "unauthorized", "models.civitai_token"),
        ({"model_id": 3}, True, "unsafe_file", "Danger"),
        ({"model_id": 4}, True, "unsafe_format", "allow_pickle"),
        ({"model_id": 5}, True, "download_failed", "SHA-256"),
        ({"model_id": 6}, True, "unsupported_model", "VAE"),
        ({"model_id": 7}, True, "download_failed", "web page"),
        ({"model_id": 404}, True, "download_failed", "no models/404"),
        ({"model_id": 1, "file_id": 99}, True, "download_failed", "no file 99"),
    ],
)
def test_bad_civitai_downloads_fail_with_their_code_and_install_nothing(
    store: Store,
    civitai_service: Civitai,
    models: Path,
    reference: dict[str, int],
    token: bool,
    code: str,
    words: str,
) -> None:
    store.downloads.queue_download("civitai", reference)
    done = run(store, models, cv(civitai_service, token=token))
    assert (done.status, done.error_code) == (DownloadStatus.FAILED, code), done.error_message
    assert words in (done.error_message or "")
    assert civitai_service.token not in (done.error_message or "")
    assert installed(models) == [] and leftovers(models) == []


def test_civitai_browse_filters_types_on_its_side_and_pages(civitai_service: Civitai) -> None:
    settings = cv(civitai_service)
    first = civitai.search(
        settings, "", types=["LORA"], sort=None, nsfw=False, limit=2, cursor=None
    )
    assert [m["id"] for m in first.data] == [1, 3] and first.next_cursor == "2"
    second = civitai.search(
        settings, "", types=["LORA"], sort=None, nsfw=False, limit=2, cursor=first.next_cursor
    )
    assert [m["id"] for m in second.data] == [5, 7] and second.next_cursor is None  # 8 is NSFW
    shown = first.data[0]
    assert shown["thumbnail"] == "https://image.civitai.com/1.jpeg"
    assert shown["versions"][0]["files"][0] == {
        "id": 11,
        "name": "inkStyle_v1.safetensors",
        "size_kb": pytest.approx(shown["versions"][0]["files"][0]["size_kb"]),
        "type": "Model",
        "format": "SafeTensor",
        "primary": True,
    }
    with_nsfw = civitai.search(
        settings, "", types=["LORA"], sort=None, nsfw=True, limit=10, cursor=None
    )
    assert 8 in [m["id"] for m in with_nsfw.data]


def test_civitai_search_uses_cursors_and_filters_types_again_on_our_side(
    civitai_service: Civitai,
) -> None:
    settings = cv(civitai_service)
    # The stand-in ignores `types` with a query, as CivitAI's search did: "ink" matches a
    # LoRA and a checkpoint, and only the LoRA may come back.
    found = civitai.search(
        settings, "ink", types=["LORA"], sort=None, nsfw=False, limit=10, cursor=None
    )
    assert [m["id"] for m in found.data] == [1]
    paged = civitai.search(settings, "ink", types=[], sort=None, nsfw=False, limit=1, cursor=None)
    assert [m["id"] for m in paged.data] == [1] and paged.next_cursor == "1"
    rest = civitai.search(settings, "ink", types=[], sort=None, nsfw=False, limit=1, cursor="1")
    assert [m["id"] for m in rest.data] == [9] and rest.next_cursor is None
    asked = [path for _, path, _ in civitai_service.files.requests]
    assert asked and all(path == "/api/v1/models" for path in asked)


def test_a_civitai_file_by_its_id_and_a_version_by_its_id_name_the_same_file(
    store: Store, civitai_service: Civitai, models: Path, lora_bytes: bytes
) -> None:
    store.downloads.queue_download("civitai", {"model_id": 1, "file_id": 11}, name="by-file")
    store.downloads.queue_download("civitai", {"version_id": 10}, name="by-version")
    for _ in range(2):
        done = run(store, models, cv(civitai_service))
        assert done.status is DownloadStatus.SUCCEEDED, done.error_message
    for name in ("by-file", "by-version"):
        assert (models / "loras" / f"{name}.safetensors").read_bytes() == lora_bytes
    asked = [path for _, path, _ in civitai_service.files.requests if "/download/" in path]
    assert asked == ["/api/download/models/10", "/api/download/models/10"]


def test_civitais_redirect_to_a_private_storage_host_is_refused_and_never_followed(
    store: Store, civitai_service: Civitai, models: Path
) -> None:
    """Only the configured CivitAI is trusted (here on loopback); its storage host is
    another port on loopback, which the address rules refuse without
    `models.allow_private_urls`: the download fails at that hop, never asking it."""
    store.downloads.queue_download("civitai", {"model_id": 1})
    done = run(store, models, cv(civitai_service, allow_private_urls=False))
    assert (done.status, done.error_code) == (DownloadStatus.FAILED, "forbidden_url")
    assert civitai_service.storage is not None
    assert f"127.0.0.1:{civitai_service.storage.port}/files/11/" in (done.error_message or "")
    assert "sig=" not in (done.error_message or "")  # the signed URL's query is not shown
    assert civitai_service.storage.files.requests == []
    assert [p for _, p, _ in civitai_service.files.requests if "/download/" in p]
    assert installed(models) == [] and leftovers(models) == []
