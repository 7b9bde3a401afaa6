"""`JobSpec`: one generation request, normalised: the record a job holds, its
fingerprint (idempotency) and batch key, stored and read back (pure, no I/O)."""

from __future__ import annotations

import hashlib
import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .. import samplers
from ..fields import SEED_MAX
from ..hires import HiresFix
from .settings import DEFAULT_GUIDANCE_SCALE, DEFAULT_SCHEDULER, DEFAULT_STEPS

# Every scheduler name a job may hold: a sampler alone, or a sampler and a schedule type.
SCHEDULERS: tuple[str, ...] = samplers.NAMES

# Seeds need to be unpredictable to nobody, only different: a fast generator will do.
_SEEDS = random.Random(secrets.randbits(128))


def random_seed() -> int:
    return _SEEDS.getrandbits(32)


@dataclass(frozen=True)
class JobSpec:
    """One normalised generation request.

    `model`, `width` and `height` are None when the request left them to the server
    (the default model, the model's native size); `seed` is None until a random one is drawn.
    """

    prompt: str
    negative_prompt: str = ""
    model: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    seed: int | None = None
    scheduler: str = DEFAULT_SCHEDULER
    n: int = 1
    priority: int = 0
    # LoRA adapters as (lora/<name>, scale), sorted by name: the set, not an order.
    loras: tuple[tuple[str, float], ...] = ()
    # Image inputs, as `sha256:<hex>` of the files stored with the job (inputs.py).
    init_image: str | None = None
    mask_image: str | None = None  # white = repaint, black = keep
    strength: float | None = None  # img2img/inpainting: how much to change (0 < s <= 1)
    hires: HiresFix | None = None  # txt2img in two passes (hires.py)
    # A1111's CLIP_stop_at_last_layers: 2..12 stops that many layers from the end
    # (diffusers' clip_skip is one less); 1, the last layer, is stored as None.
    clip_skip: int | None = None
    # A VAE of <models>/vae/ (vae/<name>) in place of the model's own; None: its own.
    vae: str | None = None
    # Classifier-free guidance over the negative prompt for a model whose guidance_scale
    # is distilled (FLUX.1: diffusers' `true_cfg_scale`); None: off (1 means off too).
    true_cfg_scale: float | None = None
    # The T5 prompt length in tokens (FLUX.1, SD 3.x); None: the pipeline's own.
    max_sequence_length: int | None = None
    # What a client's own API asked for that the server records as it was sent and does
    # not act on otherwise (the OpenAI doors: the model name asked for when it was an
    # alias, `user`, `style`, `quality`, `output_format`, ...): sorted (name, value)
    # pairs. Set by the doors, never a request field of its own.
    client_fields: tuple[tuple[str, str | int], ...] = ()
    # The fields among FAMILY_FIELDS the request left to the model, filled with the
    # server's defaults meanwhile: the door puts the model family's own in their place
    # once it knows the model (registry.with_model), and empties this. Never stored.
    left_to_model: tuple[str, ...] = field(default=(), compare=False)

    @property
    def mode(self) -> str:
        if self.init_image is None:
            return "txt2img" if self.hires is None else "hires"
        return "inpaint" if self.mask_image is not None else "img2img"

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in _SPEC_FIELDS if name not in _TRANSIENT}
        data["loras"] = [{"name": name, "scale": scale} for name, scale in self.loras]
        data["hires"] = self.hires.to_dict() if self.hires is not None else None
        data["client_fields"] = dict(self.client_fields)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        """Rebuild a spec that was stored by `to_dict` (trusted input: no validation)."""
        values = {k: v for k, v in data.items() if k in _STORED}
        values["loras"] = tuple(
            (entry["name"], float(entry["scale"])) for entry in values.get("loras") or ()
        )  # the others added later are None, or absent from older records
        if values.get("hires") is not None:
            values["hires"] = HiresFix.from_dict(values["hires"])
        values["client_fields"] = tuple(sorted((values.get("client_fields") or {}).items()))
        return cls(**values)

    @property
    def lora_names(self) -> list[str]:
        return [name for name, _ in self.loras]

    def fingerprint(self) -> str:
        """A stable hash of the request, used to tell a repeated request from a different
        one. The fields are strings, numbers and None, whose `repr` is stable, in a fixed
        order; hires as its (name, value) pairs that differ from their defaults."""
        values = tuple(
            getattr(self, name) for name in _SPEC_FIELDS if name not in _LATER + _TRANSIENT
        )
        # The fields added later count only when set: a plain request hashes as before.
        later = {name: getattr(self, name) for name in _LATER if getattr(self, name)}
        # What the server noted it ignored is not what the request asked for.
        asked = tuple((k, v) for k, v in self.client_fields if k != IGNORED)
        if asked:
            later["client_fields"] = asked
        else:
            later.pop("client_fields", None)
        if self.hires is not None:
            later["hires"] = self.hires.fingerprint_items()
        values += tuple(later.items())
        return hashlib.sha256(repr(values).encode()).hexdigest()

    def with_seed(self) -> JobSpec:
        """This spec with a seed: its own, or a freshly drawn random one (recorded)."""
        if self.seed is not None:
            return self
        return replace(self, seed=random_seed())

    def batch_key(self) -> tuple[object, ...]:
        """Specs with equal keys can run in one pipeline call: same model, size, steps,
        scheduler, guidance and LoRA set (prompts, seeds and image counts may differ)."""
        key: tuple[object, ...] = (
            self.model,
            self.width,
            self.height,
            self.steps,
            self.scheduler,
            self.guidance_scale,
        )
        # Only a spec with LoRAs or an input image adds them, so that the digests of
        # plain jobs queued before these existed still match new plain jobs.
        if self.loras:
            key = (*key, ("loras", self.loras))
        if self.init_image is not None:
            key = (*key, (self.mode, self.strength))
        if self.hires is not None:
            key = (*key, ("hires", self.hires.batch_key()))
        if self.clip_skip is not None:
            key = (*key, ("clip_skip", self.clip_skip))
        if self.vae is not None:
            key = (*key, ("vae", self.vae))
        if self.true_cfg_scale is not None:
            key = (*key, ("true_cfg_scale", self.true_cfg_scale))
        if self.max_sequence_length is not None:
            key = (*key, ("max_sequence_length", self.max_sequence_length))
        return key

    def batch_digest(self) -> str:
        """`batch_key` as a short stable string: the store's column for finding jobs that
        can share a pipeline call."""
        return hashlib.sha256(repr(self.batch_key()).encode()).hexdigest()[:32]

    def image_seeds(self) -> list[int]:
        """The seed of each of the `n` images: consecutive, wrapping at 2**32."""
        if self.seed is None:
            raise ValueError("the spec has no seed yet; call with_seed() first")
        return [(self.seed + i) % (SEED_MAX + 1) for i in range(self.n)]


_SPEC_FIELDS = tuple(f.name for f in fields(JobSpec))
# The client_fields entry in which the door notes what the model's family had no use for
# (registry.for_family): recorded with the job, not part of what it asked for.
IGNORED = "ignored"
# Not in the first fingerprints.
_LATER = (
    "loras", "init_image", "mask_image", "strength", "hires", "clip_skip", "vae",
    "true_cfg_scale", "max_sequence_length", "client_fields",
)  # fmt: skip
# Not part of what a job asks for: never stored, never in its fingerprint.
_TRANSIENT = ("left_to_model",)
# The request fields a JobSpec has (its client_fields are the doors' to set).
SPEC_FIELDS = tuple(n for n in _SPEC_FIELDS if n not in ("client_fields", *_TRANSIENT))
# What a model family may have its own default for (families.py).
FAMILY_FIELDS = ("steps", "guidance_scale", "scheduler")
_STORED = frozenset(_SPEC_FIELDS) - frozenset(_TRANSIENT)


@dataclass(frozen=True)
class Request:
    """A request as it arrives in a file or on the command line: a spec and its `id`."""

    spec: JobSpec
    idempotency_key: str | None = None
