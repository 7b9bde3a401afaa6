"""What a job id is worth to someone who is not its owner: nothing. `/health` names no job
without an admin's key, an image URL carries a secret of its own (a known or chosen job id
opens no image), a client-chosen id is its owner's alone, an id is never probeable through
a page cursor, and only an admin moves the default model."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
from PIL import Image
from sqlalchemy import text

from alice_spool.api.edge.services import image_secret
from alice_spool.records import RunnerReport
from tests.support.bare import Bare
from tests.support.fake_model import write_fake_model

ADMIN = "admin-secret-123"


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (20, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def keyed(make_bare: Callable[..., Bare]) -> tuple[Bare, dict[str, dict[str, str]]]:
    """A server with a configured admin key and two users' stored keys."""
    bare = make_bare(**{"server.api_keys": {"ops": ADMIN}})
    _, alice = bare.store.keys.add_key("alice", role="user")
    _, bob = bare.store.keys.add_key("bob", role="user")
    return bare, {
        "admin": {"Authorization": f"Bearer {ADMIN}"},
        "alice": {"X-Api-Key": alice},
        "bob": {"X-Api-Key": bob},
    }


def run_to_the_end(bare: Bare, job_id: str) -> None:
    """What a runner does: the image in the job's outbox directory, then succeed."""
    (taken,) = bare.store.leases.claim_batch("t-runner", 1, lease_s=30)
    assert taken.id == job_id
    directory = bare.outbox / job_id
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{job_id}-0.png").write_bytes(png())
    result = {"images": [{"file": f"{job_id}-0.png", "seed": 1, "width": 8, "height": 8}]}
    bare.store.leases.succeed(job_id, "t-runner", result)


def test_health_names_no_job_without_an_admins_key(make_bare: Callable[..., Bare]) -> None:
    bare, keys = keyed(make_bare)
    job = httpx.post(bare.url + "/v1/jobs", json={"prompt": "a secret plan"}, headers=keys["alice"])
    job_id = job.json()["id"]
    now = datetime.now(UTC)
    bare.store.leases.report_runner(
        RunnerReport(
            name="gpu0",
            owner="host/123/lease-token-abc",
            started_at=now,
            heartbeat_at=now,
            state="busy",
            job_id=job_id,
            step=3,
            total=20,
        )
    )
    for who, headers in (
        ("nobody", {}),
        ("a wrong key", {"X-Api-Key": "not-a-key"}),
        ("a user", keys["bob"]),
        ("the owner, a user", keys["alice"]),
    ):
        answer = httpx.get(bare.url + "/health", headers=headers)
        assert answer.status_code == 200, who
        assert job_id not in answer.text and "lease-token-abc" not in answer.text, who
        assert "secret plan" not in answer.text and "alice" not in answer.text, who
        (runner,) = answer.json()["runners"]
        assert (runner["job_id"], runner["owner"], runner["step"]) == (None, None, 3), who
    # A health checker polling without a key makes no failed guesses: nothing is refused.
    for _ in range(40):
        assert httpx.get(bare.url + "/health").status_code == 200
    assert httpx.get(bare.url + "/v1/jobs", headers=keys["alice"]).status_code == 200
    admin = httpx.get(bare.url + "/health", headers=keys["admin"]).json()
    assert admin["runners"][0]["job_id"] == job_id
    assert admin["runners"][0]["owner"] == "host/123/lease-token-abc"
    for path in (
        "/metrics",
        "/api/health",
        "/api/v1/health",
        "/livez",
        "/readyz",
        "/metrics?format=prometheus",
    ):
        assert job_id not in httpx.get(bare.url + path).text, path


