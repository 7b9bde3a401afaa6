"""Fault injection for tests, handed to the runner, the outbox, the inbox and the engine
as a `Faults` object (inert by default); nothing here reads the environment.

`alice-spool --crash-at POINT[:N] ...` makes the process `os._exit` the first (or Nth)
time it reaches the named point, as a SIGKILL or power cut would stop it there. The
points: the runner's `after_claim`, `after_generate`, `outbox_staged` (files written, not
yet moved into place), `after_outbox_write`, `before_succeed`; the inbox's
`inbox_committed` (a file's jobs committed, the file not yet moved to accepted/).

`alice-spool --inject-oom-above K ...` makes every pipeline call of more than K images
fail as CUDA out-of-memory does (after holding some memory, as a real one would), so the
runner's split-and-retry path runs on any machine. Both options are hidden from --help.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

RUNNER_CRASH_POINTS = frozenset(
    {"after_claim", "after_generate", "outbox_staged", "after_outbox_write", "before_succeed"}
)
INBOX_CRASH_POINTS = frozenset({"inbox_committed"})
CRASH_POINTS = RUNNER_CRASH_POINTS | INBOX_CRASH_POINTS
CRASH_EXIT_CODE = 86


@dataclass
class Faults:
    """What to break, and where: `crash_at` {point: nth time}, `oom_above` images."""

    crash_at: dict[str, int] = field(default_factory=dict)
    oom_above: int | None = None
    _reached: Counter[str] = field(default_factory=Counter, repr=False)

    @classmethod
    def parse(cls, crash_at: str | None = None, oom_above: int | None = None) -> Faults:
        """From the command line's `POINT[:N]`; ValueError naming what is wrong."""
        points: dict[str, int] = {}
        if crash_at:
            point, _, nth = crash_at.strip().partition(":")
            if point not in CRASH_POINTS:
                known = ", ".join(sorted(CRASH_POINTS))
                raise ValueError(f"no crash point {point!r} (known: {known})")
            if nth and (not nth.isdigit() or int(nth) < 1):
                raise ValueError(f"{crash_at!r}: N must be a whole number from 1")
            points[point] = int(nth or 1)
        if oom_above is not None and oom_above < 0:
            raise ValueError(f"the image count must be 0 or more, got {oom_above}")
        return cls(points, oom_above)

    @property
    def active(self) -> bool:
        return bool(self.crash_at) or self.oom_above is not None

    def arguments(self) -> list[str]:
        """The command-line options that make these faults (for a child process)."""
        args = [f"--crash-at={point}:{nth}" for point, nth in self.crash_at.items()]
        if self.oom_above is not None:
            args.append(f"--inject-oom-above={self.oom_above}")
        return args

    def crash_point(self, point: str) -> None:
        """Exit at once, without any cleanup, if a crash was asked for here."""
        nth = self.crash_at.get(point)
        if nth is None:
            return
        self._reached[point] += 1
        if self._reached[point] == nth:
            log.critical("crashing at %s as --crash-at asks", point)
            logging.shutdown()
            os._exit(CRASH_EXIT_CODE)


NO_FAULTS = Faults()
