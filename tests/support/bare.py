"""An in-process server on 127.0.0.1 (uvicorn in a thread, the fake model installed)
for the API's tests: `make_bare(**config overrides)` gives its URL, store and folders."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from alice_spool import migrate
from alice_spool.api import create_app
from alice_spool.api.edge.deadline import http_protocol
from alice_spool.api.edge.services import image_url
from alice_spool.config import load_settings
from alice_spool.store import Store
from tests.support.live_server import free_port, wait_until


@dataclass
class Bare:
    url: str
    store: Store
    outbox: Path
    models: Path


@pytest.fixture
def make_bare(tmp_path: Path) -> Iterator[Callable[..., Bare]]:
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def make(**overrides: Any) -> Bare:
        settings = load_settings(
            None,
            env={},
            overrides={"paths.data_dir": str(tmp_path / "var"), **overrides},
            cwd=tmp_path,
        )
        store = Store.open(settings.database_url, max_queue=settings.generation.max_queue)
        migrate.upgrade(store.db)
        models = Path(settings.paths.models) / "tiny"
        models.mkdir(parents=True, exist_ok=True)
        from tests.support.fake_model import write_fake_model

        write_fake_model(models)
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(settings, store),
                host="127.0.0.1",
                port=free_port(),
                log_level="error",
                proxy_headers=False,  # as serve runs it
                http=http_protocol(settings.server.header_timeout_s),
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_until(lambda: server.started, timeout=10)
        servers.append((server, thread))
        port = server.config.port
        return Bare(
            f"http://127.0.0.1:{port}",
            store,
            Path(settings.paths.outbox),
            Path(settings.paths.models),
        )

    yield make
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


def served_image_job(bare: Bare, image: Any = None) -> tuple[str, str]:
    """A succeeded job with one image in the outbox, as a runner leaves it: its id and
    the image's URL (which carries the job's image secret). `image`: a PIL image to
    save (an 8x8 black one by default)."""
    from PIL import Image

    from alice_spool.spec import parse_spec

    job = bare.store.jobs.enqueue(
        parse_spec({"prompt": "an image", "model": "sd/tiny"}), source="cli"
    )
    (taken,) = bare.store.leases.claim_batch("t-runner", 1, lease_s=30)
    assert taken.id == job.job.id
    folder = bare.outbox / taken.id
    folder.mkdir(parents=True, exist_ok=True)
    (image or Image.new("RGB", (8, 8))).save(folder / f"{taken.id}-0.png")
    done = bare.store.leases.succeed(
        taken.id, "t-runner", {"images": [{"file": f"{taken.id}-0.png"}]}
    )
    return taken.id, image_url(bare.url, f"{taken.id}-0.png", done.image_secret)