def test_an_image_url_carries_a_secret_that_a_known_job_id_does_not_give(
    make_bare: Callable[..., Bare],
) -> None:
    bare, keys = keyed(make_bare)
    body = {"prompt": "a private fox", "id": "nightly-2026-12-08"}
    job_id = httpx.post(bare.url + "/v1/jobs", json=body, headers=keys["alice"]).json()["id"]
    run_to_the_end(bare, job_id)
    view = httpx.get(f"{bare.url}/v1/jobs/{job_id}", headers=keys["alice"]).json()
    (url,) = view["image_urls"]
    job_secret = bare.store.jobs.get(job_id).image_secret
    assert job_secret is not None and len(job_secret) == 32 and int(job_secret, 16) >= 0
    assert job_secret not in job_id and job_id not in job_secret  # 128 bits of its own
    secret = image_secret(job_secret, f"{job_id}-0.png")  # the image's, from the job's
    assert url == f"{bare.url}/images/{secret}/{job_id}-0.png"
    assert "image_secret" not in view and job_secret not in str(view)

    # SAM's way: a plain GET, no headers at all.
    with httpx.Client(headers={}) as plain:
        got = plain.get(url)
    assert got.status_code == 200 and got.content == png()
    assert got.headers["content-type"] == "image/png"

    other = httpx.post(bare.url + "/v1/jobs", json={"prompt": "mine"}, headers=keys["bob"])
    other_id = other.json()["id"]
    run_to_the_end(bare, other_id)
    other_job_secret = bare.store.jobs.get(other_id).image_secret
    other_secret = image_secret(other_job_secret, f"{other_id}-0.png")
    assert httpx.get(f"{bare.url}/images/{other_secret}/{other_id}-0.png").status_code == 200
    refused = [
        f"/images/{job_id}-0.png",  # the old form: the id alone
        f"/outputs/{job_id}-0.png",
        f"/images/{'0' * 32}/{job_id}-0.png",  # a made-up secret
        f"/images/{other_secret}/{job_id}-0.png",  # another job's image's secret
        f"/images/{job_secret}/{job_id}-0.png",  # the job's own secret is not the image's
        f"/images/{secret.upper()}/{job_id}-0.png",
        f"/images/{secret[:-1]}/{job_id}-0.png",
        f"/images/{secret}/{job_id}-1.png",  # an image the job does not have
        f"/images/{secret}/{'f' * 30}-0.png",  # a job that does not exist
        "/images/nightly-2026-12-08-0.png",  # the chosen id opens nothing either
        f"/images/{secret}/nightly-2026-12-08-0.png",
    ]
    for path in refused:
        answer = httpx.get(bare.url + path)
        assert answer.status_code == 404, path
        assert answer.json()["error"]["code"] == "not_found", path
    # The same answer whether the job exists or not: nothing tells a real id from a guess.
    unknown = httpx.get(f"{bare.url}/images/{'0' * 32}/{'f' * 30}-0.png").json()
    known = httpx.get(f"{bare.url}/images/{'0' * 32}/{job_id}-0.png").json()
    assert unknown["error"]["message"].replace("f" * 30, "X") == known["error"]["message"].replace(
        job_id, "X"
    )

    # Every door that hands out links gives the secret form.
    gallery = httpx.get(bare.url + "/v1/gallery", headers=keys["alice"]).json()
    assert [item["url"] for item in gallery["data"]] == [url]
    ablerefusal = httpx.get(f"{bare.url}/api/v1/generate/{job_id}", headers=keys["alice"]).json()
    relative = ablerefusal["results"][0]["image_url"]
    assert relative == f"/outputs/{secret}/{job_id}-0.png"
    assert httpx.get(bare.url + relative).content == png()


def test_links_from_before_image_secrets_keep_their_old_form(
    make_bare: Callable[..., Bare],
) -> None:
    """A job queued before image secrets existed has none (the migration adds the
    column empty): its link, handed out then, is its server-made id (120 random bits)
    and keeps working; no job made since opens that way."""
    bare, keys = keyed(make_bare)
    old = httpx.post(bare.url + "/v1/jobs", json={"prompt": "old"}, headers=keys["alice"])
    old_id = old.json()["id"]
    run_to_the_end(bare, old_id)
    with bare.store.db.engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET image_secret = NULL WHERE id = :id"), {"id": old_id})
    view = httpx.get(f"{bare.url}/v1/jobs/{old_id}", headers=keys["alice"]).json()
    assert view["image_urls"] == [f"{bare.url}/images/{old_id}-0.png"]
    assert httpx.get(view["image_urls"][0]).content == png()
    assert httpx.get(f"{bare.url}/outputs/{old_id}-0.png").content == png()
    # ...and a secret is no way in for it either.
    assert httpx.get(f"{bare.url}/images/{'0' * 32}/{old_id}-0.png").status_code == 404


