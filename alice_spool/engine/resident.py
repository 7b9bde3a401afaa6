"""The one resident model: loaded when a job needs it, the previous one freed (or, with
`runner.keep_in_ram`, parked in host memory for a fast switch back)."""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import InvalidParameters, ModelNotFound
from ..registry import ModelRegistry
from ..spec import JobSpec
from .device import Placement, describe
from .generate import (
    BASE_REPOS,
    BatchOutput,
    Loaded,
    ProgressCallback,
    StopCheck,
    generate,
    load,
    load_single_file,
)

log = logging.getLogger(__name__)


def cached_base_model(family: str) -> Path | None:
    """The family's base model in the Hugging Face cache, if it is there (no network)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(BASE_REPOS[family], local_files_only=True))
    except Exception:  # not cached (the hub client raises several kinds)
        return None


class Engine:
    """Generates batches on one device, keeping one model resident."""

    def __init__(
        self,
        registry: ModelRegistry,
        placement: Placement,
        *,
        memory: str = "auto",
        default_model: str = "",
        keep_in_ram: bool = False,
    ) -> None:
        self.registry = registry
        self.placement = placement
        self.memory = memory
        self.default_model = default_model
        self.keep_in_ram = keep_in_ram
        self.current: Loaded | None = None
        self._parked: Loaded | None = None  # in host RAM, when keep_in_ram

    def resolve(self, spec: JobSpec) -> JobSpec:
        return self.registry.resolve(spec, self.default_model)

    @property
    def resident_model(self) -> str | None:
        """The model on the device now, if any."""
        return self.current.model_id if self.current is not None else None

    def device_info(self) -> dict[str, object]:
        """The device, for the runner's reports (/health, /metrics)."""
        return describe(self.placement)

    def default_model_id(self) -> str | None:
        """The model a job that names none runs on (None while none is installed)."""
        try:
            return self.registry.default(self.default_model).id
        except ModelNotFound:
            return None

    def ensure(self, model_id: str) -> Loaded:
        """The pipeline for `model_id`, loading it (and putting the resident one away)."""
        if self.current is not None and self.current.model_id == model_id:
            return self.current
        info = self.registry.get(model_id)
        parked = self._parked
        if parked is not None and parked.model_id == model_id:
            self._parked = None  # taken out before the resident one is parked in its place
        else:
            parked = None
        self._put_away_current()
        if parked is not None:
            parked.pipeline.to(self.placement.device)
            self.current = parked
            log.info("switched back to %s from host memory", model_id)
            return parked
        family = info.family or "sd1"
        if info.format == "single_file":
            self.current = load_single_file(
                info.path,
                info.id,
                self.placement,
                family=family,
                config_dir=self._configs_for(family),
                memory=self.memory,
            )
        else:
            self.current = load(
                info.path, info.id, self.placement, memory=self.memory, family=family
            )
        return self.current

    def _configs_for(self, family: str) -> Path | None:
        """An installed diffusers model of `family` to take a single file's configs from:
        a real one before the tiny smoke-test model."""
        folders = [
            m
            for m in self.registry.scan()
            if m.ok and m.format == "diffusers" and m.family == family
        ]
        folders.sort(key=lambda m: (m.smoke_test, m.id))
        if folders:
            return folders[0].path
        return cached_base_model(family)

    def _put_away_current(self) -> None:
        current, self.current = self.current, None
        if current is None:
            return
        if self.keep_in_ram and current.memory_mode == "full":
            self._drop(self._parked)
            current.pipeline.to("cpu")
            self._parked = current
        else:
            self._drop(current)
        self._free()

    def _drop(self, loaded: Loaded | None) -> None:
        if loaded is not None:
            loaded.pipeline = None  # type: ignore[assignment]

    def _free(self) -> None:
        gc.collect()
        if self.placement.device.type == "cuda":
            torch.cuda.empty_cache()

    def unload(self) -> None:
        """Free every model (the resident one and a parked one)."""
        self._drop(self.current)
        self._drop(self._parked)
        self.current = self._parked = None
        self._free()

    def generate(
        self,
        specs: Sequence[JobSpec],
        *,
        on_step: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> BatchOutput:
        """Resolve defaults, make sure the model is resident, run the batch."""
        if not specs:
            raise InvalidParameters("a batch needs at least one job")
        resolved = [self.resolve(spec) for spec in specs]
        loaded = self.ensure(str(resolved[0].model))
        return generate(loaded, resolved, on_step=on_step, should_stop=should_stop)
