"""LoRA adapters in a resident pipeline, through diffusers' PEFT integration: each file
loaded once and reused, at most `capacity` kept (the least recently used unloaded),
activated per call with its scales, and switched off for calls without LoRAs (diffusers
then skips the adapter layers: the images are the plain model's, bit for bit)."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelLoadFailed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdapterUse:
    """One LoRA of a call: its file and scale."""

    lora_id: str
    path: Path
    scale: float


class Adapters:
    """The LoRAs loaded into one pipeline."""

    def __init__(self, pipeline: Any, capacity: int) -> None:
        self.pipeline = pipeline
        self.capacity = max(1, capacity)
        self._loaded: OrderedDict[tuple[str, int, int], str] = OrderedDict()
        self._serial = 0
        self.loads = 0  # from disk
        self.hits = 0  # from the cache
        self.last_load_s = 0.0
        # What the pipeline has on now: (adapter names, scales), or () for none. Setting
        # adapters walks every LoRA layer, so a call like the last one skips it.
        self._active: tuple[tuple[str, ...], tuple[float, ...]] | tuple[()] | None = None

    @property
    def loaded(self) -> int:
        return len(self._loaded)

    def activate(self, uses: Sequence[AdapterUse]) -> None:
        """Make exactly these LoRAs, at these scales, act in the next call (none: the
        plain model)."""
        if not uses:
            if self._loaded and self._active != ():
                self.pipeline.disable_lora()
                self._active = ()
            return
        keys = [self._key(use.path) for use in uses]
        names = []
        for use, key in zip(uses, keys, strict=True):
            name = self._loaded.get(key)
            if name is None:
                self._trim(keep=set(keys), limit=self.capacity - 1)
                name = self._load(use, key)
            else:
                self._loaded.move_to_end(key)
                self.hits += 1
            names.append(name)
        self._trim(keep=set(keys), limit=self.capacity)
        wanted = (tuple(names), tuple(use.scale for use in uses))
        if wanted != self._active:
            self.pipeline.enable_lora()
            self.pipeline.set_adapters(names, adapter_weights=[use.scale for use in uses])
            self._active = wanted

    def clear(self) -> None:
        if self._loaded:
            self.pipeline.unload_lora_weights()
            self._loaded.clear()
        self._active = None

    @staticmethod
    def _key(path: Path) -> tuple[str, int, int]:
        """A file as it is now: a replaced file is a new adapter."""
        info = path.stat()
        return (str(path), info.st_mtime_ns, info.st_size)

    def _trim(self, keep: set[tuple[str, int, int]], limit: int) -> None:
        """Unload the least recently used adapters this call does not need, down to
        `limit` (a call that needs more than the capacity gets them all, for now)."""
        while len(self._loaded) > limit:
            victim = next((key for key in self._loaded if key not in keep), None)
            if victim is None:
                return  # every loaded one is needed now: go over for this call
            name = self._loaded.pop(victim)
            self.pipeline.delete_adapters(name)
            self._active = None  # deleting changes what is set
            log.info("unloaded LoRA %s (least recently used)", Path(victim[0]).stem)

    def _load(self, use: AdapterUse, key: tuple[str, int, int]) -> str:
        self._serial += 1
        name = f"lora{self._serial}"
        started = time.perf_counter()
        try:
            self.pipeline.load_lora_weights(str(use.path), adapter_name=name)
        except Exception as exc:  # diffusers and peft report bad files variously
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise ModelLoadFailed(f"cannot load {use.lora_id} from {use.path}: {reason}") from exc
        self.last_load_s = time.perf_counter() - started
        self.loads += 1
        self._active = None  # a new adapter may be active as it loads
        self._loaded[key] = name
        log.info("loaded LoRA %s in %.2f s", use.lora_id, self.last_load_s)
        return name
