"""Scale-out (DESIGN section 15), with real processes on the real tiny pipeline:

- `runner.devices`: serve starts and supervises one runner per device, each with its own
  name (two CPU "devices" here), and /health shows each;
- on PostgreSQL: three runner processes and two API processes sharing one outbox, 100
  jobs through both APIs and the inbox, two runners SIGKILLed midway and replaced; every
  job succeeds exactly once, in one directory written by one claim, and either API
  serves any job's images.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.live_server import serve, wait_until

pytestmark = pytest.mark.slow

LONG = {"prompt": "long", "steps": 60, "width": 64, "height": 64, "scheduler": "euler"}


def _runners(url: str) -> list[dict[str, Any]]:
    return [
        r for r in httpx.get(url + "/health", timeout=30).json()["runners"] if r["state"] != "gone"
    ]


def test_serve_runs_and_supervises_one_runner_per_device(tmp_path: Path) -> None:
    with serve(tmp_path, runner='name = "box"\ndevices = ["cpu", "cpu"]') as served:
        wait_until(lambda: {r["name"] for r in _runners(served.url)} == {"box-cpu0", "box-cpu1"})
        assert {r["device"].split()[0] for r in _runners(served.url)} == {"cpu"}
        jobs = [
            httpx.post(served.url + "/v1/jobs", json={**LONG, "seed": i}, timeout=30).json()["id"]
            for i in range(4)
        ]
        # both at work at once: two jobs running, one under each name
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
