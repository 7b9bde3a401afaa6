"""`alice-spool models` (list, create the tiny model, choose the default, remove) and
`alice-spool generate`, a one-off generation that bypasses the queue.

Listing reads files only; the commands that build or run a pipeline import the engine
(torch, diffusers) when they run, never before.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import click

from ..errors import ModelNotFound
from ..library.loras import LoraInfo
from ..library.registry import FAMILY_NAMES, ModelInfo
from ..library.vaes import VaeInfo
from ..spec import parse_spec
from ..terminal import table
from .app import (
    App,
    SpoolGroup,
    cli,
    emit_json,
    generation_options,
    json_option,
    note,
    pass_app,
)


@cli.group(cls=SpoolGroup)
def models() -> None:
    """List, create and choose the models in the models directory."""


def _size(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _default_id(app: App) -> str | None:
    try:
        return app.registry.default(app.settings.generation.default_model).id
    except ModelNotFound:
        return None


@models.command("ls")
@json_option
@pass_app
def models_ls(app: App, as_json: bool) -> None:
    """List the models: family, size on disk, native size, and whether they work."""
    listing = app.registry.scan()
    loras = app.registry.loras.scan()
    vaes = app.registry.vaes.scan()
    default = _default_id(app)
    if as_json:
        emit_json(
            {
                "models_dir": str(app.registry.models_dir),
                "default": default,
                "models": [m.to_dict() for m in listing],
                "loras": [lora.to_dict() for lora in loras],
                "vaes": [vae.to_dict() for vae in vaes],
            }
        )
        return
    if not listing:
        note(f"no models in {app.registry.models_dir}; try: alice-spool models create-tiny")
        return
    click.echo(_models_table(listing, default))
    if loras:
        click.echo()
        click.echo(_loras_table(loras))
    if vaes:
        click.echo()
        click.echo(_vaes_table(vaes))


def _models_table(listing: list[ModelInfo], default: str | None) -> str:
    """The models, the default marked with `*`."""

    def status(m: ModelInfo) -> str:
        if not m.ok:
            return f"broken: {m.broken}"
        return "ok (smoke test: images are noise)" if m.smoke_test else "ok"

    rows = [
        [
            ("* " if m.id == default else "  ") + m.id,
            " ".join(filter(None, [FAMILY_NAMES.get(m.family or "", "-"), m.variant])),
            m.format.replace("_", "-"),
            _size(m.size_bytes),
            f"{m.native_size}px" if m.native_size else "-",
            status(m),
        ]
        for m in listing
    ]
    return table(["  MODEL", "FAMILY", "FORMAT", "SIZE", "NATIVE", "STATUS"], rows)


def _loras_table(loras: list[LoraInfo]) -> str:
    lora_rows = [
        [
            "  " + lora.id,
            FAMILY_NAMES.get(lora.family or "", "-"),
            _size(lora.size_bytes),
            "ok" if lora.ok else f"broken: {lora.broken}",
        ]
        for lora in loras
    ]
    return table(["  LORA", "FAMILY", "SIZE", "STATUS"], lora_rows)


def _vaes_table(vaes: list[VaeInfo]) -> str:
    vae_rows = [
        [
            "  " + vae.id,
            vae.file_name,
            vae.format.replace("_", "-"),
            _size(vae.size_bytes),
            "ok" if vae.ok else f"broken: {vae.broken}",
        ]
        for vae in vaes
    ]
    return table(["  VAE", "FILE", "FORMAT", "SIZE", "STATUS"], vae_rows)


# engine/tiny.py's TINY_FAMILIES and FLUX_VARIANTS, spelled out: importing it loads torch.
TINY_FAMILIES = ("sd1", "sdxl", "flux", "sd3")
FLUX_VARIANTS = ("dev", "schnell", "kontext", "fill")
LORA_FAMILIES = ("sd1", "flux", "sd3")


@models.command("create-tiny")
@click.option("--name", default="tiny", show_default=True, help="Model name (sd/<name>).")
@click.option(
    "--family",
    type=click.Choice(TINY_FAMILIES),
    default="sd1",
    show_default=True,
    help="The model family whose shape it has.",
)
@click.option(
    "--variant",
    type=click.Choice(FLUX_VARIANTS),
    help="FLUX.1 only: dev (guidance embedder, the default), schnell, kontext or fill.",
)
@click.option("--replace", is_flag=True, help="Overwrite a model of that name.")
@click.option("--if-none", is_flag=True, help="Only if no usable model is installed.")
@pass_app
def models_create_tiny(
    app: App, name: str, family: str, variant: str | None, replace: bool, if_none: bool
) -> None:
    """Write a tiny random-weight pipeline of a family's shape (its images are noise).

    For smoke tests and for running everything offline: no download needed."""
    if if_none and any(m.ok for m in app.registry.scan()):
        note("a model is installed already; nothing to do")
        return
    from ..engine.tiny import create_tiny

    path = create_tiny(
        Path(app.settings.paths.models), name, replace=replace, family=family, variant=variant
    )
    click.echo(path)


@models.command("create-tiny-lora")
@click.argument("name", default="tiny-lora")
@click.option(
    "--family",
    type=click.Choice(LORA_FAMILIES),
    default="sd1",
    show_default=True,
    help="The tiny model it is for: sd1 (sd/tiny), flux or sd3.",
)
@click.option("--replace", is_flag=True, help="Overwrite a LoRA of that name.")
@pass_app
def models_create_tiny_lora(app: App, name: str, family: str, replace: bool) -> None:
    """Write a random LoRA for a tiny model to <models>/loras/NAME.safetensors (lora/NAME).

    For smoke tests: at scale 1 it changes the tiny model's images visibly."""
    from ..engine.tiny import create_tiny_lora

    models_dir = Path(app.settings.paths.models)
    path = create_tiny_lora(models_dir, name, replace=replace, family=family)
    click.echo(path)


