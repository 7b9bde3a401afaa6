"""The cron example end to end: examples/nightly.sh submits a batch, waits for a real
runner on the tiny model, reports, and exits non-zero only if a job failed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from alice_spool.spec import parse_jsonl
from tests.support.fake_model import write_fake_model

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_the_example_batch_is_valid() -> None:
    requests = parse_jsonl((REPO / "examples" / "nightly.jsonl").read_text(), "nightly.jsonl")
    assert [r.idempotency_key for r in requests] == [
        "nightly-harbour",
        "nightly-forest",
        "nightly-fox",
    ]
    assert "alice-spool" in (REPO / "examples" / "crontab").read_text()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    from alice_spool.engine.tiny import create_tiny

    create_tiny(tmp_path / "var" / "models")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ALICE_")}
    environment.update(
        ALICE_PATHS_DATA_DIR=str(tmp_path / "var"),
        ALICE_RUNNER_DEVICE="cpu",
        ALICE_LOGGING_LEVEL="WARNING",
        ALICE_SPOOL=f"{sys.executable} -m alice_spool",
    )
    subprocess.run(
        [sys.executable, "-m", "alice_spool", "db", "upgrade"], env=environment, check=True
    )
    runner = subprocess.Popen([sys.executable, "-m", "alice_spool", "runner"], env=environment)
    yield environment
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(60) == 0


def nightly(env: dict[str, str], batch: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "examples" / "nightly.sh"), str(batch), "120"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_nightly_script_on_the_tiny_model(env: dict[str, str], tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(
        "\n".join(
            json.dumps(
                {"id": f"2026-11-22-{i}", "prompt": f"picture {i}", "steps": 2, "n": 1 + i % 2}
            )
            for i in range(3)
        )
    )
    first = nightly(env, good)
    assert first.returncode == 0, first.stdout + first.stderr
    batch_id = first.stdout.split()[1]
    pngs = [line for line in first.stdout.splitlines() if line.endswith(".png")]
    assert len(pngs) == 4 and all(Path(p).is_file() for p in pngs)
    assert "succeeded 3" in first.stdout

    again = nightly(env, good)  # cron ran it twice: the same batch, nothing new
    assert again.returncode == 0 and again.stdout.split()[1] == batch_id

    refused = tmp_path / "refused.jsonl"  # a model that is not installed: refused whole
    refused.write_text(
        json.dumps({"prompt": "fine", "steps": 2})
        + "\n"
        + json.dumps({"prompt": "no such model", "model": "sd/missing", "steps": 2})
    )
    nothing = nightly(env, refused)
    assert nothing.returncode == 3  # submit's error, before anything is queued
    assert "refused.jsonl line 2: model sd/missing is not installed" in nothing.stderr
    assert "batch" not in nothing.stdout

    # A model that is installed but cannot load (configs, no weights) fails at run time.
    # (Not being the smoke-test model, it is the default now: the good line names tiny.)
    write_fake_model(Path(env["ALICE_PATHS_DATA_DIR"]) / "models" / "weightless")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt": "fine", "model": "sd/tiny", "steps": 2})
        + "\n"
        + json.dumps({"prompt": "cannot load", "model": "sd/weightless", "steps": 2})
    )
    failed = nightly(env, bad)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "FAILED" in failed.stdout and "model_load_failed" in failed.stdout
    report = subprocess.run(
        [sys.executable, "-m", "alice_spool", "batch-report", failed.stdout.split()[1], "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert report.returncode == 1
    summary = json.loads(report.stdout)
    assert summary["counts"]["succeeded"] == 1 and summary["counts"]["failed"] == 1, summary
    assert not summary["ok"]
