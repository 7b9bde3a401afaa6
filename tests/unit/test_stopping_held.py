"""Signals held while a command starts: acted on by the command's handlers once it has
them, in the order and at the times they came, or given back to the default handling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from alice_spool import stopping
from alice_spool.stopping import HANDLED, StopSignals, blocked, hold, release


@pytest.fixture(autouse=True)
def handlers_kept() -> Iterator[None]:
    """Each test puts pytest's own handlers, mask and nothing held back afterwards."""
    previous = {signum: signal.getsignal(signum) for signum in HANDLED}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        yield
    finally:
        stopping._held = None
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _recorder(window_s: float = stopping.REPEAT_WINDOW_S) -> tuple[StopSignals, list[str]]:
    calls: list[str] = []
    stops = StopSignals(
        lambda name: calls.append(f"warm {name}"),
        lambda name: calls.append(f"cold {name}"),
        window_s=window_s,
    )
    return stops, calls


def test_a_signal_held_at_start_is_a_warm_stop_once_the_handlers_are_installed() -> None:
    hold()
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)  # at once: the same stop, delivered twice
    stops, calls = _recorder()
    assert calls == []  # held: nothing acted on yet
    stops.install()
    assert calls == ["warm SIGTERM"]  # acted on in install, before it returned
    assert stops.first_at is not None and stops.first_at <= time.monotonic()


def test_held_signals_keep_their_times_a_late_repeat_is_cold() -> None:
    hold()
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)
    os.kill(os.getpid(), signal.SIGTERM)
    stops, calls = _recorder(window_s=0.05)
    stops.install()
    assert calls == ["warm SIGINT", "cold SIGTERM"]


def test_nothing_held_nothing_acted_on() -> None:
    hold()
    stops, calls = _recorder()
    stops.install()
    assert calls == []
    assert stopping._held is None  # taken: a later install has nothing to replay


def test_hold_lets_in_what_the_parent_blocked_across_exec() -> None:
    """The block `blocked` puts on a child: a SIGTERM sent meanwhile waits, is recorded
    when `hold` unblocks it, and is a warm stop once the command's handlers come."""
    with blocked():
        # To this thread: a signal to the process would go to a thread not blocking it
        # (a freshly exec'd child has only the one).
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # pending, blocked
        assert signal.SIGTERM in signal.sigpending()
        hold()
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert [signum for signum, _at in stopping._held or ()] == [signal.SIGTERM]
    stops, calls = _recorder()
    stops.install()
    assert calls == ["warm SIGTERM"]


def test_blocked_is_inherited_by_a_child_and_undone_after() -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with blocked():
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "import signal; print(signal.SIGTERM in signal.sigpending()"
                " or signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, []))",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    assert child.stdout.strip() == "True"
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before


def test_release_gives_a_held_sigint_back_to_the_default_handling() -> None:
    """A command that does not stop by itself: Ctrl-C during its start is the usual
    KeyboardInterrupt, raised when it releases, and later ones are too."""
    hold()
    os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        release()
        time.sleep(1)  # the handler runs at the next step of Python code, in this thread
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert stopping._held is None


def test_release_without_hold_changes_nothing() -> None:
    """In a process that never held (a test calling the CLI in-process), the handlers in
    place stay."""
    mine = lambda _signum, _frame: None  # noqa: E731
    signal.signal(signal.SIGTERM, mine)
    release()
    assert signal.getsignal(signal.SIGTERM) is mine
