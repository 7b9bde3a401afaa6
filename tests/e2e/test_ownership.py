"""Ownership on every route that reads or steers a job, a batch, a
download or a gallery image: a table of route x role x owner. A user sees and steers
only their own (another's id is a 404 exactly like an id that does not exist), an
admin everything, no key nothing; a shared image is seen by all and changed only by its
owner or an admin (403)."""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from PIL import Image

from alice_spool.api.edge.services import image_secret
from alice_spool.masking import masked_url
from alice_spool.spec import JobSpec
from alice_spool.states import JobStatus
from alice_spool.store import Store, new_id
from tests.support.bare import Bare


@dataclass
class World:
    """What one user owns: a queued job, a succeeded job with two images (in the
    gallery), a batch and a queued download."""

    queued: str
    done: str
    image: str
    batch: str
    download: str


def keyed(bare: Bare) -> dict[str, dict[str, str]]:
    _, root = bare.store.keys.add_key("root", role="admin")
    _, alice = bare.store.keys.add_key("alice", role="user")
    _, bob = bare.store.keys.add_key("bob", role="user")
    return {
        "admin": {"Authorization": f"Bearer {root}"},
        "alice": {"X-Api-Key": alice},
        "bob": {"X-Api-Key": bob},
    }


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def finish_as_runner(bare: Bare, job_id: str) -> None:
    """What a runner does for the job: images in its outbox directory, then succeed."""
    (taken,) = bare.store.leases.claim_batch("t-runner", 1, lease_s=30)
    assert taken.id == job_id
    directory = bare.outbox / job_id
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(2):
        (directory / f"{job_id}-{i}.png").write_bytes(png())
        files.append({"file": f"{job_id}-{i}.png", "seed": 10 + i, "width": 8, "height": 8})
    bare.store.leases.succeed(job_id, "t-runner", {"images": files, "timings": {"generate_s": 0.5}})


def world(bare: Bare, headers: dict[str, str], n: int) -> World:
    post = lambda path, body: httpx.post(bare.url + path, json=body, headers=headers)  # noqa: E731
    first = {"prompt": f"a red fox {n}", "steps": 2, "n": 2}
    done = post("/v1/jobs", first).json()["id"]
    bare.store.jobs.set_priority(done, 100)  # claimed first (a user's key may not ask for it)
    finish_as_runner(bare, done)
    init = base64.b64encode(png()).decode()
    queued = post("/v1/jobs", {"prompt": f"queued {n}", "steps": 2, "init_image": init})
    assert queued.status_code == 202, queued.text
    queued = queued.json()["id"]
    batch = post("/v1/batches", {"requests": [{"prompt": f"b {n}", "steps": 2}]}).json()["id"]
    download = post(
        "/v1/downloads",
        {"source": "url", "url": "https://8.8.8.8/m.safetensors", "name": f"m{n}"},
    )
    assert download.status_code == 202, download.text
    return World(queued, done, f"{done}-1", batch, download.json()["id"])


# (method, path, body, what the owner and an admin get): paths name a World's fields.
ROUTES: list[tuple[str, str, Any, int]] = [
    ("GET", "/v1/jobs/{queued}", None, 200),
    ("GET", "/v1/jobs/{done}/events", None, 200),
    ("GET", "/v1/jobs/{queued}/events", None, 200),  # a stream that has not ended
    ("GET", "/v1/jobs/{queued}/inputs/init", None, 200),
    ("POST", "/v1/jobs/{queued}/priority", {"priority": -5}, 200),  # within max_priority
    ("POST", "/v1/jobs/{queued}/cancel", {}, 200),
    ("POST", "/v1/jobs/{done}/retry", {}, 409),  # a succeeded job: not retried, but seen
    ("GET", "/v1/batches/{batch}", None, 200),
    ("GET", "/v1/downloads/{download}", None, 200),
    ("GET", "/v1/downloads/{download}/events", None, 200),
    ("POST", "/v1/downloads/{download}/cancel", {}, 200),
    ("GET", "/v1/models/download/status/{download}", None, 200),
    ("DELETE", "/v1/models/download/{download}", None, 200),
    ("GET", "/v1/gallery/{image}", None, 200),
    ("PATCH", "/v1/gallery/{image}/privacy", {"isPublic": True, "expiresInHours": 2}, 200),
    ("PATCH", "/v1/gallery/{image}/tags", {"tags": ["Fox", "red"]}, 200),
    ("DELETE", "/v1/gallery/{image}", None, 200),
]


