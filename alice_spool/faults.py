"""Fault injection for tests: inert unless its environment variables are set.

`ALICE_CRASH_AT=POINT` (or `POINT:N`) makes the process `os._exit` the first (or Nth)
time it reaches the named point, as a SIGKILL or power cut would stop it there. The
points: the runner's `after_claim`, `after_generate`, `outbox_staged` (files written, not
yet moved into place), `after_outbox_write`, `before_succeed`; the inbox's
`inbox_committed` (a file's jobs committed, the file not yet moved to accepted/).

`ALICE_INJECT_OOM_ABOVE=K` makes every pipeline call of more than K images fail as CUDA
out-of-memory does, so the runner's split-and-retry path runs on any machine.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

log = logging.getLogger(__name__)

CRASH_ENV = "ALICE_CRASH_AT"
OOM_ENV = "ALICE_INJECT_OOM_ABOVE"
RUNNER_CRASH_POINTS = frozenset(
    {"after_claim", "after_generate", "outbox_staged", "after_outbox_write", "before_succeed"}
)
INBOX_CRASH_POINTS = frozenset({"inbox_committed"})
CRASH_POINTS = RUNNER_CRASH_POINTS | INBOX_CRASH_POINTS
CRASH_EXIT_CODE = 86

_reached: Counter[str] = Counter()


def _crash_setting() -> tuple[str, int] | None:
    value = os.environ.get(CRASH_ENV, "").strip()
    if not value:
        return None
    point, _, nth = value.partition(":")
    if point not in CRASH_POINTS:
        raise ValueError(f"{CRASH_ENV}={value!r}: no crash point {point!r}")
    return point, int(nth or 1)


def crash_point(point: str) -> None:
    """Exit at once, without any cleanup, if the environment asks for a crash here."""
    setting = _crash_setting()
    if setting is None or setting[0] != point:
        return
    _reached[point] += 1
    if _reached[point] == setting[1]:
        log.critical("crashing at %s as %s asks", point, CRASH_ENV)
        logging.shutdown()
        os._exit(CRASH_EXIT_CODE)


def oom_above() -> int | None:
    """The image count above which a pipeline call is to fail as out of memory."""
    value = os.environ.get(OOM_ENV, "").strip()
    return int(value) if value else None
