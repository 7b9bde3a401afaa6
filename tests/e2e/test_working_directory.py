"""serve's children run the alice_spool serve runs, whatever the working directory: run
from a directory holding an `alice_spool` folder (a clone of the repository, with the
package installed elsewhere), they must not import that folder instead."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.live_server import free_port, wait_until

pytestmark = pytest.mark.slow

DECOY = 'raise ImportError("DECOY: the alice_spool of the working directory was imported")\n'


def test_serve_from_a_directory_with_a_decoy_package_makes_an_image(tmp_path: Path) -> None:
    """The `alice-spool` script started in a directory whose `alice_spool/` package
    fails on import: the tiny model is created, the runner starts, and a request gets its
    image."""
    script = Path(sys.executable).with_name("alice-spool")
    assert script.exists(), "the package is installed with its console script"
    clone = tmp_path / "clone"
    (clone / "alice_spool").mkdir(parents=True)
    (clone / "alice_spool" / "__init__.py").write_text(DECOY)
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\nrequest_timeout_s = 120\n'
        f'[paths]\ndata_dir = "{tmp_path / "var"}"\n'
        '[runner]\ndevice = "cpu"\n[generation]\ndefault_steps = 2\n'
        '[logging]\nlevel = "WARNING"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALICE_", "PYTHON"))}
    env["HF_HUB_OFFLINE"] = "1"
    log_path = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(script), "--config", str(config), "serve"],
            cwd=clone,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def runner_up() -> bool:
        text = log_path.read_text(errors="replace")
        assert "DECOY" not in text, text[-3000:]  # a child imported the decoy
        assert process.poll() is None, text[-3000:]
        try:
            return bool(httpx.get(url + "/health", timeout=10).json()["runner_alive"])
        except httpx.HTTPError:
            return False

    try:
        wait_until(runner_up, timeout=120)
        # The default model is decided at start, before any request: a model that
        # arrives later (a user's download) never becomes it by sorting first.
        assert (tmp_path / "var" / "models" / ".default").read_text() == "sd/tiny\n"
        made = httpx.post(
            url + "/v1/images/generations",
            json={"prompt": "a lighthouse", "size": "64x64", "response_format": "b64_json"},
            timeout=120,
        )
        assert made.status_code == 200, made.text
        (image,) = made.json()["data"]
        assert base64.b64decode(image["b64_json"])[:8] == b"\x89PNG\r\n\x1a\n"
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log_path.read_text(errors="replace")[-3000:]
        assert "DECOY" not in log_path.read_text(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
