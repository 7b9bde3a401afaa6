"""How SIGTERM and SIGINT stop a process (DESIGN section 16).

The first signal is a *warm* stop (finish up, give the jobs held back to the queue). A
repeat within `REPEAT_WINDOW_S` of the first is the same stop delivered twice: a signal
to a whole process group (Ctrl-C in a terminal, systemd's control-group kill) can reach a
process once from the group and again from its parent, and must not be taken as "hurry".
A repeat after that is a *cold* stop: exit at once.

The signal handlers only record the signal and wake a watcher thread (a byte down a
pipe, no locks taken); the watcher decides and acts, outside the handler.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from types import FrameType

log = logging.getLogger(__name__)

REPEAT_WINDOW_S = 1.0
HANDLED = (signal.SIGTERM, signal.SIGINT)


COLD_EXIT_CODE = 143  # 128 + SIGTERM, as if the signal had killed the process


def exit_now(name: str) -> None:
    """A cold stop: exit this moment, skipping every cleanup (what is left half-done is
    what a crash leaves, and is recovered as after one)."""
    log.warning("%s again: exiting now", name)
    logging.shutdown()
    os._exit(COLD_EXIT_CODE)


class Stop(enum.Enum):
    WARM = "warm"  # the first signal: stop cleanly
    REPEAT = "repeat"  # the same stop delivered again: nothing to do
    COLD = "cold"  # asked again, later: exit at once


def classify(first_at: float | None, now: float, window_s: float = REPEAT_WINDOW_S) -> Stop:
    """What a signal received at `now` means, given when the first one came (if any)."""
    if first_at is None:
        return Stop.WARM
    return Stop.REPEAT if now - first_at < window_s else Stop.COLD


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


class StopSignals:
    """Records SIGTERM/SIGINT in a handler that only sets flags, and calls `on_warm` for
    the first and `on_cold` for a later repeat, from its own thread."""

    def __init__(
        self,
        on_warm: Callable[[str], None],
        on_cold: Callable[[str], None],
        *,
        window_s: float = REPEAT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on_warm = on_warm
        self.on_cold = on_cold
        self.window_s = window_s
        self.clock = clock
        self.first_at: float | None = None
        self._received: deque[tuple[int, float]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._watcher = threading.Thread(target=self._watch, name="stop-signals", daemon=True)

    def install(self, signals: Iterable[int] = HANDLED) -> None:
        """Install the handlers (main thread only) and start the watcher."""
        for signum in signals:
            signal.signal(signum, self.record)
        if not self._watcher.is_alive():
            self._watcher.start()

    def record(self, signum: int, _frame: FrameType | None = None) -> None:
        """The signal handler: note the signal and its time, wake the watcher."""
        self._received.append((signum, self.clock()))
        with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already
            os.write(self._wake_w, b"\0")

    def _watch(self) -> None:
        while True:
            try:
                os.read(self._wake_r, 512)
            except InterruptedError:
                continue
            while self._received:
                signum, at = self._received.popleft()
                self.handle(signum, at)

    def handle(self, signum: int, at: float) -> Stop:
        """Decide and act on one recorded signal (called by the watcher; tests call it
        directly with their own times)."""
        kind = classify(self.first_at, at, self.window_s)
        name = signal_name(signum)
        if kind is Stop.WARM:
            self.first_at = at
            self.on_warm(name)
        elif kind is Stop.REPEAT:
            log.info(
                "%s again within %g s of the first: the same stop, delivered twice",
                name,
                self.window_s,
            )
        else:
            self.on_cold(name)
        return kind