def unchanged(store: Store, w: World) -> tuple[Any, ...]:
    """What a refused request must not have changed."""
    queued, done = store.jobs.get(w.queued), store.jobs.get(w.done)
    image = store.gallery.gallery_page(scope=None, search=None).items
    return (
        queued.status,
        queued.priority,
        done.status,
        store.downloads.get_download(w.download).status,
        [(i.id, i.public_until, i.tags) for i in image],
    )


def ask(method: str, url: str, headers: dict[str, str], body: Any) -> httpx.Response:
    """The answer's status and (for an error) body; a stream is left after its start."""
    with httpx.stream(method, url, headers=headers, json=body, timeout=30) as answer:
        if answer.status_code >= 400 or not url.endswith("/events"):
            answer.read()
        return answer


@pytest.mark.parametrize("method,path,body,allowed", ROUTES)
def test_a_user_reaches_only_their_own_and_an_admin_everything(
    make_bare: Callable[..., Bare], method: str, path: str, body: Any, allowed: int
) -> None:
    bare = make_bare()
    who = keyed(bare)
    for n, asker in enumerate(["bob", "nobody", "alice", "admin"]):
        w = world(bare, who["alice"], n)
        target = bare.url + path.format(**vars(w))
        before = unchanged(bare.store, w)
        answer = ask(method, target, who.get(asker, {}), body)
        if asker == "nobody":
            assert answer.status_code == 401, answer.text
        elif asker == "bob":  # another user: exactly what a made-up id gets
            made_up = World(*(new_id() for _ in range(5)))
            made_up.image = f"{made_up.done}-1"
            unknown = ask(method, bare.url + path.format(**vars(made_up)), who["bob"], body)
            assert answer.status_code == unknown.status_code == 404, (answer.text, unknown.text)
            assert answer.json()["error"]["code"] == unknown.json()["error"]["code"]
            field = re.search(r"\{(\w+)\}", path)[1]  # type: ignore[index]
            shown = answer.json()["error"]["message"].replace(getattr(w, field), "ID")
            assert shown == unknown.json()["error"]["message"].replace(
                getattr(made_up, field), "ID"
            )
        else:
            assert answer.status_code == allowed, (asker, answer.text)
        if asker in ("bob", "nobody"):
            assert unchanged(bare.store, w) == before  # nothing done


def test_lists_show_a_user_only_their_own(make_bare: Callable[..., Bare]) -> None:
    bare = make_bare()
    who = keyed(bare)
    mine, theirs = world(bare, who["alice"], 1), world(bare, who["bob"], 2)
    inbox = bare.store.jobs.enqueue(
        JobSpec(prompt="from the inbox"), source="inbox", client="c.json"
    ).job

    def ids(asker: str, path: str, key: str = "data") -> set[str]:
        answer = httpx.get(bare.url + path, headers=who[asker])
        assert answer.status_code == 200, answer.text
        return {item["id"] for item in answer.json()[key]}

    alice_jobs = ids("alice", "/v1/jobs?limit=500")
    assert {mine.queued, mine.done} <= alice_jobs
    assert not alice_jobs & {theirs.queued, theirs.done, inbox.id}
    everything = ids("admin", "/v1/jobs?limit=500")
    assert {mine.queued, theirs.queued, inbox.id} <= everything
    assert ids("alice", "/v1/downloads") == {mine.download}
    assert ids("bob", "/v1/models/download/status") == {theirs.download}
    assert ids("admin", "/v1/downloads") == {mine.download, theirs.download}
    assert ids("alice", "/v1/gallery") == {f"{mine.done}-0", f"{mine.done}-1"}
    assert len(ids("admin", "/v1/gallery")) == 4
    owners = {j["id"]: j["owner"] for j in httpx.get(
        bare.url + "/v1/jobs?limit=500", headers=who["admin"]).json()["data"]}  # fmt: skip
    alice_key = httpx.get(bare.url + "/v1/auth/me", headers=who["alice"]).json()["key_id"]
    assert owners[mine.queued] == alice_key and owners[inbox.id] is None  # the admin's
    # Another user's identical idempotency key is another key: its own job, nothing told.
    first = httpx.post(
        bare.url + "/v1/jobs",
        json={"prompt": "x"},
        headers={**who["alice"], "Idempotency-Key": "k-1"},
    )
    clash = httpx.post(
        bare.url + "/v1/jobs",
        json={"prompt": "x"},
        headers={**who["bob"], "Idempotency-Key": "k-1"},
    )
    assert (first.status_code, clash.status_code) == (202, 202)
    assert first.json()["id"] not in clash.text


