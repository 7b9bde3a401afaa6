"""The gallery's doors and its faults: a date with no time in UTC,
text no database can store, more tag filters than ALICE allows, each a 400 naming the
parameter that leaves the node in service, while a real database fault still marks it
degraded; and an image whose delete a crash cut short is whole again once the server
has started, without waiting for a retention pass."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy

from alice_spool import migrate
from alice_spool.config import load_settings
from alice_spool.records import RunnerReport
from alice_spool.spec import JobSpec
from alice_spool.store import Store
from tests.support.bare import Bare
from tests.support.live_server import free_port, wait_until

PNG = b"\x89PNG\r\n\x1a\n a picture"


def succeeded(store: Store, outbox: Path, n: int = 1) -> str:
    """A job that succeeded with `n` images in its outbox directory: its id."""
    job = store.jobs.enqueue(JobSpec(prompt="a lighthouse", model="sd/tiny", n=n), source="api").job
    (claimed,) = store.leases.claim_batch("r", 1, lease_s=60)
    assert claimed.id == job.id
    (outbox / job.id).mkdir(parents=True)
    files = []
    for i in range(n):
        (outbox / job.id / f"{job.id}-{i}.png").write_bytes(PNG)
        files.append({"file": f"{job.id}-{i}.png", "seed": i, "width": 8, "height": 8})
    store.leases.succeed(job.id, "r", {"images": files})
    return job.id


def a_runner_reports(store: Store) -> None:
    """As a runner does every few seconds: /readyz needs one."""
    now = datetime.now(UTC)
    store.leases.report_runner(
        RunnerReport(name="r", owner="host/1/x", started_at=now, heartbeat_at=now, state="idle")
    )


def in_service(bare: Bare) -> bool:
    a_runner_reports(bare.store)
    health = httpx.get(bare.url + "/health").json()
    ready = httpx.get(bare.url + "/readyz")
    return health["status"] == "ok" and not health.get("problems") and ready.status_code == 200


def refused(answer: httpx.Response) -> str:
    """The parameter a 400 `invalid_parameters` names."""
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_parameters", error
    return str(error["param"])


def test_gallery_parameters_no_database_can_take_are_400s_naming_them(
    make_bare: Callable[..., Bare],
) -> None:
    bare = make_bare()
    job_id = succeeded(bare.store, bare.outbox)
    gallery = bare.url + "/v1/gallery"
    # Year 1 at +14:00 is in year 0 in UTC, and 9999-12-31 at -14:00 in year 10000.
    cases: list[tuple[str, dict[str, str]]] = [
        ("since", {"since": "0001-01-01T00:00:00+14:00"}),
        ("until", {"until": "9999-12-31T23:59:59-14:00"}),
        ("since", {"since": "yesterday"}),
        ("search", {"search": "x" * 201}),
        ("search", {"search": "a\x00b"}),
        ("model", {"model": "m" * 201}),
        ("tags", {"tags": ",".join(f"t{i}" for i in range(21))}),
        ("tags", {"tags": "x" * 51}),
        ("tags", {"tags": "a\nb"}),
    ]
    for field, params in cases:
        assert refused(httpx.get(gallery, params=params)) == field, params
    # At the limits: answered.
    edges = {"since": "0001-01-01T14:00:00+14:00", "until": "9999-12-31T23:59:59Z"}
    assert httpx.get(gallery, params={**edges, "search": "x" * 200}).json()["data"] == []
    found = httpx.get(gallery, params={**edges, "search": "LIGHTHOUSE"}).json()["data"]
    assert [item["id"] for item in found] == [f"{job_id}-0"]
    twenty = ",".join(f"{i:02d}" + "t" * 48 for i in range(20))
    assert httpx.get(gallery, params={"tags": twenty}).json()["data"] == []

    # Tags set with a lone surrogate (JSON's escape of half a pair) or a control character.
    tags = f"{gallery}/{job_id}-0/tags"
    for raw in (rb'{"tags": ["\ud800"]}', rb'{"tags": ["ok", "a\u0000"]}', rb'{"tags": ["\n"]}'):
        answer = httpx.patch(tags, content=raw, headers={"Content-Type": "application/json"})
        assert refused(answer) == "tags", raw
    assert httpx.get(f"{gallery}/{job_id}-0").json()["tags"] == []
    assert httpx.patch(tags, json={"tags": ["Harbour", "café"]}).json()["tags"] == [
        "café",
        "harbour",
    ]
    assert in_service(bare)


def test_a_thousand_tag_filters_are_a_400_and_leave_the_node_in_service(
    make_bare: Callable[..., Bare],
) -> None:
    """1,500 tags made a statement SQLite refused: a 500 `database_error` that marked
    /health degraded and /readyz 503 for two minutes. Every list-valued query parameter
    is bounded at the door."""
    bare = make_bare()
    succeeded(bare.store, bare.outbox)
    assert in_service(bare)
    many = ",".join(f"tag{i}" for i in range(1500))
    assert refused(httpx.get(bare.url + "/v1/gallery", params={"tags": many})) == "tags"
    for path in ("/v1/jobs", "/v1/downloads"):
        repeated = "?" + "&".join(["status=queued"] * 1500)  # one filter, 1,500 times
        assert httpx.get(bare.url + path + repeated).status_code == 200
        different = "?" + "&".join(f"status=s{i}" for i in range(1500))
        assert refused(httpx.get(bare.url + path + different)) == "status"
    types = {"source": "civitai", "types": ",".join(f"T{i}" for i in range(1500))}
    assert refused(httpx.get(bare.url + "/v1/models/search", params=types)) == "types"
    assert in_service(bare)


def test_a_real_database_fault_still_marks_the_node_degraded(
    make_bare: Callable[..., Bare],
) -> None:
    """A database that became read-only (as a remount after disk errors leaves it): the
    node is out of service, as for a full disk (tests/e2e/test_api.py)."""
    bare = make_bare()
    assert in_service(bare)
    engine = bare.store.db.engine

    def read_only(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA query_only = ON")

    sqlalchemy.event.listen(engine.pool, "connect", read_only)
    engine.dispose()
    answer = httpx.post(bare.url + "/v1/jobs", json={"prompt": "x"})
    assert answer.status_code == 500, answer.text
    assert answer.json()["error"]["code"] == "database_error"
    health = httpx.get(bare.url + "/health").json()
    assert health["status"] == "degraded"
    assert health["problems"][0]["code"] == "database_error"
    assert httpx.get(bare.url + "/readyz").status_code == 503


# A gallery delete (removal.delete_image) in a process killed at one point of it.
CRASH = """
import os, signal, sys
from pathlib import Path
from alice_spool.library import removal
from alice_spool.store import Store

