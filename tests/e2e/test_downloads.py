"""Model downloads through the real daemon (`alice-spool serve` in a subprocess, its
download workers inside), against local stand-ins of the Hugging Face Hub and CivitAI
given to it in its config: a repository downloaded through the API then generates an
image; progress as server-sent events; ALICE's routes; delete; the daemon SIGKILLed
mid-file resumes on restart without asking for the done bytes again; cancel; two
`alice-spool downloader` processes never take one download; and neither token ever
appears in an answer or a log line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from alice_spool.engine.tiny import create_tiny, create_tiny_lora
from alice_spool.store import Store
from tests.support.live_server import Served, free_port, serve, wait_until
from tests.support.remote import Remote, serving
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

pytestmark = pytest.mark.slow
HF_TOKEN = "hf_e2e_secret_token_0123456789"
CIVITAI_TOKEN = "civitai_e2e_secret_token_abcdef"
BIG = 12  # MiB: several progress reports, and a transfer a test can hold mid-way


@dataclass
class Sources:
    hub: Hub
    civitai: Civitai
    tiny: dict[str, bytes]
    lora: bytes
    big: bytes


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sources]:
    made = tmp_path_factory.mktemp("made")
    tiny = files_of(create_tiny(made))
    lora = create_tiny_lora(made).read_bytes()
    big = checkpoint_bytes(BIG, seed=7)
    hub = Hub(
        repos={
            "org/tiny-sd": Repo(tiny),
            "org/gated-sd": Repo(tiny, gated=True),
            "org/big": Repo({"big.safetensors": big}),
        },
        token=HF_TOKEN,
    )
    civitai = Civitai(
        models=[civitai_model(1, "Ink Style", "LORA", [(11, "inkStyle_v1.safetensors", lora)])],
        blobs={11: lora},
        token=CIVITAI_TOKEN,
    )
    with hub_serving(hub), civitai_serving(civitai):
        yield Sources(hub, civitai, tiny, lora, big)


def config(sources: Sources) -> str:
    return f"""
