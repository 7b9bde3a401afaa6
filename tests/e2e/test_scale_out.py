"""Scale-out, with real processes on the real tiny pipeline:

- `runner.devices`: serve starts and supervises one runner per device, each with its own
  name (two CPU "devices" here), and /health shows each;
- on PostgreSQL: three runner processes and two API processes sharing one outbox, 100
  jobs through both APIs and the inbox, two runners SIGKILLed midway and replaced; every
  job succeeds exactly once, in one directory written by one claim, and either API
  serves any job's images.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from alice_spool import migrate
from alice_spool.outbox import RESULT
from alice_spool.states import JobStatus
from alice_spool.store import Store
from tests.support.live_server import free_port, http_get, install_models, serve, wait_until

pytestmark = pytest.mark.slow

LONG = {"prompt": "long", "steps": 60, "width": 64, "height": 64, "scheduler": "euler"}


def _runners(url: str) -> list[dict[str, Any]]:
    return [
        r for r in http_get(url + "/health", timeout=30).json()["runners"] if r["state"] != "gone"
    ]


def test_serve_runs_and_supervises_one_runner_per_device(tmp_path: Path, tiny_models: Path) -> None:
    runner = 'name = "box"\ndevices = ["cpu", "cpu"]\nmax_batch = 1'
    with serve(tmp_path, runner=runner, models=tiny_models) as served:
        wait_until(lambda: {r["name"] for r in _runners(served.url)} == {"box-cpu0", "box-cpu1"})
        assert {r["device"].split()[0] for r in _runners(served.url)} == {"cpu"}
        jobs = [
            httpx.post(served.url + "/v1/jobs", json={**LONG, "seed": i}, timeout=30).json()["id"]
            for i in range(4)
        ]
        # both at work at once: two jobs running (one job per call), one under each name
        wait_until(
            lambda: (
                {r["name"] for r in _runners(served.url) if r["state"] == "busy"}
                == {"box-cpu0", "box-cpu1"}
            ),
            timeout=120,
        )
        # one runner SIGKILLed: serve starts it again under its name, its job reruns
        victim = next(r for r in _runners(served.url) if r["name"] == "box-cpu1")
        os.kill(int(victim["owner"].split("/")[1]), signal.SIGKILL)
        wait_until(
            lambda: any(
                r["name"] == "box-cpu1" and r["owner"] != victim["owner"]
                for r in _runners(served.url)
            ),
            timeout=120,
        )

        def finished() -> bool:
            states = [served.get(f"/v1/jobs/{job_id}").json()["status"] for job_id in jobs]
            assert "failed" not in states
            return states == ["succeeded"] * 4

        wait_until(finished, timeout=300)
        attempts = [served.get(f"/v1/jobs/{job_id}").json()["attempts"] for job_id in jobs]
        # the killed runner's jobs (its batch) ran twice, the others once
        assert set(attempts) == {1, 2}, attempts
        outbox = tmp_path / "var" / "outbox"
        assert sorted(p.name for p in outbox.iterdir()) == sorted(jobs)
        health = served.get("/health").json()
        assert {r["name"] for r in health["runners"] if r["state"] != "gone"} == {
            "box-cpu0",
            "box-cpu1",
        }


# -- many hosts on one PostgreSQL --------------------------------------------------------

JOBS_PER_API = 40
JOBS_BY_INBOX = 20
QUICK = {"steps": 2, "width": 64, "height": 64, "scheduler": "euler"}


class Node:
    """One `alice-spool` process of the cluster, on the shared config."""

    def __init__(self, root: Path, name: str, *command: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ALICE_")}
        env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
        argv = [sys.executable, "-m", "alice_spool", "--config", str(root / "config.toml")]
        self.log = (root / f"{name}.log").open("wb")
        self.process = subprocess.Popen(
            [*argv, *command], cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def begin_stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        self.begin_stop()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.kill()
        self.log.close()


@pytest.fixture
def cluster(
    tmp_path: Path, fresh_postgres: str, tiny_models: Path
) -> Iterator[tuple[Path, Store, list[Node]]]:
    data = tmp_path / "shared"  # the storage every node mounts: outbox, inputs, models
    (tmp_path / "config.toml").write_text(
        f"""
