"""`alice-spool models ...` and `alice-spool generate` through click's runner, on the
real tiny pipeline."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from tests.integration.cli.results import fails, ok


def ok_stderr(result) -> str:  # type: ignore[no-untyped-def]
    ok(result)
    return result.stderr


def test_models_lifecycle(run, data_dir: Path) -> None:
    assert "no models" in run("models", "ls").stderr
    assert json.loads(ok(run("models", "ls", "--json")))["models"] == []
    path = Path(ok(run("models", "create-tiny", "--if-none")).strip())
    assert path == data_dir / "models" / "tiny" and (path / "model_index.json").exists()
    fails(run("models", "create-tiny"), 3, "already exists")
    assert "nothing to do" in ok_stderr(run("models", "create-tiny", "--if-none"))
    ok(run("models", "create-tiny", "--name", "tiny2"))
    listing = json.loads(ok(run("models", "ls", "--json")))
    assert [m["id"] for m in listing["models"]] == ["sd/tiny", "sd/tiny2"]
    assert listing["default"] == "sd/tiny"
    tiny = listing["models"][0]
    assert (tiny["family"], tiny["status"], tiny["native_size"], tiny["smoke_test"]) == (
        "sd1",
        "ok",
        64,
        True,
    )
    table = ok(run("models", "ls"))
    assert "* sd/tiny" in table and "SD 1.x" in table and "smoke test" in table
    assert "sd/tiny2" in ok(run("models", "default", "tiny2"))
    assert json.loads(ok(run("models", "ls", "--json")))["default"] == "sd/tiny2"
    fails(run("models", "default", "nope"), 3, "[model_not_found]")
    assert "deleted sd/tiny2" in ok(run("models", "rm", "tiny2", "--yes"))
    assert json.loads(ok(run("models", "ls", "--json")))["default"] == "sd/tiny"
    fails(run("models", "rm", "tiny2", "--yes"), 3, "not in")
    assert run("models", "rm", "tiny", input="n\n").exit_code == 1  # declined: kept
    assert (data_dir / "models" / "tiny").exists()


def test_generate_writes_pngs(run, tmp_path: Path) -> None:
    ok(run("models", "create-tiny"))
    out = tmp_path / "out" / "fox.png"
    summary = json.loads(
        ok(run("generate", "a fox", "-o", str(out), "--seed", "5", "--steps", "3", "--json"))
    )
    assert summary["files"] == [str(out)] and summary["seeds"] == [5]
    assert (summary["model"], summary["width"], summary["height"]) == ("sd/tiny", 64, 64)
    with Image.open(out) as image:
        assert image.size == (64, 64) and image.format == "PNG"
    first = out.read_bytes()
    ok(run("generate", "a fox", "-o", str(out), "--seed", "5", "--steps", "3"))
    assert out.read_bytes() == first  # the same seed: the same image
    two = run("generate", "a fox", "-o", str(tmp_path / "b.png"), "-n", "2", "--steps", "2")
    assert ok(two).count("seed") == 2
    assert (tmp_path / "b-1.png").exists() and (tmp_path / "b-2.png").exists()


def test_generate_refuses_bad_requests_before_loading(run, tmp_path: Path) -> None:
    fails(run("generate", "x", "-o", str(tmp_path / "x.png")), 3, "models create-tiny")
    ok(run("models", "create-tiny"))
    fails(run("generate", "x", "--steps", "0"), 3, "[invalid_parameters]")
    fails(run("generate", "x", "--model", "nope"), 3, "[model_not_found]")
    fails(run("generate", "x", "--device", "cuda:7"), 3, "no CUDA GPU")
    assert not (tmp_path / "out.png").exists()


def test_pull_offline_is_a_clear_error_and_leaves_nothing(run, data_dir: Path) -> None:
    # The suite runs huggingface_hub offline (HF_HUB_OFFLINE): the download fails saying so.
    stderr = fails(run("models", "pull", "someone/some-model"), 3, "[download_failed]")
    assert "(source_unavailable)" in stderr and "HF_HUB_OFFLINE" in stderr
    assert not any(p for p in (data_dir / "models").rglob("*") if ".downloads" in p.parts)
    ok(run("models", "create-tiny"))
    fails(run("models", "pull", "someone/tiny"), 3, "[model_exists]")
    fails(run("models", "pull", "someone/x", "--name", "../up"), 3, "[invalid_parameters]")
    fails(run("models", "pull", "civitai:abc"), 3, "takes numbers")
    fails(run("models", "pull", "someone/x", "--sha256", "0" * 64), 3, "unknown field 'sha256'")
    listed = json.loads(ok(run("models", "downloads", "--json")))
    assert [(d["name"], d["status"], d["error"]["code"]) for d in listed] == [
        ("some-model", "failed", "source_unavailable")
    ]


def test_pull_a_lora_by_url_resumes_verifies_and_refuses_clearly(
    run, data_dir: Path, tmp_path: Path
) -> None:
    """`models pull URL`: a queued download run in the command, resumed when the
    connection drops; loopback refused by default with nothing queued; a wrong SHA-256
    fails and installs nothing; the durable row says how it went."""
    import hashlib

    from alice_spool.engine.tiny import create_tiny_lora
    from alice_spool.store import Store
    from tests.support.remote import Remote, serving

    lora = create_tiny_lora(tmp_path / "made").read_bytes()
    with serving(Remote(files={"/style.safetensors": lora})) as remote:
        url = f"{remote.url}/style.safetensors"
        fails(run("models", "pull", url), 3, "[forbidden_url]")
        assert remote.requests == []
        allowed = ("--set", "models.allow_private_urls=true")
        fails(run(*allowed, "models", "pull", url, "--sha256", "0" * 64), 3, "SHA-256")
        remote.drop_after["/style.safetensors"] = 20_000
        sha = hashlib.sha256(lora).hexdigest()
        pulled = ok(run(*allowed, "models", "pull", url, "--name", "my-style", "--sha256", sha))
        assert pulled.strip() == "lora/my-style"
        assert remote.ranges[-1] is not None  # the second try resumed
    assert (data_dir / "models" / "loras" / "my-style.safetensors").read_bytes() == lora
    assert not (data_dir / "models" / "loras" / "style.safetensors").exists()
    listed = json.loads(ok(run("models", "ls", "--json")))
    assert [entry["id"] for entry in listed["loras"]] == ["lora/my-style"]
    rows = Store.open(f"sqlite:///{data_dir / 'alice.db'}").downloads.list_downloads()
    assert [(d.status.value, d.error_code) for d in rows] == [
        ("succeeded", None),
        ("failed", "download_failed"),
    ]
    fails(run(*allowed, "models", "pull", url, "--kind", "diffusers"), 3, "kind must be")


def test_search_pull_follow_as_json_list_and_cancel_downloads(
    run, data_dir: Path, tmp_path: Path
) -> None:
    """`models search` against a CivitAI stand-in says what to pull; `models pull
    civitai:ID --json` prints the download as JSON lines to its end; `models downloads`
    lists it; `models cancel` ends a queued one."""
    from alice_spool.engine.tiny import create_tiny_lora
    from tests.support.sources import Civitai, civitai_model, civitai_serving

    lora = create_tiny_lora(tmp_path / "made").read_bytes()
    service = Civitai(
        models=[
            civitai_model(1, "Ink Style", "LORA", [(11, "inkStyle.safetensors", lora)]),
            civitai_model(2, "Ink Base", "Checkpoint", [(21, "inkBase.safetensors", lora)]),
        ],
        blobs={11: lora, 21: lora},
    )
    with civitai_serving(service):
        # CivitAI's download redirects to its storage, here another loopback port.
        given = ("--set", f"models.civitai_url={service.url}",
                 "--set", f"models.civitai_token={service.token}",
                 "--set", "models.allow_private_urls=true")  # fmt: skip
        found = ok(run(*given, "models", "search", "ink", "--type", "lora"))
        assert "civitai:1" in found and "civitai:2" not in found
        listed = json.loads(ok(run(*given, "models", "search", "--json")))
        assert [item["id"] for item in listed["data"]] == [1, 2]
        lines = ok(run(*given, "models", "pull", "civitai:1", "--json")).strip().splitlines()
        shown = [json.loads(line) for line in lines]
        assert (
            shown[0]["status"] in ("queued", "downloading") and shown[-1]["status"] == "succeeded"
        )
        assert shown[-1]["model"] == "lora/inkStyle"
        assert service.token not in "\n".join(lines)
    assert (data_dir / "models" / "loras" / "inkStyle.safetensors").read_bytes() == lora
    table = ok(run("models", "downloads"))
    assert "inkStyle" in table and "succeeded" in table
    from alice_spool.store import Store

    store = Store.open(f"sqlite:///{data_dir / 'alice.db'}")
    queued = store.downloads.queue_download("civitai", {"model_id": 2})
    assert ok(run("models", "cancel", queued.id)).strip() == f"{queued.id}: cancelled"
    assert store.downloads.get_download(queued.id).status.value == "cancelled"
    fails(run("models", "cancel", queued.id + "0"), 3, "[not_found]")


def test_generate_on_flux_and_sd3_runs_their_familys_defaults(run, tmp_path: Path) -> None:
    """The CLI's own engine: a FLUX.1 schnell and an SD 3.x model, listed with their
    family and variant, run what the request left out as their family does."""
    flux = ("--family", "flux", "--variant", "schnell")
    ok(run("models", "create-tiny", "--name", "schnell", *flux))
    ok(run("models", "create-tiny", "--name", "three", "--family", "sd3"))
    table = ok(run("models", "ls"))
    assert "FLUX.1 schnell" in table and "SD 3.x" in table
    out = tmp_path / "flux.png"
    summary = json.loads(ok(run("generate", "a fox", "-o", str(out), "--model", "schnell",
                                "--seed", "3", "--json")))  # fmt: skip
    assert (summary["model"], summary["steps"], summary["width"]) == ("sd/schnell", 4, 64)
    with Image.open(out) as image:
        assert image.size == (64, 64)
    sd3 = json.loads(ok(run("generate", "a fox", "-o", str(tmp_path / "sd3.png"), "--model",
                            "three", "--steps", "3", "--json")))  # fmt: skip
    assert (sd3["model"], sd3["steps"]) == ("sd/three", 3)
    fails(run("generate", "x", "--model", "schnell", "--negative-prompt", "blur"), 3,
          "negative_prompt")  # fmt: skip
