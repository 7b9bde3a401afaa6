"""Runner reports: each runner's last word about itself (state, device, memory, model,
progress), read by /health, /metrics and the dashboard."""

from __future__ import annotations

from dataclasses import asdict

from sqlalchemy import Connection, insert, select, update

from ..records import RunnerReport
from ._base import Repository
from .tables import Runner

_COLUMNS = tuple(Runner.__table__.columns)


class Runners(Repository):
    def report_runner(self, report: RunnerReport) -> None:
        values = asdict(report)

        def work(conn: Connection) -> None:
            changed = conn.execute(
                update(Runner).where(Runner.name == report.name).values(**values)
            ).rowcount
            if not changed:
                conn.execute(insert(Runner).values(**values))

        self.db.write(work)

    def runners(self) -> list[RunnerReport]:
        rows = self.db.read(
            lambda conn: conn.execute(select(*_COLUMNS).order_by(Runner.name)).all()
        )
        return [RunnerReport.from_row(row) for row in rows]