[models]
hf_endpoint = "{sources.hub.url}"
hf_token = "{HF_TOKEN}"
hf_variant = ""
civitai_url = "{sources.civitai.url}"
civitai_token = "{CIVITAI_TOKEN}"
# CivitAI's downloads redirect to its storage: here another port on 127.0.0.1, which only
# this allows (tests/integration/test_url_rules.py shows the hop refused without it).
allow_private_urls = true
"""


def daemon(root: Path, sources: Sources, models: Path, **options: Any) -> Any:
    """The api process and a runner (serve's supervision is tested elsewhere), with the
    tiny model installed."""
    log = root / "daemon.log"
    return serve(
        root,
        config(sources),
        logging=f'level = "DEBUG"\nfile = "{log}"',
        hub_offline=False,
        models=models,
        split=True,
        **options,
    )


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, sources: Sources, tiny_models: Path
) -> Iterator[Served]:
    with daemon(tmp_path_factory.mktemp("serve"), sources, tiny_models) as server:
        yield server


def post(server: Served, path: str, body: Any) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=30)


def finished(server: Served, download_id: str, timeout: float = 90) -> dict[str, Any]:
    shown: dict[str, Any] = {}

    def done() -> bool:
        shown.update(server.get(f"/v1/downloads/{download_id}").json())
        return shown["status"] in ("succeeded", "failed", "cancelled")

    wait_until(done, timeout=timeout)
    return shown


ANSWERS: list[str] = []  # every answer body of this module's daemon, for the token check


def seen(answer: httpx.Response) -> httpx.Response:
    ANSWERS.append(answer.text)
    return answer


def test_a_hub_repository_downloaded_through_the_api_generates_an_image(
    live: Served, sources: Sources
) -> None:
    made = seen(post(live, "/v1/downloads", {"source": "huggingface", "repo": "org/tiny-sd"}))
    assert made.status_code == 202, made.text
    done = finished(live, made.json()["id"])
    assert (done["status"], done["model"]) == ("succeeded", "sd/tiny-sd"), done
    folder = live.root / "var" / "models" / "tiny-sd"
    assert files_of(folder) == sources.tiny
    ids = [m["id"] for m in seen(live.get("/v1/models")).json()["data"]]
    assert "sd/tiny-sd" in ids  # the registry sees it at once
    details = seen(live.get("/v1/models/sd/tiny-sd")).json()
    assert (details["family"], details["format"], details["status"]) == ("sd1", "diffusers", "ok")
    job = seen(
        post(
            live,
            "/v1/jobs",
            {
                "prompt": "a harbour",
                "model": "sd/tiny-sd",
                "steps": 2,
                "width": 64,
                "height": 64,
                "seed": 3,
            },
        )
    )
    assert job.status_code == 202, job.text
    shown: dict[str, Any] = {}

    def job_done() -> bool:
        shown.update(live.get(f"/v1/jobs/{job.json()['id']}").json())
        return shown["status"] in ("succeeded", "failed")

    wait_until(job_done, timeout=120)
    assert shown["status"] == "succeeded", shown
    image = httpx.get(shown["image_urls"][0], timeout=30)
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")


def test_progress_comes_as_server_sent_events_until_done(live: Served, sources: Sources) -> None:
    made = seen(
        post(
            live,
            "/v1/downloads",
            {"source": "huggingface", "repo": "org/big", "name": "big-events"},
        )
    )
    assert made.status_code == 202, made.text
    events: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream(
        "GET", f"{live.url}/v1/downloads/{made.json()['id']}/events", timeout=60
    ) as stream:
        name = ""
        for line in stream.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line.split(":", 1)[1])))
                if name == "done":
                    break
    kinds = [name for name, _ in events]
    assert kinds[-1] == "done" and kinds.count("done") == 1 and "progress" in kinds
    done = [shown["bytes_done"] for _, shown in events]
    assert done == sorted(done) and done[-1] == len(sources.big)
    assert events[-1][1]["status"] == "succeeded" and events[-1][1]["model"] == "sd/big-events"


def test_alice_routes_search_queue_report_and_cancel(live: Served, sources: Sources) -> None:
    found = seen(post(live, "/v1/models/search/civitai", {"query": "", "types": ["LORA"]})).json()
    assert [item["id"] for item in found["data"]] == [1]
    link = found["data"][0]["versions"][0]["files"][0]["downloadUrl"]
    assert CIVITAI_TOKEN not in link and "token" not in link
    hub = seen(post(live, "/v1/models/search/huggingface", {"query": "tiny"})).json()
    assert [item["id"] for item in hub["data"]] == ["org/tiny-sd"]
    native = seen(live.get("/v1/models/search?source=civitai&types=LORA,Checkpoint")).json()
    assert [item["id"] for item in native["data"]] == [1] and native["next_cursor"] is None
    queued = seen(post(live, "/v1/models/download/civitai", {"modelId": 1, "modelType": "LORA"}))
    assert queued.status_code == 202, queued.text
    task_id = queued.json()["task_id"]
    assert queued.json()["status"] == "queued"
    finished(live, task_id)
    task = seen(live.get(f"/v1/models/download/status/{task_id}")).json()
    assert (task["status"], task["progress"], task["name"]) == ("completed", 100.0, "inkStyle_v1")
    assert (
        live.root / "var" / "models" / "loras" / "inkStyle_v1.safetensors"
    ).read_bytes() == sources.lora
    listed = seen(live.get("/v1/models/download/status")).json()["data"]
    assert task_id in [t["id"] for t in listed]
    loras = seen(live.get("/v1/models/loras")).json()["data"]
    assert [(entry["id"], entry["baseModel"]) for entry in loras] == [
        ("lora/inkStyle_v1", "SD 1.x")
    ]
    gone = seen(httpx.delete(f"{live.url}/v1/loras/lora/inkStyle_v1", timeout=10))
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    assert seen(live.get("/v1/models/loras")).json()["data"] == []
    assert httpx.delete(f"{live.url}/v1/loras/lora/inkStyle_v1", timeout=10).status_code == 404
    url = seen(post(live, "/v1/models/download/url", {"url": "ftp://example.org/x.safetensors"}))
    assert url.status_code == 400 and url.json()["error"]["param"] == "url"
    for path, body, field in [  # each refusal names ALICE's own field
        ("/v1/models/download/civitai", {"modelType": "LORA"}, "modelId"),
        ("/v1/models/download/civitai", {"versionId": "12a"}, "versionId"),
        ("/v1/models/download/huggingface", {"modelId": "org/x", "filename": "../x"}, "filename"),
        ("/v1/models/download/huggingface", {"modelId": "org/x", "revision": "a..b"}, "revision"),
        ("/v1/models/download/url", {"url": "https://example.org/x", "isLora": 1}, "isLora"),
        ("/v1/models/search/civitai", {"page": 51}, "page"),
    ]:
        refused = seen(post(live, path, body))
        assert refused.status_code == 400 and refused.json()["error"]["param"] == field, body


def test_a_running_download_cancelled_removes_its_partial_files(
    live: Served, sources: Sources
) -> None:
    sources.hub.files.hold = threading.Event()
    try:
        made = seen(
            post(
                live,
                "/v1/downloads",
                {"source": "huggingface", "repo": "org/big", "name": "big-cancelled"},
            )
        )
        download_id = made.json()["id"]
        staging = live.root / "var" / "models" / ".downloads" / download_id
        part = staging / "file.part"
        wait_until(lambda: part.exists() and part.stat().st_size >= 1 << 20)  # then held
        cancel = httpx.delete(f"{live.url}/v1/models/download/{download_id}", timeout=10)
        assert cancel.json() == {"status": "cancelled", "task_id": download_id}
        sources.hub.files.hold.set()  # the worker sees the cancel at its next report
        assert finished(live, download_id)["status"] == "cancelled"
        wait_until(lambda: not staging.exists(), timeout=10)
        assert not (live.root / "var" / "models" / "big-cancelled.safetensors").exists()
    finally:
        sources.hub.files.hold.set()
        sources.hub.files.hold = None


def test_no_token_appears_in_any_answer_or_log_line(live: Served, sources: Sources) -> None:
    gated = post(
        live, "/v1/downloads", {"source": "huggingface", "repo": "org/gated-sd", "name": "gated"}
    )
    assert finished(live, gated.json()["id"])["status"] == "succeeded"
    answers = [
        seen(live.get("/v1/downloads")),
        seen(live.get("/v1/models/download/status")),
        seen(live.get("/health")),
        seen(live.get("/openapi.json")),
    ]
    assert all(a.status_code == 200 for a in answers)
    text = "\n".join(ANSWERS)
    log = (live.root / "daemon.log").read_text()
    assert "download" in log  # it logged its downloads (at DEBUG)
    for token in (HF_TOKEN, CIVITAI_TOKEN):
        assert token not in text
        assert token not in log
    stored = Store.open(f"sqlite:///{live.root / 'var' / 'alice.db'}").downloads.list_downloads()
    assert not any(
        HF_TOKEN in json.dumps(d.reference) or CIVITAI_TOKEN in json.dumps(d.reference)
        for d in stored
    )
    sent = [auth for _, path, auth in sources.hub.files.requests if "gated-sd/resolve" in path]
    assert sent and set(sent) == {f"Bearer {HF_TOKEN}"}  # in the header, as it must be


def test_the_daemon_killed_mid_file_resumes_on_restart_without_the_done_bytes(
    tmp_path: Path, sources: Sources, tiny_models: Path
) -> None:
    sources.hub.files.hold = threading.Event()
    key = "org/big/big.safetensors"
    sources.hub.files.ranges.pop(key, None)
    port = free_port()
    try:
        with daemon(tmp_path, sources, tiny_models, port=port) as server:
            made = post(
                server,
                "/v1/downloads",
                {"source": "huggingface", "repo": "org/big", "name": "big-resumed"},
            )
            download_id = made.json()["id"]
            part = tmp_path / "var" / "models" / ".downloads" / download_id / "file.part"
            wait_until(lambda: part.exists() and part.stat().st_size >= 1 << 20)
            server.process.send_signal(signal.SIGKILL)
            server.process.wait(30)
        kept = part.stat().st_size
        sources.hub.files.hold.set()
        sources.hub.files.hold = None
        with daemon(tmp_path, sources, tiny_models, port=port) as server:
            done = finished(server, download_id)
            assert done["status"] == "succeeded", done
    finally:
        if sources.hub.files.hold is not None:
            sources.hub.files.hold.set()
            sources.hub.files.hold = None
    assert sources.hub.files.ranges[key] == [None, f"bytes={kept}-"]
    assert (tmp_path / "var" / "models" / "big-resumed.safetensors").read_bytes() == sources.big
    assert not (tmp_path / "var" / "models" / ".downloads" / download_id).exists()


def test_two_downloader_processes_never_take_one_download(tmp_path: Path) -> None:
    bodies = {f"/m{i}.safetensors": checkpoint_bytes(2, seed=i) for i in range(6)}
    with serving(Remote(files=bodies)) as remote:
        (tmp_path / "config.toml").write_text(
            f'[paths]\ndata_dir = "{tmp_path / "var"}"\n[models]\nallow_private_urls = true\n'
        )
        base = [sys.executable, "-m", "alice_spool", "--config", str(tmp_path / "config.toml")]
        subprocess.run([*base, "db", "upgrade"], check=True, capture_output=True, cwd=tmp_path)
        store = Store.open(f"sqlite:///{tmp_path / 'var' / 'alice.db'}")
        made = [
            store.downloads.queue_download("url", {"url": remote.url + path}, name=f"m{i}")
            for i, path in enumerate(bodies)
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ALICE_")}
        logs = [tmp_path / f"downloader-{i}.log" for i in range(2)]
        workers = []
        for log in logs:
            with log.open("wb") as stderr:
                workers.append(
                    subprocess.Popen(
                        [*base, "downloader", "--concurrency", "2"],
                        cwd=tmp_path,
                        env=env,
                        stderr=stderr,
                    )
                )
        try:
            # each says it is ready (its workers are running) before it is stopped
            wait_until(
                lambda: all(b"download workers running" in log.read_bytes() for log in logs),
                timeout=90,
            )
            wait_until(
                lambda: all(store.downloads.get_download(d.id).status.finished for d in made),
                timeout=90,
            )
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            codes = [worker.wait(30) for worker in workers]
        rows = [store.downloads.get_download(d.id) for d in made]
        assert [(r.status.value, r.attempts) for r in rows] == [("succeeded", 1)] * 6
        owners = {r.id: r.finished_at for r in rows}
        assert len(owners) == 6
        fetched = [path for path, _ in remote.requests]
        assert sorted(fetched) == sorted(bodies)  # each file asked for exactly once
        assert codes == [0, 0], [log.read_text(errors="replace")[-2000:] for log in logs]
    for i, body in enumerate(bodies.values()):
        assert (tmp_path / "var" / "models" / f"m{i}.safetensors").read_bytes() == body
