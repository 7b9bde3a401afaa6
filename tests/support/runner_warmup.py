"""Imported once, by the forkserver of tests/support/runner_process.py: a tiny model made
and loaded there, so that each runner forked from it starts as a runner does after its
first job. A process's first model load also fills in what it keeps for its lifetime
(diffusers' lazily imported guiders and schedulers, the weight-renaming patterns
transformers compiles): 1 to 1.5 s of CPU, paid here once instead of by every runner
of the crash-point and SIGKILL tests. Each runner still loads its model from disk itself.

Then the forkserver's objects (the libraries' modules, classes and caches, alive as long
as any runner) are frozen out of the garbage collector's reach, as fork-based servers
do: each runner's own collections, such as the one its engine makes when it unloads
at exit, walk only the objects the runner made (0.4 s less each).

Only the forkserver imports this; it starts no thread (it forks after this)."""

from __future__ import annotations

import gc
import shutil
import tempfile
from pathlib import Path


def _load_a_tiny_model_once() -> None:
    from alice_spool.engine.device import choose
    from alice_spool.engine.generate import load
    from alice_spool.engine.tiny import create_tiny

    scratch = Path(tempfile.mkdtemp(prefix="alice-warmup-"))
    try:
        load(create_tiny(scratch), "sd/tiny", choose("cpu"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


_load_a_tiny_model_once()
gc.collect()  # the warm-up's model and its other garbage go, not frozen with the rest
gc.freeze()
