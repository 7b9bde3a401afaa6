"""The one resident model: loaded when a job needs it, the previous one freed (or, with
`runner.keep_in_ram`, parked in host memory for a fast switch back); with
`runner.compile`, compiled and warmed up for its sizes and batch sizes as it loads."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import torch

from ..errors import ConfigError, InvalidParameters, ModelNotFound, SpoolError
from ..hires import target_size
from ..library import transformer_files
from ..library.registry import ModelRegistry
from ..memory_plan import MemoryChoice
from ..spec import JobSpec
from . import speed
from .adapters import Adapters, AdapterUse
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
    load_transformer_file,
    native_size,
)
from .memory import bitsandbytes_installed, free_memory
from .vae import VaeCache, swapped_in

log = logging.getLogger(__name__)


def cached_base_model(family: str) -> Path | None:
    """The family's base model in the Hugging Face cache, if it is there (no network)."""
    return cached_repository(BASE_REPOS[family])


def cached_repository(repository: str) -> Path | None:
    """A repository's snapshot in the Hugging Face cache, if it is there (no network)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repository, local_files_only=True))
    except Exception:  # not cached (the hub client raises several kinds)
        return None


class Engine:
    """Generates batches on one device, keeping one model resident."""

    def __init__(
        self,
        registry: ModelRegistry,
        placement: Placement,
        *,
        memory: MemoryChoice | str = "auto",
        default_model: str = "",
        keep_in_ram: bool = False,
        max_batch: int = 8,
        preload: bool = True,
        compile: bool = False,
        compile_sizes: Sequence[tuple[int, int]] = (),
        compile_backend: Any = "inductor",  # torch.compile's backend (tests: a counting one)
        oom_above: int | None = None,  # fault injection (tests): calls of more images fail
        max_cached_loras: int = 8,
    ) -> None:
        self.oom_above = oom_above
        self.max_cached_loras = max_cached_loras
        self.registry = registry
        self.placement = placement
        self.memory = memory if isinstance(memory, MemoryChoice) else MemoryChoice(memory)
        refused = self.memory.refusal(placement.device.type, bitsandbytes=bitsandbytes_installed())
        if refused is not None:
            raise ConfigError(refused, key="runner.quantize")
        self.default_model = default_model
        self.keep_in_ram = keep_in_ram
        self.max_batch = max_batch
        self.preload = preload
        self.compile = compile
        self.compile_sizes = list(compile_sizes)  # (width, height); empty: the native size
        self.compile_backend = compile_backend
        self.buckets = speed.batch_buckets(max_batch)
        self.current: Loaded | None = None
        self._parked: Loaded | None = None  # in host RAM, when keep_in_ram
        self._preloaded: tuple[str, str] | None = None  # the last preload asked and done
        self._compiled: dict[str, speed.Compiled] = {}  # model id -> its compiled parts
        self._uncompilable: set[str] = set()  # models whose compilation failed
        self.vaes = VaeCache()  # requests' own VAEs, for the resident model

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
        """The pipeline for `model_id`, loading it (and putting the resident one away);
        compiled and warmed up first when `compile` is on."""
        if self.current is not None and self.current.model_id == model_id:
            return self.current
        loaded = self._load(model_id)
        if self.compile and model_id not in self._compiled:
            self._optimise(loaded)
        return loaded

    def adopt(self, model_id: str, pipeline: Any) -> Loaded:
        """Make a pipeline built in this process (a benchmark's random-weight model of a
        real shape) the resident model for `model_id`, which the registry must list."""
        info = self.registry.get(model_id)
        self._put_away_current()
        pipeline.set_progress_bar_config(disable=True)
        native = info.native_size or native_size(pipeline)
        self.current = Loaded(
            info.id, pipeline, self.placement, native, "full", pipeline.scheduler.config
        )
        self._compiled.pop(info.id, None)
        if self.compile:
            self._optimise(self.current)
        return self.current

    def _optimise(self, loaded: Loaded) -> None:
        """Compile and warm up; if that fails (a compiler error, the largest batch out of
        memory), the model runs uncompiled rather than compiling while jobs wait."""
        if loaded.model_id in self._uncompilable:
            return
        if loaded.memory_mode != "full":
            # CPU offload moves the weights on and off the GPU around every call: compiled
            # code (CUDA graphs) would see new weights each time. Small cards run eager.
            log.warning(
                "not compiling %s: it runs in memory mode %s (CPU offload); "
                "runner.compile needs the whole model on the GPU",
                loaded.model_id,
                loaded.memory_mode,
            )
            return  # (asked again at its next load: `auto` may choose `full` then)
        started = time.perf_counter()
        compiled = speed.optimise(
            loaded.pipeline, self.placement.device, backend=self.compile_backend
        )
        sizes = self.compile_sizes or [(loaded.native_size, loaded.native_size)]
        speed.allow_compiled_shapes(len(sizes) * len(self.buckets))
        try:
            self.warm_up(loaded, sizes)
        except Exception:  # torch's compiler and the device fail in many ways
            log.exception("compiling %s failed: it runs uncompiled", loaded.model_id)
            compiled.use(loaded.pipeline, compiled=False)
            self._uncompilable.add(loaded.model_id)
            return
        compiled.sizes.update(sizes)
        self._compiled[loaded.model_id] = compiled
        log.info(
            "compiled %s (%s) for sizes %s and batch sizes %s in %.1f s",
            loaded.model_id,
            compiled.description,
            ", ".join(f"{w}x{h}" for w, h in sizes),
            self.buckets,
            time.perf_counter() - started,
        )

    def warm_up(self, loaded: Loaded, sizes: Sequence[tuple[int, int]]) -> None:
        """Run every size at every batch size once (two steps), so that no job waits for
        a compilation."""
        for width, height in sizes:
            for bucket in self.buckets:
                spec = JobSpec(
                    prompt="warm-up",
                    model=loaded.model_id,
                    width=width,
                    height=height,
                    steps=2,
                    seed=0,
                    scheduler="euler",
                    n=1,
                )
                generate(loaded, [spec], pad_to=bucket)

    def warm_up_default(self) -> None:
        """Load the default model now (`preload`), and with `compile` on compile and warm
        it up (always: nothing is compiled while a job waits). The runner does this before
        its first claim, so that the first job does not wait."""
        model = self.default_model_id() if self.preload or self.compile else None
        if model is not None:
            self.ensure(model)

    def batch_limit(self, spec: JobSpec) -> int:
        """Images one call may take for this spec's model and size: `max_batch`, fewer
        when the GPU's free memory (with the model loaded) holds fewer."""
        free = free_memory(self.placement)
        if free is None:  # not a GPU: nothing to measure
            return self.max_batch
        resolved, model = self.registry.resolve_with_model(spec, self.default_model)
        size = (int(resolved.width or 512), int(resolved.height or 512))
        if resolved.hires is not None:  # its second pass is the larger
            size = target_size(resolved.hires, *size)
        return speed.batch_limit(
            model.family or "sd1",
            *size,
            free_bytes=free,
            cap=self.max_batch,
        )

    def _load(self, model_id: str) -> Loaded:
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
        if info.format == "transformer_file":
            self.current = load_transformer_file(
                info.path,
                info.id,
                self.placement,
                family=family,
                variant=info.variant,
                base=self._base_for(family, info.variant),
                memory=self.memory,
            )
        elif info.format == "single_file":
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
                info.path,
                info.id,
                self.placement,
                memory=self.memory,
                family=family,
                variant=info.variant,
            )
        return self.current

    def _base_for(self, family: str, variant: str | None) -> Path | None:
        """The components a transformer file of `family` and `variant` runs with: an
        installed diffusers model of both, else the family's base repository in the
        Hugging Face cache."""
        installed = self._installed_folder(family, match_variant=True, variant=variant)
        if installed is not None:
            return installed
        return cached_repository(transformer_files.base_repository(family, variant))

    def _configs_for(self, family: str) -> Path | None:
        """An installed diffusers model of `family` to take a single file's configs from,
        else the family's base model in the Hugging Face cache."""
        return self._installed_folder(family) or cached_base_model(family)

    def _installed_folder(
        self, family: str, *, match_variant: bool = False, variant: str | None = None
    ) -> Path | None:
        """An installed diffusers model of `family` (and, with `match_variant`, of
        `variant`): a real one before the tiny smoke-test model."""
        folders = [
            m
            for m in self.registry.scan()
            if m.ok
            and m.format == "diffusers"
            and m.family == family
            and (not match_variant or m.variant == variant)
        ]
        folders.sort(key=lambda m: (m.smoke_test, m.id))
        return folders[0].path if folders else None

    def _put_away_current(self) -> None:
        current, self.current = self.current, None
        self.vaes.clear()  # loaded and checked for that model
        if current is None:
            return
        # A compiled model is not parked: its compiled code (CUDA graphs) belongs to the
        # device it was made on.
        if self.keep_in_ram and not self.compile and current.memory_mode == "full":
            self._drop(self._parked)
            current.pipeline.to("cpu")
            self._parked = current
        else:
            self._drop(current)
        self._free()

    def _drop(self, loaded: Loaded | None) -> None:
        if loaded is not None:
            self._compiled.pop(loaded.model_id, None)
            loaded.pipeline = None

    def _free(self) -> None:
        gc.collect()
        if self.placement.device.type == "cuda":
            torch.cuda.empty_cache()

    def adapters(self, loaded: Loaded) -> Adapters:
        """The LoRA cache of a loaded pipeline."""
        if loaded.adapters is None:
            loaded.adapters = Adapters(loaded.pipeline, self.max_cached_loras)
        return cast(Adapters, loaded.adapters)

    def _activate_loras(self, loaded: Loaded, spec: JobSpec) -> list[dict[str, Any]]:
        """The batch's LoRA set (one per batch: it is part of the batch key) on, or
        every adapter off for a batch without; what it is, for the records."""
        found = [(self.registry.loras.get(name), scale) for name, scale in spec.loras]
        uses = [AdapterUse(lora.id, lora.path, scale) for lora, scale in found]
        if uses or loaded.adapters is not None:
            self.adapters(loaded).activate(uses)
        records = []
        for lora, scale in found:
            hashes = self.registry.loras.hashes(lora)
            records.append(
                {
                    "name": lora.id,
                    "scale": scale,
                    "sha256": hashes.sha256,
                    "tensors_sha256": hashes.tensors_sha256,
                }
            )
        return records

    def load_asked(self) -> str | None:
        """Load the model a `POST /v1/models/load` asked for, once per asking, unless it
        is resident already; the model loaded, if any. (The idle runner calls this.)"""
        asked = self.registry.preload_request()
        if asked is None or asked == self._preloaded:
            return None
        self._preloaded = asked
        model_id = asked[0]
        if self.resident_model == model_id:
            return None
        try:
            self.registry.scan(force=True)  # it may have been installed since the last scan
            self.ensure(model_id)
        except SpoolError as exc:  # deleted meanwhile, or broken: its jobs will say so
            log.warning("cannot preload %s: %s", model_id, exc.message)
            return None
        log.info("preloaded %s, as asked", model_id, extra={"model": model_id})
        return model_id

    def drop_deleted(self) -> bool:
        """Unload the resident (and parked) models if they were deleted from the models
        directory (`DELETE /v1/models/{id}`); whether anything was unloaded."""
        held = [m.model_id for m in (self.current, self._parked) if m is not None]
        installed = {m.id for m in self.registry.scan()}
        if all(model_id in installed for model_id in held):
            return False
        log.info("unloading %s: deleted from the models directory", ", ".join(held))
        self.unload()
        return True

    def unload(self) -> None:
        """Free every model (the resident one and a parked one)."""
        self._drop(self.current)
        self._drop(self._parked)
        self.current = self._parked = None
        self.vaes.clear()
        self._free()

    def generate(
        self,
        specs: Sequence[JobSpec],
        *,
        on_step: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
        images: Sequence[Mapping[str, Any]] | None = None,
        max_pixels: int | None = None,
    ) -> BatchOutput:
        """Resolve defaults, make sure the model is resident, run the batch (`images`:
        each job's inputs, for img2img and inpainting; `max_pixels`: a hires job's
        largest target, generation.max_pixels)."""
        if not specs:
            raise InvalidParameters("a batch needs at least one job")
        resolved = [self.resolve(spec) for spec in specs]
        loaded = self.ensure(str(resolved[0].model))
        compiled = self._compiled.get(loaded.model_id)
        # The batch's VAE, if it names one (one per batch: it is part of the batch key).
        vae_info = self.registry.vaes.get(resolved[0].vae) if resolved[0].vae else None
        vae = self.vaes.get(vae_info, loaded) if vae_info is not None else None
        if compiled is not None and (resolved[0].loras or vae is not None):
            # LoRA layers would change the module tree the compiled code was traced
            # with (a recompilation while jobs wait), and fused QKV bypasses the ones on
            # Q, K and V: LoRA batches run eager, unfused. Their adapters stay loaded
            # for a run of LoRA batches and are unloaded before the next plain one.
            # The compiled decoder is the model's own VAE's: a batch with another runs
            # eager, that VAE swapped in after the eager modules are (and out before).
            with compiled.eager_unfused(loaded.pipeline), swapped_in(loaded, vae):
                loras = self._activate_loras(loaded, resolved[0])
                output = self._run(loaded, resolved, None, on_step, should_stop, images, max_pixels)
        else:
            if compiled is not None and loaded.adapters is not None and loaded.adapters.loaded:
                # Unloaded from the eager modules: diffusers finds no UNet to take the
                # LoRA layers out of behind the compiled wrapper.
                compiled.use(loaded.pipeline, compiled=False)
                try:
                    self.adapters(loaded).clear()
                finally:
                    compiled.use(loaded.pipeline, compiled=True)
            loras = self._activate_loras(loaded, resolved[0])
            with swapped_in(loaded, vae):  # (without a compiled model, when there is one)
                output = self._run(
                    loaded, resolved, compiled, on_step, should_stop, images, max_pixels
                )
        output.loras.extend(loras)
        if vae_info is not None:
            output = replace(output, vae=self.registry.vaes.record(vae_info))
        return output

    def _run(
        self,
        loaded: Loaded,
        resolved: list[JobSpec],
        compiled: speed.Compiled | None,
        on_step: ProgressCallback | None,
        should_stop: StopCheck | None,
        inputs: Sequence[Mapping[str, Any]] | None,
        max_pixels: int | None = None,
    ) -> BatchOutput:
        """One pipeline call: compiled at a warmed-up size and bucket (padded up to it),
        else eager: never compiled while a job waits (the runner keeps calls within
        max_batch; the eager path is for any other caller)."""

        def call(pad_to: int | None = None) -> BatchOutput:
            return generate(
                loaded,
                resolved,
                on_step=on_step,
                should_stop=should_stop,
                pad_to=pad_to,
                oom_above=self.oom_above,
                images=inputs,
                max_pixels=max_pixels,
            )

        if compiled is None:
            return call()
        size = (int(resolved[0].width or 0), int(resolved[0].height or 0))
        images = sum(spec.n for spec in resolved)
        # A hires job's second pass is at another size: eager, never compiled for it.
        if size in compiled.sizes and images <= self.buckets[-1] and not resolved[0].hires:
            return call(speed.bucket_for(images, self.buckets))
        compiled.use(loaded.pipeline, compiled=False)
        try:
            return call()
        finally:
            compiled.use(loaded.pipeline, compiled=True)
