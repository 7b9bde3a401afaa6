"""`alice-spool doctor`: is this installation ready to run? A checklist; exit 1 on any
failure."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from .. import migrate
from ..errors import SpoolError
from .app import EXIT_JOBS_FAILED, App, cli, emit_json, json_option, pass_app

MIN_FREE_BYTES = 1_000_000_000  # below this the outbox may fill the disk soon


@dataclass
class Check:
    name: str
    state: str  # ok | warn | fail
    detail: str


def _directories(app: App) -> Check:
    paths = app.settings.paths
    problems = []
    for label, where in (
        ("data", paths.data_dir),
        ("inbox", paths.inbox),
        ("outbox", paths.outbox),
        ("models", paths.models),
    ):
        path = Path(where)
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-"):
                pass
        except OSError as exc:
            problems.append(f"{label} {path}: {exc.strerror or exc}")
    if problems:
        return Check("directories", "fail", "; ".join(problems))
    return Check(
        "directories", "ok", f"data, inbox, outbox, models writable under {paths.data_dir}"
    )


def _database(app: App) -> Check:
    state = migrate.schema_state(app.database)
    if not state.up_to_date:
        return Check(
            "database",
            "fail",
            f"revision {state.current or 'none'}, expected {state.head}: "
            "run `alice-spool db upgrade`",
        )
    integrity = app.database.integrity_check()
    if integrity != ["ok"]:
        return Check("database", "fail", "integrity check: " + "; ".join(integrity[:3]))
    return Check("database", "ok", f"{app.database.url} at revision {state.current}")


def _disk(app: App) -> Check:
    usage = shutil.disk_usage(app.settings.paths.data_dir)
    detail = f"{usage.free / 1e9:.1f} GB free of {usage.total / 1e9:.1f} GB"
    return Check("disk", "ok" if usage.free >= MIN_FREE_BYTES else "fail", detail)


def _gpu(app: App) -> Check:
    from ..engine.device import choose, describe

    wanted = app.settings.runner.device
    info = describe(choose(wanted))
    if info.get("memory_total"):
        used, total = int(info["memory_used"]), int(info["memory_total"])  # type: ignore[call-overload]
        free = (total - used) / 2**30
        return Check(
            "gpu", "ok", f"{info['gpu_name']}: {free:.1f} GiB free of {total / 2**30:.1f} GiB"
        )
    if info["gpu_available"]:
        return Check("gpu", "ok", str(info.get("gpu_name") or info["device"]))
    if wanted != "cpu":
        return Check("gpu", "warn", "no GPU is visible: generation runs on the CPU (slowly)")
    return Check("gpu", "ok", "runner.device = cpu")


def _memory(app: App) -> Check:
    """How the default model will be fitted into the device (runner.memory, .quantize,
    .offload; memory_plan.py), or why these settings cannot run here."""
    from ..engine.device import choose
    from ..engine.memory import bitsandbytes_installed, free_memory
    from ..library.families import FAMILY_NAMES

    placement = choose(app.settings.runner.device)
    choice = app.settings.runner.memory_choice
    installed = bitsandbytes_installed()
    refused = choice.refusal(placement.device.type, bitsandbytes=installed)
    if refused is not None:
        return Check("memory", "fail", refused)
    try:
        model = app.registry.default(app.settings.generation.default_model)
    except SpoolError:
        return Check("memory", "warn", "no model installed to plan for")
    family = model.family or "sd1"
    plan = choice.plan(free_memory(placement), family, bitsandbytes=installed)
    name = FAMILY_NAMES.get(family, family)
    return Check("memory", "ok", f"{model.id} ({name}) on {placement.label}: {plan.describe()}")


def _models(app: App) -> Check:
    models = app.registry.scan(force=True)
    usable = [m for m in models if m.ok]
    broken = [f"{m.id} ({m.broken})" for m in models if not m.ok]
    if not usable:
        return Check(
            "models", "fail", "none installed: `alice-spool models create-tiny` or `models pull`"
        )
    default = app.registry.default(app.settings.generation.default_model)
    detail = f"{len(usable)} usable, default {default.id}"
    if default.smoke_test:
        detail += " (the tiny smoke-test model: its images are noise)"
    if broken:
        return Check("models", "warn", detail + "; broken: " + ", ".join(broken))
    return Check("models", "ok", detail)


def _generation(app: App) -> Check:
    from ..engine.device import choose
    from ..engine.resident import Engine
    from ..spec import JobSpec

    engine = Engine(
        app.registry,
        choose(app.settings.runner.device),
        memory=app.settings.runner.memory_choice,
        default_model=app.settings.generation.default_model,
    )
    started = time.perf_counter()
    output = engine.generate([JobSpec(prompt="doctor", width=64, height=64, steps=1, seed=1)])
    (job,) = output.jobs
    if job.error is not None:
        raise job.error
    engine.unload()
    return Check(
        "generation",
        "ok",
        f"one 64x64 image with {engine.default_model_id()} on {output.device} "
        f"in {time.perf_counter() - started:.1f} s (loading included)",
    )


@cli.command()
@click.option("--no-generation", is_flag=True, help="Skip the test generation.")
@json_option
@pass_app
def doctor(app: App, no_generation: bool, as_json: bool) -> None:
    """Check the installation: config, directories, database, disk, GPU, models, and a
    tiny generation. Prints a checklist; exits 1 if anything failed."""
    checks: list[Check] = [
        Check("config", "ok", app.settings.config_file or "built-in defaults (no config file)")
    ]
    steps: list[tuple[str, Callable[[App], Check]]] = [
        ("directories", _directories),
        ("database", _database),
        ("disk", _disk),
        ("gpu", _gpu),
        ("models", _models),
        ("memory", _memory),
    ]
    if not no_generation:
        steps.append(("generation", _generation))
    for name, step in steps:
        if name == "generation" and any(c.state == "fail" for c in checks):
            checks.append(Check(name, "fail", "skipped: fix the failures above first"))
            continue
        try:
            checks.append(step(app))
        except SpoolError as exc:
            checks.append(Check(name, "fail", f"{exc.message} [{exc.code}]"))
        except Exception as exc:  # a check must report, not crash the checklist
            checks.append(Check(name, "fail", f"{type(exc).__name__}: {exc}"))
    failed = any(c.state == "fail" for c in checks)
    if as_json:
        emit_json({"ok": not failed, "checks": [c.__dict__ for c in checks]})
    else:
        for check in checks:
            click.echo(f"{check.state.upper():<5} {check.name:<12} {check.detail}")
    if failed:
        sys.exit(EXIT_JOBS_FAILED)