def test_a_chosen_id_is_its_owners_alone(make_bare: Callable[..., Bare]) -> None:
    bare, keys = keyed(make_bare)
    chosen = "2026-12-08-harbour"
    post = lambda who, body, **kw: httpx.post(  # noqa: E731
        bare.url + "/v1/jobs", json=body, headers=keys[who], **kw
    )
    users = post("alice", {"prompt": "harbour at noon", "id": chosen})
    assert users.status_code == 202, users.text
    # The admin's nightly job with the same id: its own job, no conflict, nothing told.
    admins = post("admin", {"prompt": "harbour at night", "id": chosen})
    assert admins.status_code == 202, admins.text
    assert admins.json()["id"] != users.json()["id"]
    assert admins.json()["spec"]["prompt"] == "harbour at night"
    # Each owner's repeat finds its own job; a different request under it conflicts.
    again = post("admin", {"prompt": "harbour at night", "id": chosen})
    assert again.status_code == 200 and again.json()["id"] == admins.json()["id"]
    clash = post("alice", {"prompt": "something else", "id": chosen})
    assert clash.status_code == 409 and admins.json()["id"] not in clash.text
    # Idempotency-Key header and batches are scoped the same way.
    header = {"Idempotency-Key": "shared-words"}
    bob = httpx.post(bare.url + "/v1/jobs", json={"prompt": "b"}, headers={**keys["bob"], **header})
    alice = httpx.post(
        bare.url + "/v1/jobs", json={"prompt": "a"}, headers={**keys["alice"], **header}
    )
    assert (bob.status_code, alice.status_code) == (202, 202)
    batch = {"requests": [{"prompt": "nightly 1", "id": "n-1"}, {"prompt": "n 2", "id": "n-2"}]}
    first = httpx.post(bare.url + "/v1/batches", json=batch, headers=keys["alice"])
    second = httpx.post(bare.url + "/v1/batches", json=batch, headers=keys["admin"])
    assert (first.status_code, second.status_code) == (202, 202), second.text
    assert first.json()["id"] != second.json()["id"]
    # The chosen id finds its job, for its owner only.
    mine = httpx.get(f"{bare.url}/v1/jobs/{chosen}", headers=keys["alice"])
    assert mine.status_code == 200 and mine.json()["id"] == users.json()["id"]
    theirs = httpx.get(f"{bare.url}/v1/jobs/{chosen}", headers=keys["admin"])
    assert theirs.json()["id"] == admins.json()["id"]
    nobody = httpx.get(f"{bare.url}/v1/jobs/{chosen}", headers=keys["bob"])
    unknown = httpx.get(f"{bare.url}/v1/jobs/never-chosen", headers=keys["bob"])
    assert (nobody.status_code, unknown.status_code) == (404, 404)
    assert nobody.json()["error"]["message"].replace(chosen, "X") == unknown.json()["error"][
        "message"
    ].replace("never-chosen", "X")


def test_the_inbox_batch_and_a_users_job_share_an_id_without_a_conflict(
    make_bare: Callable[..., Bare], make_spec: Callable[..., object]
) -> None:
    """The inbox (the admin's, owner None) and a user may both use one id."""
    bare, keys = keyed(make_bare)
    users = httpx.post(
        bare.url + "/v1/jobs", json={"prompt": "x", "id": "nightly"}, headers=keys["alice"]
    )
    assert users.status_code == 202
    from alice_spool.records import NewJob

    (answer,) = bare.store.jobs.enqueue_keyed(
        [NewJob(make_spec("from the inbox", model="sd/tiny"), "nightly", "night.json")],  # type: ignore[arg-type]
        source="inbox",
    )
    assert not isinstance(answer, Exception) and answer.created
    assert answer.job.id != users.json()["id"] and answer.job.owner is None


def test_another_owners_id_is_no_page_cursor(make_bare: Callable[..., Bare]) -> None:
    bare, keys = keyed(make_bare)
    bobs = httpx.post(bare.url + "/v1/jobs", json={"prompt": "b"}, headers=keys["bob"]).json()
    alices = httpx.post(bare.url + "/v1/jobs", json={"prompt": "a"}, headers=keys["alice"]).json()
    unknown = "0" * 30
    for parameter in ("before",):
        other = httpx.get(f"{bare.url}/v1/jobs?{parameter}={bobs['id']}", headers=keys["alice"])
        made_up = httpx.get(f"{bare.url}/v1/jobs?{parameter}={unknown}", headers=keys["alice"])
        assert (other.status_code, made_up.status_code) == (404, 404), parameter
        assert other.json()["error"]["code"] == made_up.json()["error"]["code"]
        assert other.json()["error"]["message"].replace(bobs["id"], "X") == made_up.json()["error"][
            "message"
        ].replace(unknown, "X")
        own = httpx.get(f"{bare.url}/v1/jobs?{parameter}={alices['id']}", headers=keys["alice"])
        assert own.status_code == 200
        admin = httpx.get(f"{bare.url}/v1/jobs?{parameter}={bobs['id']}", headers=keys["admin"])
        assert admin.status_code == 200
    # A batch filter: another's batch looks like one that does not exist (an empty page).
    batch = httpx.post(
        bare.url + "/v1/batches", json={"requests": [{"prompt": "q"}]}, headers=keys["bob"]
    ).json()["id"]
    for batch_id in (batch, "0" * 30):
        page = httpx.get(f"{bare.url}/v1/jobs?batch_id={batch_id}", headers=keys["alice"])
        assert page.status_code == 200 and page.json()["data"] == []
        one = httpx.get(f"{bare.url}/v1/batches/{batch_id}", headers=keys["alice"])
        assert one.status_code == 404


