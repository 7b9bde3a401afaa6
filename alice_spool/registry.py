"""The models on disk: what `models_dir` holds, listed as `sd/<name>` with family, size
and native resolution, from the files' configs and headers alone (no torch), so the API
and the CLI can list and check models without loading any.

- A diffusers folder (`model_index.json`): the family from its pipeline class and its
  UNet's config (cross-attention width 768: SD 1.x, 1024: SD 2.x, XL pipeline: SDXL),
  or its transformer's (SD 3.x; FLUX.1, whose variant says what it runs with: dev,
  schnell without guidance embeddings, Kontext, Fill).
- A single-file `.safetensors` checkpoint: the family from its tensor names, read from
  the file's JSON header.

A model that cannot be read is listed as broken, with the reason; other files are not
models and are left out. The listing is rebuilt only when the directory changes.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from . import transformer_files
from .errors import InvalidParameters, ModelNotFound
from .families import FAMILY_NAMES, NATIVE, defaults, is_flow
from .loras import LoraRegistry
from .safetensors_file import read_safetensors_header
from .spec import IGNORED, MODEL_PREFIX, JobSpec, check_denoising_steps, normalise_model_id
from .vaes import VaeRegistry

log = logging.getLogger(__name__)

TINY_MARKER = "alice_spool_tiny"  # written into model_index.json by `models create-tiny`
TINY_NATIVE = 64  # the tiny models' size (FLUX's pipeline says 1024 whatever the model)


@dataclass(frozen=True)
class ModelInfo:
    id: str  # sd/<name>
    name: str
    path: Path
    # "diffusers" | "single_file" | "transformer_file" (FLUX.1's, SD 3.x's: transformer_files.py)
    format: str
    family: str | None  # families.FAMILIES: "sd1" | "sd2" | "sdxl" | "sd3" | "flux"
    size_bytes: int
    native_size: int | None
    broken: str | None = None  # why it cannot be used
    smoke_test: bool = False  # the tiny random-weight model: its images are noise
    variant: str | None = None  # FLUX.1's: "dev" | "schnell" | "kontext" | "fill"

    @property
    def ok(self) -> bool:
        return self.broken is None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["status"] = "ok" if self.ok else "broken"
        data["family_name"] = FAMILY_NAMES.get(self.family or "")
        steps, guidance = defaults(self.family, self.variant)
        flow = is_flow(self.family)
        data["defaults"] = {
            "steps": steps,
            "guidance_scale": guidance,
            "scheduler": FLOW_SCHEDULERS[0] if flow else None,
        }  # None: the server's (generation.default_*)
        data["schedulers"] = list(FLOW_SCHEDULERS) if flow else None  # None: every one
        return data


def _size(path: Path) -> int:
    """Bytes on disk; files that vanish or cannot be read (a dangling link) count 0, and
    so do folders that vanish while they are walked (a model being deleted)."""

    def size(file: Path) -> int:
        try:
            return file.stat().st_size if file.is_file() else 0
        except OSError:
            return 0

    if not path.is_dir():
        return size(path)
    # os.walk passes over a folder it cannot list (gone mid-walk); symlinked folders are
    # not walked into, symlinked files count as their targets.
    return sum(size(Path(folder) / name) for folder, _, files in os.walk(path) for name in files)


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return data


def _diffusers_folder(path: Path, name: str) -> ModelInfo:
    def broken(reason: str) -> ModelInfo:
        return ModelInfo(
            MODEL_PREFIX + name, name, path, "diffusers", None, _size(path), None, reason
        )

    try:
        index = _read_json(path / "model_index.json")
        pipeline = str(index.get("_class_name", ""))
        if pipeline.startswith(("Flux", "StableDiffusion3")):
            return _transformer_folder(path, name, index, pipeline)
        unet = _read_json(path / "unet" / "config.json")
        vae = _read_json(path / "vae" / "config.json")
    except FileNotFoundError as exc:
        return broken(f"missing {Path(exc.filename).relative_to(path)}")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return broken(f"unreadable config: {exc}")
    cross = unet.get("cross_attention_dim")
    if "XL" in pipeline or unet.get("addition_embed_type") == "text_time":
        family = "sdxl"
    elif cross == 1024:
        family = "sd2"
    elif "StableDiffusion" in pipeline:
        family = "sd1"
    else:
        return broken(f"not a Stable Diffusion pipeline ({pipeline or 'no _class_name'})")
    try:
        scale = 2 ** (len(vae["block_out_channels"]) - 1)
        native = int(unet["sample_size"]) * scale
    except (KeyError, TypeError, ValueError):
        native = NATIVE[family]
    return ModelInfo(
        MODEL_PREFIX + name,
        name,
        path,
        "diffusers",
        family,
        _size(path),
        native,
        smoke_test=TINY_MARKER in index,
    )


# The pipelines of the transformer families this registry lists, by their class name.
_TRANSFORMER_PIPELINES = {
    "FluxPipeline": ("flux", None),
    "FluxKontextPipeline": ("flux", "kontext"),
    "FluxFillPipeline": ("flux", "fill"),
    "StableDiffusion3Pipeline": ("sd3", None),
}
_FLUX_FILL_CHANNELS = 384  # a Fill transformer's input: latents, masked image and mask


def _transformer_folder(path: Path, name: str, index: dict[str, Any], pipeline: str) -> ModelInfo:
    """A FLUX.1 or SD 3.x diffusers folder, from its transformer's and VAE's configs
    (FileNotFoundError, ValueError: the caller lists it as broken)."""
    known = _TRANSFORMER_PIPELINES.get(pipeline)
    if known is None:
        raise ValueError(f"{pipeline} pipelines are not run here")
    family, variant = known
    transformer = _read_json(path / "transformer" / "config.json")
    vae = _read_json(path / "vae" / "config.json")
    scale = 2 ** (len(vae.get("block_out_channels") or [0] * 4) - 1)
    if family == "flux":
        if variant is None and transformer.get("in_channels") == _FLUX_FILL_CHANNELS:
            variant = "fill"
        if variant is None:
            variant = "dev" if transformer.get("guidance_embeds") else "schnell"
        native = NATIVE["flux"]  # the pipeline's own default, whatever the config says
    else:
        try:
            native = int(transformer["sample_size"]) * scale
        except (KeyError, TypeError, ValueError):
            native = NATIVE[family]
    if TINY_MARKER in index:
        native = TINY_NATIVE
    return ModelInfo(
        MODEL_PREFIX + name,
        name,
        path,
        "diffusers",
        family,
        _size(path),
        native,
        smoke_test=TINY_MARKER in index,
        variant=variant,
    )


def _single_file(path: Path, name: str) -> ModelInfo:
    size = path.stat().st_size
    try:
        keys = read_safetensors_header(path).keys()
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return ModelInfo(MODEL_PREFIX + name, name, path, "single_file", None, size, None, str(exc))
    if any(k.startswith(prefix) for prefix, _ in _FLOW_TENSORS for k in keys):
        return _transformer_file(path, name)  # FLUX.1 or SD 3.x: its transformer
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        family = "sdxl"
    elif any(k.startswith("cond_stage_model.model.") for k in keys):
        family = "sd2"
    elif any(k.startswith("cond_stage_model.transformer.") for k in keys):
        family = "sd1"
    else:
        return ModelInfo(
            MODEL_PREFIX + name,
            name,
            path,
            "single_file",
            None,
            size,
            None,
            "not a Stable Diffusion checkpoint (no known text encoder tensors)",
        )
    return ModelInfo(MODEL_PREFIX + name, name, path, "single_file", family, size, NATIVE[family])


# The schedulers a flow-matching family runs (diffusers' FlowMatchEulerDiscreteScheduler,
# with the sigma curves it has); the first is its default. The spacing schedule types
# (A1111's Automatic is Uniform for Euler) are its own evenly spaced sigmas.
FLOW_SCHEDULERS = (
    "euler", "euler_karras", "euler_exponential", "euler_beta",
    "euler_uniform", "euler_simple", "euler_normal", "euler_sgm_uniform",
)  # fmt: skip


def for_family(spec: JobSpec, model: ModelInfo) -> JobSpec:
    """The spec as `model`'s family runs it: what the request left to the model
    (`left_to_model`) set to the family's own defaults, and what the family cannot do
    refused, each a 400 naming its field (families.py). What a family has no use for
    and that changes nothing when left out (a schnell model's guidance, true CFG where
    guidance_scale is classifier-free guidance already, a T5 prompt length without a
    T5) runs without it, and the job records that in its `client_fields` (`ignored`)."""
    steps, guidance = defaults(model.family, model.variant)
    changes: dict[str, Any] = {}
    left = spec.left_to_model
    if "steps" in left and steps is not None:
        changes["steps"] = steps
    if "guidance_scale" in left and guidance is not None:
        changes["guidance_scale"] = guidance
    name = FAMILY_NAMES.get(str(model.family), "Stable Diffusion")
    ignored = _ignored(spec, model, name)
    for field_name, _why in ignored:
        if field_name:
            changes[field_name] = None
    if ignored:
        notes = "; ".join(why for _, why in ignored)
        changes["client_fields"] = tuple(
            sorted({**dict(spec.client_fields), IGNORED: notes}.items())
        )
    if is_flow(model.family):
        if "scheduler" in left:
            changes["scheduler"] = FLOW_SCHEDULERS[0]
        elif spec.scheduler not in FLOW_SCHEDULERS:
            raise InvalidParameters(
                f"scheduler {spec.scheduler} cannot run a {name} model ({model.id}); "
                f"these can: {', '.join(FLOW_SCHEDULERS)}",
                field="scheduler",
            )
        refused = _flow_refusals(spec, model, name)
        if refused is not None:
            raise InvalidParameters(refused[1], field=refused[0])
    if model.variant == "kontext":
        changes["strength"] = None  # it edits after the image: there is no strength
    spec = replace(spec, **changes, left_to_model=())
    if spec.strength is not None:
        check_denoising_steps(spec.steps, spec.strength)
    return spec


# The most T5 tokens each flow family's pipelines take (FLUX.1 schnell was trained on 256).
SEQUENCE_LIMITS = {("flux", "schnell"): 256, ("flux", None): 512, ("sd3", None): 512}


def sequence_limit(model: ModelInfo) -> int | None:
    """The longest `max_sequence_length` `model` takes; None: it has no T5 encoder."""
    family = str(model.family)
    return SEQUENCE_LIMITS.get((family, model.variant), SEQUENCE_LIMITS.get((family, None)))


def _ignored(spec: JobSpec, model: ModelInfo, name: str) -> list[tuple[str, str]]:
    """(field, why) for each value the request gave that `model` has no use for."""
    ignored: list[tuple[str, str]] = []
    schnell = model.family == "flux" and model.variant == "schnell"
    if schnell and "guidance_scale" not in spec.left_to_model and spec.guidance_scale:
        # (kept as given, which the pipeline does not read: so a request that was queued
        # before this note existed still matches its idempotency key)
        ignored.append(
            ("", f"guidance_scale {spec.guidance_scale:g}: FLUX.1 schnell takes no guidance")
        )
    if spec.true_cfg_scale is not None and model.variant == "fill":
        ignored.append(
            ("true_cfg_scale", f"true_cfg_scale {spec.true_cfg_scale:g}: a FLUX.1 Fill "
             "model's pipeline has no true CFG")
        )  # fmt: skip
    if spec.true_cfg_scale is not None and model.family != "flux":
        ignored.append(
            ("true_cfg_scale", f"true_cfg_scale {spec.true_cfg_scale:g}: a {name} model's "
             "guidance_scale is classifier-free guidance already")
        )  # fmt: skip
    if spec.max_sequence_length is not None and sequence_limit(model) is None:
        ignored.append(
            ("max_sequence_length", f"max_sequence_length {spec.max_sequence_length}: a "
             f"{name} model has no T5 text encoder")
        )  # fmt: skip
    return ignored


def _flow_refusals(spec: JobSpec, model: ModelInfo, name: str) -> tuple[str, str] | None:
    """(field, why) for what a FLUX.1 or SD 3.x model does not run here (yet)."""
    limit = sequence_limit(model) or 0
    if spec.max_sequence_length is not None and spec.max_sequence_length > limit:
        return "max_sequence_length", (
            f"max_sequence_length {spec.max_sequence_length}: {model.id} takes at most "
            f"{limit} T5 tokens"
        )
    if spec.negative_prompt and model.family == "flux" and model.variant == "fill":
        return "negative_prompt", (
            f"{model.id} is a FLUX.1 Fill model, whose pipeline takes no negative prompt "
            "(nor true CFG): leave negative_prompt out"
        )
    if spec.negative_prompt and model.family == "flux" and spec.true_cfg_scale is None:
        return "negative_prompt", (
            f"{model.id} is a {name} model, whose guidance is distilled: a negative prompt "
            "needs true CFG (true_cfg_scale above 1, which runs the model twice a step); "
            "give one, or leave negative_prompt out"
        )
    if spec.clip_skip is not None:
        return "clip_skip", f"clip_skip is for Stable Diffusion 1.x, 2.x and XL, not {name}"
    if spec.hires is not None:
        return "hires", f"hires fix runs Stable Diffusion 1.x, 2.x and XL models, not {name}"
    if spec.vae is not None:
        return "vae", f"{name} models run with their own VAE"
    if model.variant == "kontext" and spec.mask_image is not None:
        return "mask_image", (
            f"{model.id} is a FLUX.1 Kontext model, which edits a whole image after the "
            "prompt: leave mask_image out, or inpaint with a FLUX.1 dev or Fill model"
        )
    if model.variant == "fill" and (spec.init_image is None or spec.mask_image is None):
        field_name = "init_image" if spec.init_image is None else "mask_image"
        return field_name, (
            f"{model.id} is a FLUX.1 Fill model, which only inpaints: give an init_image "
            "and a mask_image"
        )
    return None


# Tensor names only FLUX.1's and SD 3.x's transformers have: the original layout and
# ComfyUI's (whose keys start with "model.diffusion_model."), and diffusers' own.
_FLOW_TENSORS = (
    ("double_blocks.", "flux"),
    ("model.diffusion_model.double_blocks.", "flux"),
    ("single_transformer_blocks.", "flux"),
    ("joint_blocks.", "sd3"),
    ("model.diffusion_model.joint_blocks.", "sd3"),
    ("context_embedder.", "sd3"),
)


def _transformer_file(path: Path, name: str) -> ModelInfo:
    """A FLUX.1 or SD 3.x transformer in one file (.safetensors or .gguf: transformer_files.py),
    run with the components of an installed model of its family and variant."""
    size = path.stat().st_size
    try:
        found = transformer_files.read(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return ModelInfo(MODEL_PREFIX + name, name, path, "transformer_file", None, size, None,
                         str(exc))  # fmt: skip
    return ModelInfo(
        MODEL_PREFIX + name, name, path, "transformer_file", found.family, size,
        NATIVE[found.family], variant=found.variant,
    )  # fmt: skip


class ModelRegistry:
    """The models in one directory, rescanned when the directory changes."""

    def __init__(self, models_dir: Path | str) -> None:
        self.models_dir = Path(models_dir)
        self.loras = LoraRegistry(self.models_dir)
        self.vaes = VaeRegistry(self.models_dir)
        self._lock = threading.Lock()
        self._signature: tuple[Any, ...] | None = None
        self._models: dict[str, ModelInfo] = {}

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
                info = _diffusers_folder(entry, entry.name)
            elif entry.is_file() and entry.suffix == ".safetensors":
                info = _single_file(entry, entry.stem)
            elif entry.is_file() and entry.suffix == ".gguf":
                info = _transformer_file(entry, entry.stem)
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
        """The model `models default NAME` chose, if any."""
        try:
            return self.default_file.read_text(encoding="utf-8").strip() or None
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def set_default(self, model_id: str) -> ModelInfo:
        """Make a usable model the default (kept in `<models_dir>/.default`)."""
        model = self.get(model_id)
        scratch = self.default_file.with_name(".default.tmp")
        scratch.write_text(model.id + "\n", encoding="utf-8")
        scratch.replace(self.default_file)
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
