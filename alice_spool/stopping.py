"""How SIGTERM and SIGINT stop a process.

The first signal is a *warm* stop (finish up, give the jobs held back to the queue). A
repeat within `REPEAT_WINDOW_S` of the first is the same stop delivered twice: a signal
to a whole process group (Ctrl-C in a terminal, systemd's control-group kill) can reach a
process once from the group and again from its parent, and must not be taken as "hurry".
A repeat after that is a *cold* stop: exit at once.

The signal handlers only record the signal and wake a watcher thread (a byte down a
pipe, no locks taken); the watcher decides and acts, outside the handler.

A stop can come at any moment after exec (systemd stopping a service that is still
starting, serve stopping a runner it just restarted), while the command still imports
its libraries (about a second). So the command line `hold`s the signals first thing,
before any slow import: they are recorded, and `StopSignals.install` acts on them as if
they had just come; a command that does not stop on signals of its own `release`s
them (the default handling back, and what was held delivered now).
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
from collections.abc import Callable, Iterable, Iterator
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


# -- before the command has its handlers ---------------------------------------------

_held: deque[tuple[int, float]] | None = None  # signals received while held, with times


def hold(signals: Iterable[int] = HANDLED) -> None:
    """Record SIGTERM and SIGINT from now on (main thread, first thing); a parent that
    blocked them across exec (see `blocked`) lets them in here, as they are recorded."""
    global _held
    _held = deque()
    signums = list(signals)
    for signum in signums:
        signal.signal(signum, _hold_one)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, signums)


def _hold_one(signum: int, _frame: FrameType | None = None) -> None:
    held = _held
    if held is not None:
        held.append((signum, time.monotonic()))


def _take_held() -> list[tuple[int, float]]:
    global _held
    held, _held = _held, None
    return list(held or ())


def release() -> None:
    """For a command that does not stop on signals by itself: SIGTERM and SIGINT do what
    they do by default again, and one received while held is delivered now."""
    if _held is None:
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum, _at in _take_held():
        signal.raise_signal(signum)


@contextlib.contextmanager
def blocked(signals: Iterable[int] = HANDLED) -> Iterator[None]:
    """SIGTERM and SIGINT blocked in this thread meanwhile: a child started here inherits
    the block across exec, and its `hold` lets them in, so a stop sent to it at once is
    not lost to its interpreter's start-up (before any code of ours could catch it)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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
        """Install the handlers (main thread only) and start the watcher. Signals held
        since the process started (`hold`) are acted on now, in the caller: a stop asked
        while starting up has been acted on when this returns."""
        for signum in signals:
            signal.signal(signum, self.record)
        for signum, at in _take_held():  # before the watcher runs: in the order they came
            self.handle(signum, at)
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
