"""The request's `vae` field: its spellings, A1111's words for the model's own VAE, and
plain jobs' fingerprints and batch digests kept as they were."""

from __future__ import annotations

import pytest

from alice_spool.errors import InvalidParameters
from alice_spool.spec import JobSpec, parse_spec

PLAIN = {
    "prompt": "a lighthouse",
    "steps": 20,
    "seed": 7,
    "width": 512,
    "height": 512,
    "model": "sd/tiny",
    "scheduler": "euler",
    "guidance_scale": 7.0,
}
# A plain request's, from before the field existed (tests/unit/test_hires.py pins them too).
PLAIN_FINGERPRINT = "08adae4942be62544dbf2498235315c039798eb2442846a72fde26b98fd2091c"
PLAIN_BATCH_DIGEST = "f006b74b9f3ff526e8fd1254132f879a"


@pytest.mark.parametrize(
    "given", ["ft-mse", "vae/ft-mse", "ft-mse.safetensors", "vae/ft-mse.safetensors", " ft-mse "]
)
def test_a_vae_by_name_id_or_a1111s_file_name(given: str) -> None:
    assert parse_spec({**PLAIN, "vae": given}).vae == "vae/ft-mse"


@pytest.mark.parametrize("given", [None, "Automatic", "automatic", "None", "NONE"])
def test_null_automatic_and_none_are_the_models_own(given: str | None) -> None:
    spec = parse_spec({**PLAIN, "vae": given})
    assert spec.vae is None
    assert spec.fingerprint() == PLAIN_FINGERPRINT
    assert spec.batch_digest() == PLAIN_BATCH_DIGEST


@pytest.mark.parametrize("given", ["", "   ", "a/b", ".hidden", "vae/", 5, ["x"]])
def test_a_bad_vae_names_the_field(given: object) -> None:
    with pytest.raises(InvalidParameters) as refused:
        parse_spec({**PLAIN, "vae": given})
    assert refused.value.field == "vae"


def test_a_vae_counts_in_the_fingerprint_and_the_batch_key_and_is_stored() -> None:
    plain = parse_spec(PLAIN)
    mse, ema = (parse_spec({**PLAIN, "vae": name}) for name in ("mse", "ema"))
    assert len({plain.fingerprint(), mse.fingerprint(), ema.fingerprint()}) == 3
    assert len({plain.batch_key(), mse.batch_key(), ema.batch_key()}) == 3
    assert mse.to_dict()["vae"] == "vae/mse" and plain.to_dict()["vae"] is None
    assert JobSpec.from_dict(mse.to_dict()) == mse
    older = {k: v for k, v in plain.to_dict().items() if k != "vae"}  # stored before it
    assert JobSpec.from_dict(older) == plain
