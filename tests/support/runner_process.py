"""Real runner processes for the end-to-end tests, started cheaply.

A fresh `alice-spool runner` spends most of its start importing torch and diffusers. The
tests that start dozens of runners (crash points, kill storms) fork them from a
multiprocessing *forkserver* that imported those libraries once, and loaded a tiny model
once (tests/support/runner_warmup.py), before any thread or GPU work: each child is a
real, separate process that runs the real CLI entry point (`alice-spool runner ...`),
loads its own model, can be SIGKILLed, and exits with its own code.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Mapping, Sequence
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

PRELOAD = [
    "alice_spool.cli",
    "alice_spool.runner",
    "alice_spool.engine.generate",
    "alice_spool.engine.resident",
    "tests.support.runner_warmup",
]


def context() -> ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def cli_main(argv: Sequence[str], env: Mapping[str, str], cwd: str, clean_env: bool) -> None:
    """The child: `alice-spool ARGV` in `cwd` with `env` added to the environment (with
    `clean_env`, to an environment without the ALICE_ settings the test process has)."""
    os.chdir(cwd)
    if clean_env:
        for name in [name for name in os.environ if name.startswith("ALICE_")]:
            del os.environ[name]
    os.environ.update(env)
    from alice_spool.cli import main

    try:
        main(list(argv))
    except SystemExit as exc:
        os._exit(_exit_code(exc.code))
    os._exit(0)


def start_cli(
    ctx: ForkServerContext,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    *,
    clean_env: bool = False,
) -> BaseProcess:
    process = ctx.Process(target=cli_main, args=(list(argv), dict(env), str(cwd), clean_env))
    process.start()
    return process


class _StuckEngine:
    """An engine whose call never comes back by itself (a stuck device)."""

    resident_model = None

    def default_model_id(self) -> str:
        return "sd/stuck"

    def resolve(self, spec: Any) -> Any:
        return spec

    def generate(self, specs: Any, **_: Any) -> Any:
        threading.Event().wait(3600)

    def unload(self) -> None:
        pass


def stuck_runner(database_url: str, data_dir: str) -> None:
    """The child: a runner with signal handlers whose batch never ends, to show what a
    first and a second SIGTERM do."""
    from alice_spool.outbox import Outbox
    from alice_spool.runner import Runner, RunnerOptions
    from alice_spool.store import Store

    runner = Runner(
        Store.open(database_url),
        Outbox(Path(data_dir) / "outbox"),
        _StuckEngine(),
        RunnerOptions(name="stuck", job_timeout_s=3600),
        lock_dir=Path(data_dir),
    )
    runner.install_signal_handlers()
    runner.run()
    os._exit(0)
