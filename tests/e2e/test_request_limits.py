"""Limits every door applies to a request, on a real server (no runner: jobs stay
queued): a user's key may not set a priority above `users.max_priority` (an admin's,
a configured one's and an open server's may), and an img2img or inpainting request that
would leave diffusers no denoising step (int(steps x strength) < 1) is a 400 naming
`strength` and `steps` at every door that takes an image."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.support.bare import Bare

CONFIGURED = "configured-admin-key-0123456789"


def png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 120, 200)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def png_bytes() -> bytes:
    return base64.b64decode(png_b64())


@pytest.fixture
def keyed(make_bare: Callable[..., Bare]) -> tuple[Bare, dict[str, dict[str, str]]]:
    """A server whose waiting routes give up after a second (no runner takes the jobs);
    a stored admin, a configured admin and a user."""
    bare = make_bare(**{"server.request_timeout_s": 1.0, "server.api_keys": {"ops": CONFIGURED}})
    _, root = bare.store.keys.add_key("root", role="admin")
    _, user = bare.store.keys.add_key("pat", role="user")
    return bare, {
        "admin": {"Authorization": f"Bearer {root}"},
        "configured": {"X-Api-Key": CONFIGURED},
        "user": {"X-Api-Key": user},
    }


def post(bare: Bare, path: str, headers: dict[str, str], **kwargs: Any) -> httpx.Response:
    return httpx.post(bare.url + path, headers=headers, timeout=30, **kwargs)


def priorities(bare: Bare, client: str) -> list[int]:
    return sorted(
        job.spec.priority
        for job in bare.store.jobs.list_jobs(limit=500).jobs
        if job.client == client
    )


# Each door that takes a priority: (name, send(bare, headers, priority) -> answer).
def _job(bare: Bare, headers: dict[str, str], priority: int) -> httpx.Response:
    return post(bare, "/v1/jobs", headers, json={"prompt": "a fox", "priority": priority})


def _batch(bare: Bare, headers: dict[str, str], priority: int) -> httpx.Response:
    requests = [{"prompt": "calm"}, {"prompt": "a fox", "priority": priority}]
    return post(bare, "/v1/batches", headers, json={"requests": requests})


def _chat(bare: Bare, headers: dict[str, str], priority: int) -> httpx.Response:
    body = {
        "model": "sd/tiny",
        "messages": [{"role": "user", "content": "a fox"}],
        "sam_config": {"priority": priority},
    }
    return post(bare, "/v1/chat/completions", headers, json=body)


def _images(bare: Bare, headers: dict[str, str], priority: int) -> httpx.Response:
    return post(
        bare, "/v1/images/generations", headers, json={"prompt": "a fox", "priority": priority}
    )


def _edits(bare: Bare, headers: dict[str, str], priority: int) -> httpx.Response:
    files = {"image": ("fox.png", png_bytes(), "image/png")}
    data = {"prompt": "a fox", "priority": str(priority)}
    return post(bare, "/v1/images/edits", headers, files=files, data=data)


DOORS = {"jobs": _job, "batches": _batch, "chat": _chat, "images": _images, "edits": _edits}


@pytest.mark.parametrize("door", DOORS)
def test_a_users_key_may_not_set_a_priority_above_the_cap(
    keyed: tuple[Bare, dict[str, dict[str, str]]], door: str
) -> None:
    bare, keys = keyed
    send = DOORS[door]
    refused = send(bare, keys["user"], 1)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_parameters", "priority")
    assert "users.max_priority" in error["message"]
    assert priorities(bare, "pat") == []  # nothing queued
    for who, name in (("admin", "root"), ("configured", "ops")):
        taken = send(bare, keys[who], 100)
        # The waiting doors time out (no runner): the job was queued all the same.
        assert taken.status_code in (200, 202, 504), taken.text
        assert 100 in priorities(bare, name)
    assert send(bare, keys["user"], 0).status_code in (200, 202, 504)  # at the cap
    assert send(bare, keys["user"], -5).status_code in (200, 202, 504)  # below it
    assert [p for p in priorities(bare, "pat") if p] == [-5]


def test_changing_a_priority_is_capped_for_a_user_and_not_for_an_admin(
    keyed: tuple[Bare, dict[str, dict[str, str]]],
) -> None:
    bare, keys = keyed
    job = _job(bare, keys["user"], 0).json()["id"]
    path = f"/v1/jobs/{job}/priority"
    refused = post(bare, path, keys["user"], json={"priority": 50})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "priority"
    assert bare.store.jobs.get(job).spec.priority == 0
    assert post(bare, path, keys["user"], json={"priority": -3}).json()["priority"] == -3
    assert post(bare, path, keys["admin"], json={"priority": 50}).json()["priority"] == 50
    assert post(bare, path, keys["configured"], json={"priority": 99}).json()["priority"] == 99


def test_an_open_server_has_no_cap(make_bare: Callable[..., Bare]) -> None:
    open_server = make_bare()  # no key anywhere: one person, any priority
    assert _job(open_server, {}, 100).status_code == 202
    job = _job(open_server, {}, 0).json()["id"]
    answer = post(open_server, f"/v1/jobs/{job}/priority", {}, json={"priority": 100})
    assert answer.json()["priority"] == 100


def test_the_cap_is_configured(make_bare: Callable[..., Bare]) -> None:
    capped = make_bare(**{"users.max_priority": 10})
    _, user = capped.store.keys.add_key("pat", role="user")
    headers = {"X-Api-Key": user}
    assert _job(capped, headers, 10).status_code == 202  # the cap itself
    refused = _job(capped, headers, 11)
    assert refused.status_code == 400 and "above 10" in refused.json()["error"]["message"]
    job = _job(capped, headers, 0).json()["id"]
    refused = post(capped, f"/v1/jobs/{job}/priority", headers, json={"priority": 11})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "priority"


# -- img2img with no denoising step -------------------------------------------------------


def test_img2img_without_a_denoising_step_is_refused_at_every_door(
    make_bare: Callable[..., Bare],
) -> None:
    """1 step at 0.75 and 3 steps at 0.2 leave int(steps x strength) = 0; 2 at 0.75 and
    5 at 0.2 leave one. Each door answers in its own shape, naming the field."""
    bare = make_bare(**{"server.request_timeout_s": 1.0})
    image = png_b64()
    for steps, strength in ((1, 0.75), (3, 0.2)):
        native = post(
            bare,
            "/v1/jobs",
            {},
            json={"prompt": "a boat", "init_image": image, "steps": steps, "strength": strength},
        )
        assert native.status_code == 400, native.text
        error = native.json()["error"]
        assert error["param"] == "strength" and "steps" in error["message"]

        a1111 = post(
            bare,
            "/sdapi/v1/img2img",
            {},
            json={
                "prompt": "a boat",
                "init_images": [image],
                "steps": steps,
                "denoising_strength": strength,
                "width": 64,
                "height": 64,
            },
        )
        assert a1111.status_code == 400, a1111.text
        assert a1111.json()["body"] == "denoising_strength" and "steps" in a1111.json()["detail"]

        restplan = post(
            bare,
            "/v1/img2img",
            {},
            json={
                "prompt": "a boat",
                "image": image,
                "num_inference_steps": steps,
                "strength": strength,
            },
        )
        assert restplan.status_code == 422, restplan.text
        assert "strength" in restplan.json()["detail"] and "steps" in restplan.json()["detail"]

        files = {"image": ("boat.png", png_bytes(), "image/png")}
        data = {"prompt": "a boat", "steps": str(steps), "strength": str(strength)}
        edits = post(bare, "/v1/images/edits", {}, files=files, data=data)
        assert edits.status_code == 400 and edits.json()["error"]["param"] == "strength"

        chat = post(
            bare,
            "/v1/chat/completions",
            {},
            json={
                "messages": [{"role": "user", "content": "a boat"}],
                "sam_config": {"steps": steps, "strength": strength, "input_images": [image]},
            },
        )
        assert chat.status_code == 400 and chat.json()["error"]["param"] == "strength"
    assert bare.store.jobs.list_jobs(limit=50).jobs == []  # nothing queued

    for steps, strength in ((2, 0.75), (5, 0.2)):  # one step: queued
        native = post(
            bare,
            "/v1/jobs",
            {},
            json={"prompt": "a boat", "init_image": image, "steps": steps, "strength": strength},
        )
        assert native.status_code == 202, native.text
        a1111 = post(
            bare,
            "/sdapi/v1/img2img",
            {},
            json={
                "prompt": "a boat",
                "init_images": [image],
                "steps": steps,
                "denoising_strength": strength,
                "width": 64,
                "height": 64,
            },
        )
        assert a1111.status_code != 400, a1111.text  # queued; no runner: it times out
    queued = bare.store.jobs.list_jobs(limit=50).jobs
    assert sorted((j.spec.steps, j.spec.strength) for j in queued) == [
        (2, 0.75),
        (2, 0.75),
        (5, 0.2),
        (5, 0.2),
    ]


def test_a1111_img2img_with_one_step_is_a_400_not_a_500(make_bare: Callable[..., Bare]) -> None:
    """A1111's img2img with `steps: 1` and its default strength (0.75): a 400 at once."""
    bare = make_bare()
    body = {"prompt": "x", "init_images": [png_b64()], "steps": 1}
    answer = post(bare, "/sdapi/v1/img2img", {}, content=json.dumps(body))
    assert answer.status_code == 400, answer.text
    assert "raise steps to at least 2" in answer.json()["detail"]
