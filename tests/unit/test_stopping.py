"""The stop policy: first signal warm, a repeat within the window the same stop, a later
repeat cold; and the handler that only records, acted on by the watcher thread."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from alice_spool.stopping import REPEAT_WINDOW_S, Stop, StopSignals, classify


@pytest.mark.parametrize(
    ("first_at", "now", "expected"),
    [
        (None, 5.0, Stop.WARM),
        (5.0, 5.0, Stop.REPEAT),
        (5.0, 5.1, Stop.REPEAT),
        (5.0, 5.0 + REPEAT_WINDOW_S - 0.001, Stop.REPEAT),
        (5.0, 5.0 + REPEAT_WINDOW_S, Stop.COLD),
        (5.0, 60.0, Stop.COLD),
    ],
)
def test_classify(first_at: float | None, now: float, expected: Stop) -> None:
    assert classify(first_at, now) is expected


def test_the_window_is_measured_from_the_first_signal_not_the_last() -> None:
    """Repeats every 0.6 s: the second is the same stop, the third (1.2 s after the
    first) is a cold one, however close it is to the second."""
    calls: list[str] = []
    stops = StopSignals(lambda n: calls.append(f"warm {n}"), lambda n: calls.append(f"cold {n}"))
    assert stops.handle(signal.SIGTERM, 10.0) is Stop.WARM
    assert stops.handle(signal.SIGTERM, 10.6) is Stop.REPEAT
    assert stops.handle(signal.SIGINT, 11.2) is Stop.COLD
    assert calls == ["warm SIGTERM", "cold SIGINT"]


def test_a_real_signal_is_recorded_then_acted_on_by_the_watcher_thread() -> None:
    warm = threading.Event()
    seen: list[tuple[str, str]] = []

    def on_warm(name: str) -> None:
        seen.append((name, threading.current_thread().name))
        warm.set()

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    stops = StopSignals(on_warm, lambda _name: pytest.fail("not a cold stop"))
    try:
        stops.install()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # at once: the same stop
        assert warm.wait(5)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert seen == [("SIGTERM", "stop-signals")]  # not in the handler, not twice
    assert stops.first_at is not None
