"""A stop at any moment of a command's start-up: SIGTERM or SIGINT
sent right after exec, while the command still imports its libraries, is a clean stop
for the commands that stop on signals, and the default death for the others.

The interpreter's own start-up (tens of milliseconds before any code of ours runs) no
program can cover by itself; a parent that blocks the signals across exec can, and serve
does for its runners. So each command is started both ways: blocked and signalled the
moment Popen returns, and plainly (as systemd or a shell starts it) and signalled amid
its imports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from alice_spool.spec import JobSpec
from alice_spool.stopping import blocked
from alice_spool.store import Store

pytestmark = pytest.mark.slow

CPU_BEFORE_SIGNAL_S = 0.2  # the interpreter starts in a tenth of that; imports take 1 s


def _base(tmp_path: Path) -> list[str]:
    return [sys.executable, "-m", "alice_spool", "--data-dir", str(tmp_path / "var")]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ALICE_")}


def _start(argv: list[str], cwd: Path, log: Path, *, block: bool) -> subprocess.Popen[bytes]:
    """Start the command, with SIGTERM and SIGINT blocked across exec as serve starts its
    runners (`block`), or plainly as systemd or a shell does."""
    with log.open("wb") as output, blocked() if block else contextlib.nullcontext():
        return subprocess.Popen(argv, cwd=cwd, env=_env(), stdout=output, stderr=output)


def _cpu_s(pid: int) -> float:
    """The CPU time the process has used (user and system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _when_busy_importing(process: subprocess.Popen[bytes]) -> None:
    """Wait until the process has run `CPU_BEFORE_SIGNAL_S` of Python: past the
    interpreter's start-up, amid the command's imports."""
    deadline = time.monotonic() + 60
    while _cpu_s(process.pid) < CPU_BEFORE_SIGNAL_S:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.002)


def _exit_codes(processes: list[subprocess.Popen[bytes]]) -> list[int]:
    try:
        return [process.wait(90) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.parametrize(
    "command",
    [
        ["serve", "--port", "0"],
        ["api", "--port", "0"],
        ["runner", "--device", "cpu"],
        ["watch"],
        ["downloader"],
    ],
    ids=lambda command: command[0],
)
def test_sigterm_right_after_exec_is_a_clean_stop(tmp_path: Path, command: list[str]) -> None:
    """Two at once: one started with the signals blocked and SIGTERMed as Popen returns,
    one started plainly and SIGTERMed amid its imports. Each exits 0, having started
    nothing (no runner child, no job claimed, no server, no database)."""
    logs = [tmp_path / f"{command[0]}-{kind}.log" for kind in ("blocked", "plain")]
    at_once, amid_imports = (
        _start([*_base(tmp_path / log.stem), *command], tmp_path, log, block=index == 0)
        for index, log in enumerate(logs)
    )
    at_once.send_signal(signal.SIGTERM)
    _when_busy_importing(amid_imports)
    amid_imports.send_signal(signal.SIGTERM)
    codes = _exit_codes([at_once, amid_imports])
    assert codes == [0, 0], [log.read_text(errors="replace")[-1500:] for log in logs]
    for log in logs:
        assert "Traceback" not in log.read_text(errors="replace")
        assert not (tmp_path / log.stem / "var" / "alice.db").exists()


def test_sigint_right_after_exec_is_a_clean_stop_too(tmp_path: Path) -> None:
    """Ctrl-C while serve starts: the same warm stop, not a KeyboardInterrupt traceback."""
    log = tmp_path / "serve.log"
    process = _start([*_base(tmp_path), "serve", "--port", "0"], tmp_path, log, block=False)
    _when_busy_importing(process)
    process.send_signal(signal.SIGINT)
    codes = _exit_codes([process])
    text = log.read_text(errors="replace")
    assert codes == [0], text[-1500:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text


@pytest.mark.parametrize(
    ("signum", "expected"),
    [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 1)],
    ids=["SIGTERM", "SIGINT"],
)
def test_a_command_that_does_not_stop_by_itself_still_dies_of_a_signal_at_start(
    tmp_path: Path,
    store: Store,
    make_spec: Callable[..., JobSpec],
    signum: int,
    expected: int,
) -> None:
    """`wait` on a job that never finishes, signalled at once: the signal held while it
    started is delivered when it knows it is not a command that stops by itself (death
    by SIGTERM; SIGINT: click's "Aborted!", exit 1), not swallowed into a long wait."""
    job = store.jobs.enqueue(make_spec(), source="cli").job
    argv = [
        sys.executable,
        "-m",
        "alice_spool",
        "--database-url",
        store.db.url,
        "wait",
        job.id,
        "--timeout",
        "60",
    ]
    log = tmp_path / "wait.log"
    before = time.monotonic()
    process = _start(argv, tmp_path, log, block=True)
    process.send_signal(signum)
    (code,) = _exit_codes([process])
    assert code == expected, log.read_text(errors="replace")[-1500:]
    assert time.monotonic() - before < 30  # died of it, not of the timeout


# The check run in the child: the first time one of the slow libraries is imported, the
# SIGTERM handler must be installed already (else exit 97); 98 if none was imported.
HOOK = """
import os, signal, sys
SLOW = {"click", "sqlalchemy", "alembic", "uvicorn", "starlette", "torch"}
seen = []
def hook(event, args):
    if event == "import" and not seen and args[0].partition(".")[0] in SLOW:
        seen.append(args[0])
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            os.write(2, b"SIGTERM not held when importing " + args[0].encode() + b"\\n")
            os._exit(97)
sys.addaudithook(hook)
try:
    %s
finally:
    if not seen:
        os._exit(98)
"""

ENTRIES = {
    "python -m alice_spool": "import runpy; runpy.run_module('alice_spool', run_name='__main__')",
    "the alice-spool script": (
        "from importlib.metadata import entry_points; "
        "entry_points(group='console_scripts')['alice-spool'].load()()"
    ),
}


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_the_stop_signals_are_held_before_the_slow_imports(tmp_path: Path, entry: str) -> None:
    """Without a blocking parent (systemd, a shell): from the first slow import on,
    SIGTERM is caught, for both ways the command is started."""
    code = HOOK % ENTRIES[entry]
    checked = subprocess.run(
        [sys.executable, "-c", code, "--version"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stderr[-1500:]
    assert "alice-spool, version" in checked.stdout
