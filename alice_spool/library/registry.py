"""The models on disk: what `models_dir` holds, listed as `sd/<name>` with family, size
and native resolution (each read by model_files.py from its configs and headers alone,
no torch), so the API and the CLI can list and check models without loading any; the
default model, a preload asked for, and a request's model, LoRAs and VAE checked.

A model that cannot be read is listed as broken, with the reason; other files are not
models and are left out. The listing is rebuilt only when the directory changes."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import InvalidParameters, ModelNotFound
from ..spec import JobSpec, normalise_model_id
from .families import FAMILY_NAMES, NATIVE
from .family_rules import for_family
from .loras import LoraRegistry
from .model_files import (
    FLOW_SCHEDULERS,
    TINY_MARKER,
    ModelInfo,
    read_diffusers_folder,
    read_single_file,
    read_transformer_file,
)
from .vaes import VaeRegistry

# What other modules import from here: a model's description and the family rules.
__all__ = [
    "FAMILY_NAMES",
    "FLOW_SCHEDULERS",
    "TINY_MARKER",
    "ModelInfo",
    "ModelRegistry",
    "for_family",
]

log = logging.getLogger(__name__)


class ModelRegistry:
    """The models in one directory, rescanned when the directory changes."""

    def __init__(self, models_dir: Path | str) -> None:
        self.models_dir = Path(models_dir)
        self.loras = LoraRegistry(self.models_dir)
        self.vaes = VaeRegistry(self.models_dir)
        self._lock = threading.Lock()
        self._signature: tuple[Any, ...] | None = None
        self._models: dict[str, ModelInfo] = {}
        # `.default`'s stamp when last read, what it said and when: read again when the
        # stamp changes, and at least every CHOSEN_RECHECK_S (a stamp can miss a change:
        # a rewrite within one timestamp tick, or a network file system's cached stat).
        self._chosen: tuple[tuple[int, ...], str | None, float] | None = None

    CHOSEN_RECHECK_S = 2.0

    def _current_signature(self) -> tuple[Any, ...]:
        """What changes when a model is added, removed or replaced: a stat per entry."""

        def stamp(path: Path) -> tuple[int, int]:
            try:
                info = path.stat()
            except OSError:
                return (0, 0)
            return (info.st_mtime_ns, info.st_size)

        try:
            entries = sorted(self.models_dir.iterdir())
        except FileNotFoundError:
            return ()
        return tuple(
            (e.name, stamp(e), stamp(e / "model_index.json") if e.is_dir() else None)
            for e in entries
        )

    def scan(self, *, force: bool = False) -> list[ModelInfo]:
        """Every model, by name (rescanned only if the directory changed, or `force`)."""
        with self._lock:
            signature = self._current_signature()
            if force or signature != self._signature:
                self._models = self._read_all()
                self._signature = signature
            return list(self._models.values())

    def _read_all(self) -> dict[str, ModelInfo]:
        found: dict[str, ModelInfo] = {}
        if not self.models_dir.is_dir():
            return found
        for entry in sorted(self.models_dir.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir() and (entry / "model_index.json").exists():
                info = read_diffusers_folder(entry, entry.name)
            elif entry.is_file() and entry.suffix == ".safetensors":
                info = read_single_file(entry, entry.stem)
            elif entry.is_file() and entry.suffix == ".gguf":
                info = read_transformer_file(entry, entry.stem)
            else:
                continue  # not a model
            try:
                normalise_model_id(info.name)
            except Exception:  # a name that cannot be a model id
                continue
            if info.id in found:
                info = ModelInfo(
                    info.id, info.name, info.path, info.format, None, info.size_bytes, None,
                    f"the name {info.name!r} is taken by {found[info.id].path.name}",
                )  # fmt: skip
                found[f"{info.id} ({info.path.name})"] = info
                continue
            found[info.id] = info
        return found

    def get(self, model_id: str) -> ModelInfo:
        """A usable model by id (`sd/` optional); `model_not_found` otherwise."""
        wanted = normalise_model_id(model_id)
        models = {m.id: m for m in self.scan() if m.ok}
        if wanted not in models:
            known = ", ".join(sorted(models)) or "none"
            raise ModelNotFound(
                f"model {wanted} is not installed (installed: {known})", model=wanted
            )
        return models[wanted]

    @property
    def default_file(self) -> Path:
        return self.models_dir / ".default"

    def chosen_default(self) -> str | None:
        """The model `models default NAME` chose, if any (a stat per call; the file is
        read again when it changed, or every CHOSEN_RECHECK_S)."""
        try:
            info = self.default_file.stat()
        except OSError:
            return None
        stamp = (info.st_ino, info.st_mtime_ns, info.st_ctime_ns, info.st_size)
        chosen = self._chosen
        now = time.monotonic()
        if chosen is not None and chosen[0] == stamp and now - chosen[2] < self.CHOSEN_RECHECK_S:
            return chosen[1]
        try:
            found = self.default_file.read_text(encoding="utf-8").strip() or None
        except (FileNotFoundError, UnicodeDecodeError):
            found = None
        self._chosen = (stamp, found, now)
        return found

    def set_default(self, model_id: str) -> ModelInfo:
        """Make a usable model the default (kept in `<models_dir>/.default`)."""
        model = self.get(model_id)
        scratch = self.default_file.with_name(".default.tmp")
        scratch.write_text(model.id + "\n", encoding="utf-8")
        scratch.replace(self.default_file)
        self._chosen = None
        return model

    @property
    def preload_file(self) -> Path:
        return self.models_dir / ".preload"

    def request_preload(self, model_id: str) -> ModelInfo:
        """Ask the runners to load a usable model now (`POST /v1/models/load`): kept in
        `<models_dir>/.preload`, which an idle runner reads (the models directory is
        the one every runner host shares)."""
        model = self.get(model_id)
        scratch = self.preload_file.with_name(f".preload.{os.getpid()}.tmp")
        scratch.write_text(f"{model.id}\n{time.time_ns()}\n", encoding="utf-8")
        scratch.replace(self.preload_file)
        return model

    def preload_request(self) -> tuple[str, str] | None:
        """(the model asked for, when it was asked) if a preload was asked for."""
        try:
            model, _, asked = self.preload_file.read_text(encoding="utf-8").partition("\n")
        except (FileNotFoundError, UnicodeDecodeError):
            return None
        return (model.strip(), asked.strip()) if model.strip() else None

    def default(self, configured: str = "") -> ModelInfo:
        """The default model: `generation.default_model` if configured, else the one an
        admin chose (`models default`, `POST /v1/models/default`), else the only or
        first usable one (real before tiny), which is then pinned as the choice: only an
        admin moves the default, never a model someone downloads later."""
        chosen = configured or self.chosen_default()
        if chosen:
            return self.get(chosen)
        usable = sorted((m for m in self.scan() if m.ok), key=lambda m: (m.smoke_test, m.id))
        if not usable:
            raise ModelNotFound(
                f"no model is installed in {self.models_dir}: "
                "run `alice-spool models create-tiny` for a smoke-test model, "
                "or `alice-spool models pull <repo>`"
            )
        pinned = self._pin_default(usable[0].id)
        return usable[0] if pinned in (None, usable[0].id) else self.get(pinned)

    def _pin_default(self, model_id: str) -> str | None:
        """Record the first default chosen, unless a choice is there already (another
        process's, or an admin's made meanwhile: that one stands). The choice that
        stands; None if it could not be written (a read-only models directory: the
        default is then worked out again each time)."""
        self._chosen = None  # whatever happens here, the file is read again next time
        scratch = self.default_file.with_name(f".default.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            scratch.write_text(model_id + "\n", encoding="utf-8")
            os.link(scratch, self.default_file)  # never replaces a choice made meanwhile
        except FileExistsError:
            return self.chosen_default()
        except OSError as exc:
            log.warning("cannot record the default model in %s: %s", self.default_file, exc)
            return None
        finally:
            scratch.unlink(missing_ok=True)
        log.info("default model pinned: %s (change it with `alice-spool models default`)", model_id)
        return model_id

    def with_model(self, spec: JobSpec, configured_default: str = "") -> JobSpec:
        """The spec as it is queued, at every door: its model checked (`model_not_found`
        for one that is not installed), or the default model named, so that the job's
        record says which model it runs on; its LoRAs and VAE checked too."""
        model = self.get(spec.model) if spec.model else self.default(configured_default)
        spec = for_family(spec, model)
        self.check_loras(spec, model)
        self.check_vae(spec)
        return replace(spec, model=model.id)

    def check_vae(self, spec: JobSpec) -> None:
        """The spec's VAE, if it names one, installed (`vae_not_found`, naming `vae` and
        listing the installed ones)."""
        if spec.vae is not None:
            self.vaes.get(spec.vae)

    def check_loras(self, spec: JobSpec, model: ModelInfo) -> None:
        """Each of the spec's LoRAs installed (`lora_not_found`) and made for the model's
        family (400 naming the LoRA)."""
        for name in spec.lora_names:
            lora = self.loras.get(name)
            if model.family is not None and lora.family != model.family:
                raise InvalidParameters(
                    f"{lora.id} is a {FAMILY_NAMES.get(str(lora.family), lora.family)} LoRA "
                    f"and {model.id} is a {FAMILY_NAMES.get(model.family, model.family)} "
                    "model: it cannot be applied to it",
                    field="loras",
                )

    def resolve(self, spec: JobSpec, configured_default: str = "") -> JobSpec:
        """The spec with what it left to the server filled in: the default model, and the
        model's native size. `model_not_found` for a model that is not installed."""
        return self.resolve_with_model(spec, configured_default)[0]

    def resolve_with_model(
        self, spec: JobSpec, configured_default: str = ""
    ) -> tuple[JobSpec, ModelInfo]:
        """`resolve`, and the model it resolved to (one look at the directory)."""
        model = self.get(spec.model) if spec.model else self.default(configured_default)
        native = model.native_size or NATIVE.get(model.family or "sd1", 512)
        filled = replace(
            spec, model=model.id, width=spec.width or native, height=spec.height or native
        )
        return filled, model