def test_a_shared_image_is_seen_by_all_until_it_expires_and_changed_only_by_its_owner(
    make_bare: Callable[..., Bare],
) -> None:
    bare = make_bare()
    who = keyed(bare)
    mine = world(bare, who["alice"], 1)
    image = f"{mine.done}-0"
    gallery = lambda asker, query="": httpx.get(  # noqa: E731
        bare.url + "/v1/gallery" + query, headers=who[asker]
    ).json()
    assert gallery("bob")["total"] == 0
    shared = httpx.patch(
        f"{bare.url}/v1/gallery/{image}/privacy",
        json={"isPublic": True, "expiresInHours": 1},
        headers=who["alice"],
    ).json()
    assert shared["success"] is True and shared["is_public"] is True
    until = datetime.fromisoformat(shared["expires_at"].replace("Z", "+00:00"))
    assert timedelta(minutes=59) < until - datetime.now(UTC) <= timedelta(hours=1)
    seen = gallery("bob")
    assert [i["id"] for i in seen["data"]] == [image]
    assert seen["data"][0]["isOwner"] is False and seen["data"][0]["isPublic"] is True
    assert gallery("bob", "?include_public=false")["total"] == 0
    assert gallery("alice", "?include_private=false")["total"] == 1
    for method, path, body in [
        ("PATCH", "/privacy", {"isPublic": False}),
        ("PATCH", "/tags", {"tags": ["mine"]}),
        ("DELETE", "", None),
    ]:
        refused = httpx.request(
            method, f"{bare.url}/v1/gallery/{image}{path}", json=body, headers=who["bob"]
        )
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    # The share ends: listed for its owner only again (a given clock, in the store).
    later = datetime.now(UTC) + timedelta(hours=2)
    assert bare.store.gallery.gallery_page(scope="someone-else", now=later).total == 0
    assert bare.store.gallery.gallery_stats(now=later) == {
        "total": 2,
        "public": 0,
        "private": 1,
        "expired": 1,
    }
    assert httpx.get(bare.url + "/v1/gallery/stats", headers=who["admin"]).json() == {
        "total": 2,
        "public": 1,
        "private": 1,
        "expired": 0,
    }
    assert httpx.get(bare.url + "/v1/gallery/stats", headers=who["alice"]).status_code == 403


