"""A job's fingerprint (its idempotency key's request) and batch digest are stored with
it: the same request must hash as it always has, however the parser is written. The
hex strings here were computed by the parser that was in place before the request
became a typed model; a change that moves one of them breaks stored jobs' keys."""

from __future__ import annotations

import json
from typing import Any

import pytest

from alice_spool.hires import HiresFix
from alice_spool.spec import JobSpec, parse_request, parse_spec

IMAGE = "sha256:" + "ab" * 32
MASK = "sha256:" + "cd" * 32

SPECS: dict[str, JobSpec] = {
    "plain": JobSpec(prompt="a cat"),
    "txt2img": JobSpec(
        prompt="a red fox in snow",
        negative_prompt="blurry",
        model="sd/tiny",
        width=512,
        height=768,
        steps=30,
        guidance_scale=6.5,
        seed=1234,
        scheduler="euler_a",
        n=2,
        priority=5,
    ),
    "img2img": JobSpec(
        prompt="a watercolour", model="sd/tiny", init_image=IMAGE, strength=0.6, seed=7
    ),
    "inpaint": JobSpec(prompt="a hat", init_image=IMAGE, mask_image=MASK, strength=0.75, steps=20),
    "loras": JobSpec(
        prompt="a fox",
        loras=(("lora/Film Grain", 0.6), ("lora/b", 1.0), ("lora/c", -1.5)),
    ),
    "hires": JobSpec(prompt="a castle", width=512, height=512, hires=HiresFix()),
    "hires_custom": JobSpec(
        prompt="a castle",
        hires=HiresFix(
            scale=None,
            width=1024,
            upscaler="Latent (bicubic)",
            steps=10,
            strength=0.5,
            scheduler="euler",
            prompt="detailed",
        ),
    ),
    "flux": JobSpec(
        prompt="a lighthouse",
        negative_prompt="fog",
        model="sd/flux-dev",
        steps=28,
        guidance_scale=3.5,
        scheduler="euler",
        true_cfg_scale=4.0,
        max_sequence_length=256,
    ),
    "clip_vae": JobSpec(prompt="anime", clip_skip=2, vae="vae/kl-f8-anime"),
    "client_fields": JobSpec(
        prompt="a fox",
        client_fields=(("ignored", "negative_prompt"), ("model", "dall-e-3"), ("user", "u")),
    ),
    # What the server noted it ignored is not what was asked: the plain request's hash.
    "only_ignored": JobSpec(prompt="a cat", client_fields=(("ignored", "true_cfg_scale"),)),
}

# (fingerprint, batch_digest) of each spec above
PINNED = {
    "plain": (
        "e80c233be31f64107472419cc2d9c6147420f794e97e18c0b8eaec50495e0e63",
        "e46840aaacc0e07d12d54d94b7421c8d",
    ),
    "txt2img": (
        "3a0d23b64035594af0a0f83c1bf3effc48549ce205b58d93358e2d12c54b0d72",
        "cc2a4e394767b912ef96d3e609e5cd3e",
    ),
    "img2img": (
        "ab954879e3d9528fab1661d1e5f474c11b6b0bcbf64af5eab3b6c925da432c8a",
        "248411656a9c99795ae5bec188953757",
    ),
    "inpaint": (
        "5fb9a0b36742cd1435f685750d51a738676f87166bb3951300a118832113418b",
        "52a9d87a0a8a015afe2d6d71248beb60",
    ),
    "loras": (
        "600aa7b03f552730eff42e64e693de0d08a935a457a0ad9795ecdb494c10224b",
        "9f33909fd57844319f29144234c6da7a",
    ),
    "hires": (
        "31bc25082a6865391c5497fcbb7b6706cbdadc970b2326850b65f8a1e1940f88",
        "50d0f50f4497ca1f6e591bc293a4142d",
    ),
    "hires_custom": (
        "18a6ae883c7b63a3edd1cb334ba2c03b143877138dcf616c127dcde440aab2ad",
        "251188c2b3fd63639de89c03b33bc552",
    ),
    "flux": (
        "13dabd74cb989bb2d35cb7d0da815ee9046bfac21d27b30bda615f369b536f77",
        "b82527e1bb04fad87610b379e3f1d735",
    ),
    "clip_vae": (
        "19ddc66f4ace2418b6abd8867e47ba08f32992f69753b09d6285c8b73946bc25",
        "da409cf4fffb7fcbb3c766cdb226efad",
    ),
    "client_fields": (
        "ff8a5bee47bbfdd931082e74550277dc1c1a705340d14cba77d2e44e40ff4b63",
        "e46840aaacc0e07d12d54d94b7421c8d",
    ),
    "only_ignored": (
        "e80c233be31f64107472419cc2d9c6147420f794e97e18c0b8eaec50495e0e63",
        "e46840aaacc0e07d12d54d94b7421c8d",
    ),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_stored_jobs_fingerprint_and_batch_digest_are_what_they_were(name: str) -> None:
    spec = SPECS[name]
    assert (spec.fingerprint(), spec.batch_digest()) == PINNED[name]
    stored = json.loads(json.dumps(spec.to_dict()))  # as the store keeps it
    assert JobSpec.from_dict(stored) == spec
    assert JobSpec.from_dict(stored).fingerprint() == PINNED[name][0]


# Requests as clients send them, and the fingerprint of what they parse to (the same
# parser before and after: aliases, shorthands, tags and coercions normalised alike).
REQUESTS: dict[str, tuple[dict[str, Any], str]] = {
    "typical": (
        {
            "prompt": "a fox <lora:Film Grain:0.6>, snow",
            "negative_prompt": "blurry",
            "steps": 20.0,
            "seed": -1,
            "size": "768x512",
            "scheduler": "Euler a",
            "num_images": 2,
            "model": "tiny",
        },
        "bc57f9c176cb66f83d620a4ca17958914552202f7e7f34553594c245bb76c629",
    ),
    "img2img": (
        {"prompt": "x", "init_image": IMAGE, "strength": 0.5, "steps": 30, "guidance_scale": 5},
        "cc38798d10257d767111d2dd7b22c46b98273e73a65b2e583289e51e23971fe0",
    ),
    "hires": (
        {"prompt": "x", "hires": "2x", "width": 512, "height": 512, "seed": 3},
        "74eb73617d959e44eed81b10184a62acaf8573d0cccc8f4847499e712a691c13",
    ),
    "flux": (
        {
            "prompt": "x",
            "true_cfg_scale": 1,
            "clip_skip": 1,
            "vae": "Automatic",
            "model": "flux",
            "max_sequence_length": 256.0,
        },
        "85796f1c6106ae09ae58f9d9bbacc664c42377c9b26f1b42fd09c992ea975cef",
    ),
    "alice": (
        {
            "prompt": "x",
            "lora_paths": ["C:\\l\\e.safetensors"],
            "lora_scales": [0.25],
            "priority": 3,
        },
        "cb8796970e11db3e710436b8f16be6f256c409ec2b3bc7da90bbabef91153690",
    ),
}


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_a_request_sent_again_has_the_key_it_had(name: str) -> None:
    body, fingerprint = REQUESTS[name]
    assert parse_spec(body).fingerprint() == fingerprint
    assert parse_request({**body, "id": "k"}).spec.fingerprint() == fingerprint