url, outbox, image_id, where = sys.argv[1:]
store = Store.open(url)
def crash(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
if where == "before the commit":
    store.gallery.delete_image = crash
else:
    removal._remove = crash
removal.delete_image(store, Path(outbox), image_id, scope=None)
"""


def test_a_delete_a_crash_cut_short_is_settled_when_the_server_starts(tmp_path: Path) -> None:
    """Killed after moving the file aside and before the commit: the image was listed
    with a URL that 404s until a retention pass, ten minutes on at the earliest. Killed
    after the commit: its file lay aside. `alice-spool api` settles both before it
    serves: the first back in place, the second gone."""
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[paths]\ndata_dir = "{tmp_path / "var"}"\n'
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n[logging]\nlevel = "WARNING"\n'
    )
    settings = load_settings(config, env={}, cwd=tmp_path)
    store = Store.open(settings.database_url)
    migrate.upgrade(store.db)
    outbox = Path(settings.paths.outbox)
    job_id = succeeded(store, outbox, n=2)
    directory = outbox / job_id
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALICE_")}
    for index, where in ((0, "before the commit"), (1, "after the commit")):
        argv = [sys.executable, "-c", CRASH, settings.database_url, str(outbox)]
        killed = subprocess.run(
            [*argv, f"{job_id}-{index}", where], cwd=tmp_path, env=env, timeout=120
        )
        assert killed.returncode == -signal.SIGKILL
    assert store.gallery.gallery_files([job_id]) == [f"{job_id}-0"]  # listed, its file aside: a 404
    assert [p.name for p in directory.iterdir() if not p.name.startswith(".")] == []
    assert len([p for p in directory.iterdir() if p.name.startswith(".deleting-")]) == 2

    server = subprocess.Popen(
        [sys.executable, "-m", "alice_spool", "--config", str(config), "api"],
        cwd=tmp_path,
        env={**env, "HF_HUB_OFFLINE": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def answers() -> bool:
            assert server.poll() is None, "the server exited"
            try:
                return httpx.get(url + "/health", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, timeout=60)
        listed = httpx.get(url + "/v1/gallery").json()["data"]
        assert [item["id"] for item in listed] == [f"{job_id}-0"]
        image = httpx.get(listed[0]["url"])
        assert image.status_code == 200 and image.content == PNG
        assert [p.name for p in directory.iterdir()] == [f"{job_id}-0.png"]
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
        store.close()