def test_gallery_tags_search_filters_paging_and_delete(make_bare: Callable[..., Bare]) -> None:
    bare = make_bare()
    who = keyed(bare)
    worlds = [world(bare, who["alice"], n) for n in range(3)]
    images = [f"{w.done}-{i}" for w in worlds for i in range(2)]
    patch = lambda image, body: httpx.patch(  # noqa: E731
        f"{bare.url}/v1/gallery/{image}/tags", json=body, headers=who["alice"]
    )
    tagged = patch(images[0], {"tags": [" Fox ", "RED", "fox"]})
    assert tagged.json() == {"success": True, "tags": ["fox", "red"]}
    assert patch(images[2], {"tags": ["fox"]}).status_code == 200
    for bad in [{"tags": "fox"}, {"tags": [1]}, {"tags": [""]}, {"tags": ["x" * 51]},
                {"tags": [f"t{i}" for i in range(21)]}, {"tags": ["fox"] * 21}, {}]:  # fmt: skip
        answer = patch(images[1], bad)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "tags", bad
    listing = lambda query: httpx.get(  # noqa: E731
        bare.url + "/v1/gallery" + query, headers=who["alice"]
    ).json()
    assert {i["id"] for i in listing("?tags=fox")["data"]} == {images[0], images[2]}
    assert [i["id"] for i in listing("?tags=fox,red")["data"]] == [images[0]]
    assert {i["id"] for i in listing("?search=FOX%201")["data"]} == set(images[2:4])
    assert listing("?search=50%25")["total"] == 0  # % is a character, not a wildcard
    assert listing("?model=tiny")["total"] == 6 and listing("?model=other")["total"] == 0
    assert listing("?since=2999-01-01")["total"] == 0 and listing("?until=2999-01-01")["total"] == 6
    page = listing("?limit=4&offset=4")
    assert (page["total"], page["limit"], page["offset"], len(page["data"])) == (6, 4, 4, 2)
    newest = listing("?limit=6")["data"]  # the newest job first, its images in order
    assert [i["id"] for i in newest] == [f"{w.done}-{i}" for w in reversed(worlds) for i in (0, 1)]
    item = newest[-2]
    assert item["prompt"] == "a red fox 0" and item["seed"] == 10 and item["width"] == 8
    secret = image_secret(bare.store.jobs.get(worlds[0].done).image_secret, f"{images[0]}.png")
    assert item["url"].endswith(f"/images/{secret}/{images[0]}.png")
    assert item["tags"] == ["fox", "red"]
    assert item["isOwner"] is True and item["generationTime"] == 0.5
    tags = httpx.get(bare.url + "/v1/gallery/tags", headers=who["alice"]).json()
    assert tags == {"tags": [{"name": "fox", "count": 2}, {"name": "red", "count": 1}], "total": 2}
    for query in [
        "?limit=0",
        "?limit=201",
        "?offset=-1",
        "?since=yesterday",
        "?include_public=maybe",
        "?include_private=",
    ]:
        answer = httpx.get(bare.url + "/v1/gallery" + query, headers=who["alice"])
        assert answer.status_code == 400, query
        assert answer.json()["error"]["param"] == query[1:].split("=")[0], answer.text
    assert listing("?include_public=FALSE&include_private=1")["total"] == 6  # her own
    for body, field in [({}, "isPublic"), ({"isPublic": "yes"}, "isPublic"),
                        ({"isPublic": True, "expiresInHours": 0}, "expiresInHours"),
                        ({"isPublic": True, "expiresInHours": 169}, "expiresInHours"),
                        ({"isPublic": True, "expiresInHours": "2"}, "expiresInHours")]:  # fmt: skip
        answer = httpx.patch(
            f"{bare.url}/v1/gallery/{images[0]}/privacy", json=body, headers=who["alice"]
        )
        assert answer.status_code == 400 and answer.json()["error"]["param"] == field, body
    # Delete: the file, the record, its place in the job; its URL 404s, with no key.
    url = item["url"]
    assert httpx.get(url).status_code == 200
    gone = httpx.delete(f"{bare.url}/v1/gallery/{images[0]}", headers=who["alice"])
    assert gone.json() == {"success": True}
    assert httpx.get(url).status_code == 404
    assert not (bare.outbox / worlds[0].done / f"{images[0]}.png").exists()
    assert [p.name for p in (bare.outbox / worlds[0].done).iterdir()] == [f"{images[1]}.png"]
    job = httpx.get(f"{bare.url}/v1/jobs/{worlds[0].done}", headers=who["alice"]).json()
    assert [u.rsplit("/", 1)[1] for u in job["image_urls"]] == [f"{images[1]}.png"]
    assert (
        httpx.delete(f"{bare.url}/v1/gallery/{images[0]}", headers=who["alice"]).status_code == 404
    )
    assert listing("")["total"] == 5
    assert httpx.get(bare.url + "/v1/gallery/tags", headers=who["alice"]).json()["total"] == 1


def test_retention_takes_the_gallery_rows_with_the_files(make_bare: Callable[..., Bare]) -> None:
    bare = make_bare()
    who = keyed(bare)
    w = world(bare, who["alice"], 1)
    assert bare.store.gallery.gallery_files([w.done]) == [f"{w.done}-0", f"{w.done}-1"]
    bare.store.jobs.mark_images_expired([w.done])
    assert bare.store.gallery.gallery_files([w.done]) == []
    assert bare.store.jobs.get(w.done).status is JobStatus.SUCCEEDED


def test_the_servers_own_things_are_an_admins_to_change(make_bare: Callable[..., Bare]) -> None:
    """A user may use the models but not delete them or change the default (403); an
    admin may; on an open server (one user, local) anyone may."""
    open_server = make_bare()
    default = httpx.post(open_server.url + "/v1/models/default", json={"model": "sd/tiny"})
    assert default.status_code == 200, default.text
    bare = make_bare()
    who = keyed(bare)
    for method, path, body in [
        ("POST", "/v1/models/default", {"model": "sd/tiny"}),
        ("DELETE", "/v1/models/sd/tiny", None),
        ("DELETE", "/v1/loras/lora/none", None),
        ("GET", "/v1/gallery/stats", None),
    ]:
        refused = httpx.request(method, bare.url + path, json=body, headers=who["alice"])
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert httpx.get(bare.url + "/v1/models", headers=who["alice"]).status_code == 200
    assert (bare.models / "tiny").is_dir()  # nothing was deleted
    chosen = httpx.post(
        bare.url + "/v1/models/default", json={"model": "sd/tiny"}, headers=who["admin"]
    )
    assert chosen.status_code == 200, chosen.text
    gone = httpx.delete(bare.url + "/v1/models/sd/tiny", headers=who["admin"])
    assert gone.status_code == 200 and not (bare.models / "tiny").exists()


