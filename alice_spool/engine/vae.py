"""A request's own VAE in place of the resident model's: loaded once (a diffusers folder,
or an original-layout single file read with the model's own VAE config), checked to fit
the model, placed as the model is, kept in a small cache, and swapped in for one call
with the model's own put back after it, whatever happens."""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from diffusers import AutoencoderKL

from ..errors import InvalidParameters, ModelLoadFailed
from ..library.vaes import VaeInfo
from .generate import Loaded

log = logging.getLogger(__name__)


def check_fits(vae: Any, own: Any, vae_id: str, model_id: str) -> None:
    """A VAE decodes a model's latents only if it has their channels, their size (the
    same number of down-scaling blocks) and their scale; else `invalid_parameters`
    naming `vae`, before any call."""
    for what, key in (
        ("latent channels", "latent_channels"),
        ("down-scaling blocks", "block_out_channels"),
        ("latent scaling factor", "scaling_factor"),
        ("latent shift", "shift_factor"),
    ):
        theirs, ours = vae.config.get(key), own.config.get(key)
        if key == "block_out_channels":
            theirs, ours = len(theirs or ()), len(ours or ())
        if isinstance(theirs, float) or isinstance(ours, float):
            same = theirs is not None and ours is not None and math.isclose(theirs, ours)
        else:
            same = theirs == ours
        if not same:
            raise InvalidParameters(
                f"vae: {vae_id} does not fit {model_id}: its {what} are {theirs}, the "
                f"model's VAE has {ours}",
                field="vae",
            )


def load_vae(info: VaeInfo, loaded: Loaded) -> Any:
    """The VAE `info` names, in the model's number format, checked against the model's
    own, placed where the model's is. A single file takes the model's own VAE config
    (the layout and scale the model was made with), offline."""
    own = loaded.pipeline.vae
    dtype = loaded.placement.dtype
    started = time.perf_counter()
    try:
        if info.format == "diffusers":
            vae = AutoencoderKL.from_pretrained(info.path, local_files_only=True, dtype=dtype)
        else:
            with tempfile.TemporaryDirectory(prefix="alice-vae-config.") as config:
                own.save_config(config)
                vae = AutoencoderKL.from_single_file(
                    str(info.path), config=config, local_files_only=True, dtype=dtype
                )
    except Exception as exc:  # diffusers and safetensors report bad files variously
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelLoadFailed(f"cannot load {info.id} from {info.path}: {reason}") from exc
    check_fits(vae, own, info.id, loaded.model_id)
    vae.requires_grad_(False)
    if loaded.memory_mode == "full" or loaded.placement.device.type != "cuda":
        vae.to(loaded.placement.device)
    else:  # offloaded with the rest of the pipeline (`_rehook`), sliced and tiled as its own
        vae.enable_slicing()
        vae.enable_tiling()
    log.info(
        "loaded VAE %s for %s in %.2f s", info.id, loaded.model_id, time.perf_counter() - started
    )
    return vae


class VaeCache:
    """The VAEs loaded for the resident model, by file and time (a replaced file is a
    new VAE), at most `capacity` kept (the least recently used dropped)."""

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = max(1, capacity)
        self._loaded: OrderedDict[tuple[str, str, int, int], Any] = OrderedDict()
        self.loads = 0  # from disk

    def get(self, info: VaeInfo, loaded: Loaded) -> Any:
        stat = info.weights.stat()
        key = (loaded.model_id, str(info.weights), stat.st_mtime_ns, stat.st_size)
        vae = self._loaded.get(key)
        if vae is not None:
            self._loaded.move_to_end(key)
            return vae
        vae = load_vae(info, loaded)
        self.loads += 1
        self._loaded[key] = vae
        while len(self._loaded) > self.capacity:
            self._loaded.popitem(last=False)
        return vae

    def clear(self) -> None:
        self._loaded.clear()


def _rehook(loaded: Loaded) -> None:
    """With CPU offload, the hooks that move each part to the GPU as it runs are made
    again for the parts the pipeline has now."""
    if loaded.placement.device.type != "cuda":
        return
    if loaded.memory_mode == "low":
        loaded.pipeline.enable_model_cpu_offload(device=loaded.placement.device)
    elif loaded.memory_mode == "minimal":
        loaded.pipeline.enable_sequential_cpu_offload(device=loaded.placement.device)


@contextmanager
def swapped_in(loaded: Loaded, vae: Any | None) -> Iterator[None]:
    """The pipeline (and the img2img and inpainting ones made from it, which read its
    VAE at each call) runs with `vae` until the block ends, then with its own again;
    None: nothing changes."""
    if vae is None:
        yield
        return
    pipeline = loaded.pipeline
    own = pipeline.vae
    pipeline.vae = vae
    try:
        _rehook(loaded)
        yield
    finally:
        pipeline.vae = own
        for derived in loaded.derived.values():
            derived.vae = own
        _rehook(loaded)
