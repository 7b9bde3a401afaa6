"""SQLite's write-ahead log is folded into the database file by a thread of the process,
beside the writers, not by the writer whose commit happens to cross SQLite's threshold."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from alice_spool import migrate
from alice_spool.database import WAL_FALLBACK_PAGES, Database
from alice_spool.spec import parse_spec
from alice_spool.store import Store


def checkpointers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "alice-spool-checkpoint"]


def test_writes_are_folded_into_the_file_by_the_checkpointer(tmp_path: Path) -> None:
    path = tmp_path / "alice.db"
    db = Database.open(f"sqlite:///{path}")
    migrate.upgrade(db)
    store = Store(db)
    try:
        with db.engine.connect() as conn:  # every pooled connection defers to it
            fallback = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
        assert fallback == WAL_FALLBACK_PAGES
        assert db._checkpointer is not None
        before, size = db._checkpointer.passes, path.stat().st_size
        for i in range(100):  # well under the fallback: no writer checkpoints
            store.jobs.enqueue(parse_spec({"prompt": f"p{i}"}), source="cli")
        deadline = time.monotonic() + 10
        while db._checkpointer.passes == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert db._checkpointer.passes > before
        deadline = time.monotonic() + 10
        while path.stat().st_size == size and time.monotonic() < deadline:
            time.sleep(0.05)  # the pass that ran may have started before the last write
        assert path.stat().st_size > size  # the new rows' pages are in the file itself
        assert store.jobs.counts()  # and the database reads as before
    finally:
        store.close()


def test_closing_the_database_stops_its_checkpointer(tmp_path: Path) -> None:
    known = set(checkpointers())
    db = Database.open(f"sqlite:///{tmp_path / 'alice.db'}")
    migrate.upgrade(db)
    Store(db).jobs.enqueue(parse_spec({"prompt": "p"}), source="cli")
    started = [t for t in checkpointers() if t not in known]
    assert len(started) == 1
    db.close()
    assert not started[0].is_alive()