@models.command("default")
@click.argument("name")
@pass_app
def models_default(app: App, name: str) -> None:
    """Make NAME the default model (unless generation.default_model is configured)."""
    model = app.registry.set_default(name)
    click.echo(f"default model: {model.id}")
    configured = app.settings.generation.default_model
    if configured and configured != model.id:
        note(f"note: generation.default_model = {configured!r} is configured and wins")


@models.command("rm")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def models_rm(app: App, name: str, yes: bool) -> None:
    """Delete a model's folder or file from the models directory."""
    wanted = name if name.startswith("sd/") else f"sd/{name}"
    matches = [m for m in app.registry.scan(force=True) if m.id == wanted]
    if not matches:
        raise ModelNotFound(f"model {wanted} is not in {app.registry.models_dir}")
    model = matches[0]
    if not yes:
        click.confirm(f"delete {model.path} ({_size(model.size_bytes)})?", abort=True)
    if model.path.is_dir():
        shutil.rmtree(model.path)
    else:
        model.path.unlink()
    if app.registry.chosen_default() == model.id:
        app.registry.default_file.unlink(missing_ok=True)
    click.echo(f"deleted {model.id}")


@cli.command()
@click.argument("prompt")
@click.option(
    "--output",
    "-o",
    default="out.png",
    show_default=True,
    metavar="PATH",
    help="Where to write the PNG (-1, -2... added for several images).",
)
@generation_options
@click.option("--device", help="auto, cpu, cuda, cuda:N or mps (default: runner.device).")
@json_option
@pass_app
def generate(
    app: App, prompt: str, output: str, device: str | None, as_json: bool, **flags: Any
) -> None:
    """Make an image now, without the queue: handy for checking a model."""
    from ..engine.device import choose
    from ..engine.resident import Engine

    given = {k: v for k, v in flags.items() if v is not None}
    request = parse_spec({"prompt": prompt, **given}, app.settings.generation).with_seed()
    settings = app.settings
    engine = Engine(
        app.registry,
        choose(device or settings.runner.device),
        memory=settings.runner.memory_choice,
        default_model=settings.generation.default_model,
    )
    request = engine.registry.with_model(request, engine.default_model)  # its family's
    request, model = engine.registry.resolve_with_model(request, engine.default_model)
    engine.registry.check_loras(request, model)  # before any loading
    engine.registry.check_vae(request)
    started = time.perf_counter()
    loaded = engine.ensure(str(request.model))
    loaded_s = time.perf_counter() - started
    result = engine.generate([request])  # its LoRAs on, if any
    job = result.jobs[0]
    if job.error is not None:
        raise job.error
    target = Path(output)
    paths = (
        [target]
        if len(job.images) == 1
        else [
            target.with_name(f"{target.stem}-{i + 1}{target.suffix}")
            for i in range(len(job.images))
        ]
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    for image, path in zip(job.images, paths, strict=True):
        image.save(path)
    summary = {
        "model": loaded.model_id,
        "device": loaded.placement.label,
        "files": [str(p) for p in paths],
        "seeds": job.seeds,
        "width": result.width,
        "height": result.height,
        "steps": result.steps,
        "load_s": round(loaded_s, 3),
        "generate_s": round(result.seconds, 3),
    }
    if as_json:
        emit_json(summary)
        return
    for path, seed in zip(paths, job.seeds, strict=True):
        click.echo(f"{path}  (seed {seed})")
    note(
        f"{loaded.model_id} on {loaded.placement.label} ({loaded.memory_mode} memory): "
        f"{result.width}x{result.height}, "
        f"{result.steps} steps, {result.seconds:.2f}s (loading {loaded_s:.2f}s)"
    )