def test_the_admin_routes_mask_every_secret_and_end_sessions(
    make_bare: Callable[..., Bare],
) -> None:
    bare = make_bare(
        **{
            "models.hf_token": "hf_secret_token_123",
            "models.civitai_token": "civitai-secret-456",
            "server.api_keys": {"ops": "config-secret-789"},
        }
    )
    who = keyed(bare)
    world(bare, who["alice"], 1)  # two images of 8x8 in the outbox
    for path in ("/v1/admin/config", "/v1/admin/storage", "/v1/auth/sessions"):
        refused = httpx.get(bare.url + path, headers=who["alice"])
        assert refused.status_code == 403, path
    answer = httpx.get(bare.url + "/v1/admin/config", headers=who["admin"])
    assert answer.status_code == 200, answer.text
    shown = answer.text
    for secret in ("hf_secret_token_123", "civitai-secret-456", "config-secret-789"):
        assert secret not in shown
    config = answer.json()
    assert config["models"]["hf_token"] == "***" and config["server"]["api_keys"] == {"ops": "***"}
    assert config["server"]["registration"] == "disabled"
    used = httpx.get(bare.url + "/v1/admin/storage", headers=who["admin"]).json()
    files = list(bare.outbox.rglob("*.png"))
    assert used["outbox"]["files"] >= len(files) == 2
    assert used["outbox"]["bytes"] >= sum(f.stat().st_size for f in files) > 0
    assert used["database"]["bytes"] > 0 and used["outbox"]["disk"]["free"] > 0
    assert used["total_bytes"] >= used["outbox"]["bytes"] + used["database"]["bytes"]
    # Sessions: listed by a handle (never the cookie), ended by an admin.
    with httpx.Client(base_url=bare.url) as browser:
        alice_key = who["alice"]["X-Api-Key"]
        assert browser.post("/v1/auth/login", json={"key": alice_key}).status_code == 200
        cookie = browser.cookies["alice_session"]
        listed = httpx.get(bare.url + "/v1/auth/sessions", headers=who["admin"]).json()["data"]
        assert [(s["name"], s["role"]) for s in listed] == [("alice", "user")]
        assert cookie not in json.dumps(listed) and len(listed[0]["id"]) == 16
        assert browser.get("/v1/jobs").status_code == 200
        ended = httpx.delete(f"{bare.url}/v1/auth/sessions/{listed[0]['id']}", headers=who["admin"])
        assert ended.json() == {"success": True}
        assert browser.get("/v1/jobs").status_code == 401
        again = httpx.delete(f"{bare.url}/v1/auth/sessions/{listed[0]['id']}", headers=who["admin"])
        assert again.status_code == 404


def test_the_configured_database_password_is_masked() -> None:
    assert masked_url("postgresql+psycopg://spool:pa55@db.local:5432/spool") == (
        "postgresql+psycopg://spool:***@db.local:5432/spool"
    )
    assert masked_url("sqlite:////var/lib/alice/alice.db") == "sqlite:////var/lib/alice/alice.db"


def test_dialect_jobs_batch_with_other_doors_and_outlive_their_server(
    make_bare: Callable[..., Bare],
) -> None:
    """An AbleRefusal job and a native job asking the same thing have one batch key:
    the runner's claim takes them in one call. A dialect's asynchronous job
    is a row like any other: another server on the same database serves it."""
    bare = make_bare()
    same = {"prompt": "a harbour", "steps": 2, "width": 64, "height": 64}
    native = httpx.post(
        bare.url + "/v1/jobs", json={**same, "scheduler": "euler_a", "guidance_scale": 7.5}
    ).json()
    able = httpx.post(
        bare.url + "/api/v1/generate", json={**same, "sampler": "euler_a", "cfg_scale": 7.5}
    ).json()
    assert able["status"] == "queued"
    taken = bare.store.leases.claim_compatible("r", max_images=8, lease_s=60)
    assert {j.id for j in taken} == {native["id"], able["id"]}  # one pipeline call
    assert {j.source.value for j in taken} == {"api", "ablerefusal"}
    bare.store.leases.release("r", [j.id for j in taken])
    second = make_bare()  # the same data directory and database, another server
    shown = httpx.get(f"{second.url}/api/v1/generate/{able['id']}").json()
    assert shown == {"id": able["id"], "status": "queued", "progress": 0, "results": []}
