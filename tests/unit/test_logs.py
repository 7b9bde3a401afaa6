"""Logging: text or JSON lines on the console, and a size-rotated file."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from alice_spool import logs
from alice_spool.config import LoggingSettings


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_json_lines_carry_the_extra_fields(tmp_path: Path) -> None:
    console = io.StringIO()
    logs.configure(LoggingSettings(format="json", file=str(tmp_path / "alice.log")), stream=console)
    logging.getLogger("alice_spool.runner").info(
        "job %s succeeded", "abc", extra={"job_id": "abc", "status": "succeeded"}
    )
    for text in (console.getvalue(), (tmp_path / "alice.log").read_text()):
        (entry,) = [json.loads(line) for line in text.splitlines()]
        assert entry["message"] == "job abc succeeded" and entry["level"] == "INFO"
        assert (entry["job_id"], entry["status"]) == ("abc", "succeeded")
        assert entry["logger"] == "alice_spool.runner" and entry["time"].endswith("Z")


def test_text_lines_and_the_level(tmp_path: Path) -> None:
    console = io.StringIO()
    logs.configure(LoggingSettings(level="WARNING"), stream=console)
    logging.getLogger("alice_spool.inbox").info("quiet")
    logging.getLogger("alice_spool.inbox").warning("rejected %s", "x.json")
    (line,) = console.getvalue().splitlines()
    assert line.endswith("WARNING alice_spool.inbox: rejected x.json")


def test_the_file_rotates_by_size(tmp_path: Path) -> None:
    settings = LoggingSettings(
        file=str(tmp_path / "logs" / "alice.log"), file_max_bytes=1024, file_backups=2
    )
    logs.configure(settings, stream=io.StringIO())
    for i in range(200):
        logging.getLogger("alice_spool").warning("line %d %s", i, "x" * 40)
    names = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert names == ["alice.log", "alice.log.1", "alice.log.2"]
    assert all(p.stat().st_size <= 1024 + 200 for p in (tmp_path / "logs").iterdir())
    assert "line 199" in (tmp_path / "logs" / "alice.log").read_text()