[paths]
data_dir = "{data}"
database_url = "{fresh_postgres}"
[server]
host = "127.0.0.1"
request_timeout_s = 120
[runner]
device = "cpu"
lease_s = 4
[generation]
default_steps = 2
[logging]
level = "WARNING"
"""
    )
    install_models(tiny_models, data)
    store = Store.open(fresh_postgres)
    migrate.upgrade(store.db)
    nodes: list[Node] = []
    try:
        yield tmp_path, store, nodes
    finally:
        for node in nodes:  # all told at once, then each waited for (each takes seconds)
            node.begin_stop()
        for node in nodes:
            node.stop()
        store.close()


def test_three_runners_two_apis_and_an_inbox_on_postgresql_lose_nothing_and_run_nothing_twice(
    cluster: tuple[Path, Store, list[Node]],
) -> None:
    root, store, nodes = cluster
    ports = [free_port(), free_port()]
    apis = [
        Node(root, "api-a", "api", "--port", str(ports[0])),  # the inbox is watched here
        Node(root, "api-b", "--set", "inbox.enabled=false", "api", "--port", str(ports[1])),
    ]
    runners = {
        name: Node(root, name, "runner", "--device", "cpu", "--name", name)
        for name in ("r1", "r2", "r3")
    }
    nodes += [*apis, *runners.values()]
    urls = [f"http://127.0.0.1:{port}" for port in ports]

    def up(url: str) -> bool:
        try:
            return http_get(url + "/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(lambda: all(up(url) for url in urls), timeout=120)
    submitted: dict[str, int] = {}  # job id -> the API (0, 1) it came through
    for index in range(JOBS_PER_API):
        for which, url in enumerate(urls):
            body = {**QUICK, "prompt": f"job {which}-{index}", "seed": 1000 * which + index}
            answer = httpx.post(url + "/v1/jobs", json=body, timeout=30)
            assert answer.status_code in (200, 201, 202), answer.text
            submitted[answer.json()["id"]] = which
    inbox = root / "shared" / "inbox"
    for index in range(JOBS_BY_INBOX):
        request = {**QUICK, "prompt": f"file {index}", "seed": 5000 + index}
        (inbox / f".part-{index}").write_text(json.dumps(request))
        (inbox / f".part-{index}").rename(inbox / f"request-{index}.json")
    total = 2 * JOBS_PER_API + JOBS_BY_INBOX

    def succeeded() -> int:
        return store.jobs.counts()[JobStatus.SUCCEEDED]

    wait_until(lambda: succeeded() >= total // 4, timeout=240)
    for name in ("r1", "r2"):  # two runner hosts die midway; new ones take their place
        runners[name].kill()
    for name in ("r4", "r5"):
        nodes.append(Node(root, name, "runner", "--device", "cpu", "--name", name))

    def all_done() -> bool:
        counts = store.jobs.counts()
        assert counts[JobStatus.FAILED] == 0 and counts[JobStatus.CANCELLED] == 0
        return counts[JobStatus.SUCCEEDED] == total

    wait_until(all_done, timeout=420)
    jobs = store.jobs.list_jobs(limit=1000).jobs
    assert len(jobs) == total and all(job.status is JobStatus.SUCCEEDED for job in jobs)
    assert sum(job.source.value == "inbox" for job in jobs) == JOBS_BY_INBOX
    totals = store.counters.counters()  # counted in each finishing transaction: finished once each
    assert (totals["jobs_finished:succeeded"], totals["images"]) == (total, total)
    outbox = root / "shared" / "outbox"
    directories = sorted(p.name for p in outbox.iterdir() if not p.name.startswith("."))
    assert directories == sorted(job.id for job in jobs)  # one directory per job
    for job in jobs:
        written = json.loads((outbox / job.id / RESULT).read_text())
        # one claim's files, the result the table recorded: the claim that succeeded, or
        # an earlier one whose runner died after writing them whole (finished from them)
        assert written == job.result, job.id
        assert 1 <= written["claim"] <= job.claims, job.id
        assert written["status"] == "succeeded" and len(written["images"]) == 1
        assert sorted(p.name for p in (outbox / job.id).iterdir()) == [f"{job.id}-0.png", RESULT]
    assert any(job.attempts > 1 for job in jobs)  # the killed runners' jobs ran again
    # either API serves any job's images, whichever door it came through
    for job_id, which in list(submitted.items())[:: JOBS_PER_API // 5]:
        other = urls[1 - which]
        view = httpx.get(f"{other}/v1/jobs/{job_id}", timeout=30).json()
        [image_url] = view["image_urls"]
        assert image_url.startswith(other)
        image = httpx.get(image_url, timeout=30)
        assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