def add_model(bare: Bare, name: str) -> None:
    folder = bare.models / name
    folder.mkdir(parents=True)
    write_fake_model(folder)


def test_a_users_download_does_not_move_the_default_model(
    make_bare: Callable[..., Bare],
) -> None:
    bare, keys = keyed(make_bare)
    add_model(bare, "mmm-model")
    first = httpx.post(bare.url + "/v1/jobs", json={"prompt": "a"}, headers=keys["admin"])
    assert first.json()["model"] == "sd/mmm-model"
    # A model whose name sorts first arrives (a user's download lands exactly so).
    add_model(bare, "aaa-model")
    httpx.post(bare.url + "/v1/models/refresh", headers=keys["alice"])
    later = httpx.post(bare.url + "/v1/jobs", json={"prompt": "b"}, headers=keys["admin"])
    assert later.json()["model"] == "sd/mmm-model"
    # Only an admin moves it; a user may not.
    denied = httpx.post(
        bare.url + "/v1/models/default", json={"model": "sd/aaa-model"}, headers=keys["alice"]
    )
    assert denied.status_code == 403
    moved = httpx.post(
        bare.url + "/v1/models/default", json={"model": "sd/aaa-model"}, headers=keys["admin"]
    )
    assert moved.status_code == 200
    last = httpx.post(bare.url + "/v1/jobs", json={"prompt": "c"}, headers=keys["alice"])
    assert last.json()["model"] == "sd/aaa-model"
    assert (bare.models / ".default").read_text().strip() == "sd/aaa-model"


def test_the_first_default_is_pinned_even_before_any_job(tmp_path: Path) -> None:
    """The registry pins the default the first time it works one out, and a choice made
    meanwhile by an admin stands."""
    from alice_spool.library.registry import ModelRegistry

    models = tmp_path / "models"
    for name in ("mmm", "zzz"):
        (models / name).mkdir(parents=True)
        write_fake_model(models / name)
    registry = ModelRegistry(models)
    assert registry.default().id == "sd/mmm"
    (models / "aaa").mkdir()
    write_fake_model(models / "aaa")
    assert ModelRegistry(models).default().id == "sd/mmm"
    registry.set_default("sd/zzz")
    assert ModelRegistry(models).default().id == "sd/zzz"
    assert not list(models.glob(".default.*"))  # no scratch files left behind


def test_sharing_one_image_of_a_job_opens_none_of_its_others(
    make_bare: Callable[..., Bare],
) -> None:
    """The gallery's privacy is per image: each image's URL has a secret of its own."""
    bare, keys = keyed(make_bare)
    made = httpx.post(bare.url + "/v1/jobs", json={"prompt": "two", "n": 2}, headers=keys["alice"])
    job_id = made.json()["id"]
    (taken,) = bare.store.leases.claim_batch("t-runner", 1, lease_s=30)
    folder = bare.outbox / job_id
    folder.mkdir(parents=True)
    images = []
    for i in range(2):
        (folder / f"{job_id}-{i}.png").write_bytes(png())
        images.append({"file": f"{job_id}-{i}.png", "seed": i, "width": 8, "height": 8})
    bare.store.leases.succeed(taken.id, "t-runner", {"images": images})
    shared = httpx.patch(
        f"{bare.url}/v1/gallery/{job_id}-0/privacy",
        json={"isPublic": True, "expiresInHours": 1},
        headers=keys["alice"],
    )
    assert shared.status_code == 200, shared.text
    seen = httpx.get(bare.url + "/v1/gallery", headers=keys["bob"]).json()["data"]
    (public,) = [item for item in seen if item["id"] == f"{job_id}-0"]
    assert httpx.get(public["url"]).status_code == 200
    sibling = public["url"].replace(f"{job_id}-0.png", f"{job_id}-1.png")
    answer = httpx.get(sibling)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
    own = httpx.get(f"{bare.url}/v1/jobs/{job_id}", headers=keys["alice"]).json()["image_urls"]
    assert len({url.split("/")[-2] for url in own}) == 2  # two images, two secrets
    assert [httpx.get(url).status_code for url in own] == [200, 200]
