"""Model downloads as durable rows: queued by the doors, claimed by a
download worker as the runner claims jobs (one atomic `UPDATE ... RETURNING`; `SKIP
LOCKED` on PostgreSQL), held under a lease renewed with each progress report, finished
once, and put back in the queue when their worker died, keeping the bytes they had
(the files under `<models>/.downloads/<id>/` are resumed from there)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from .. import errors
from ..records import DownloadRecord
from ..states import DOWNLOAD_KINDS, DOWNLOAD_SOURCES, DownloadStatus
from ._base import Repository, new_id, utcnow
from .tables import Download, UTCDateTime

_COLUMNS = tuple(Download.__table__.columns)
_BY_ID = select(*_COLUMNS).where(Download.id == bindparam("download_id"))
_HELD = (DownloadStatus.DOWNLOADING, DownloadStatus.VERIFYING)
_OLDEST_QUEUED = (
    select(Download.seq)
    .where(Download.status == DownloadStatus.QUEUED)
    .order_by(Download.seq)
    .limit(1)
    .with_for_update(skip_locked=True)
)
_TAKE = (
    update(Download)
    .values(
        status=DownloadStatus.DOWNLOADING,
        lease_owner=bindparam("runner"),
        lease_expires_at=bindparam("until", type_=UTCDateTime()),
        started_at=bindparam("now", type_=UTCDateTime()),
        attempts=Download.attempts + 1,
        speed_bps=None,
    )
    .returning(*_COLUMNS)
)
_CLAIM = _TAKE.where(Download.seq.in_(_OLDEST_QUEUED))
_CLAIM_ONE = _TAKE.where(
    Download.seq.in_(_OLDEST_QUEUED.where(Download.id == bindparam("download_id")))
)


def _get(conn: Connection, download_id: str) -> DownloadRecord:
    row = conn.execute(_BY_ID, {"download_id": download_id}).first()
    if row is None:
        raise errors.DownloadNotFound(f"no download {download_id}", download_id=download_id)
    return DownloadRecord.from_row(row)


def _held_by(download_id: str, owner: str) -> Any:
    return (
        (Download.id == download_id)
        & (Download.lease_owner == owner)
        & Download.status.in_([s.value for s in _HELD])
    )


def _change_held(
    conn: Connection, download_id: str, owner: str, values: dict[str, Any]
) -> DownloadRecord:
    """Change a download `owner` holds; `lease_lost` if it does not (any more)."""
    changed = conn.execute(
        update(Download).where(_held_by(download_id, owner)).values(**values)
    ).rowcount
    if not changed:
        raise errors.LeaseLost(
            f"download {download_id} is not held by {owner}", download_id=download_id
        )
    return _get(conn, download_id)


class Downloads(Repository):
    def queue_download(
        self,
        source: str,
        reference: dict[str, Any],
        *,
        kind: str | None = None,
        name: str | None = None,
        client: str | None = None,
        owner: str | None = None,
        now: datetime | None = None,
    ) -> DownloadRecord:
        """A new queued download (its reference never holds a token), `owner`'s (the
        key that asked; None: the admin's)."""
        if source not in DOWNLOAD_SOURCES:
            raise errors.InvalidParameters(
                f"source must be one of {', '.join(DOWNLOAD_SOURCES)}", field="source"
            )
        if kind is not None and kind not in DOWNLOAD_KINDS:
            raise errors.InvalidParameters(
                f"kind must be one of {', '.join(DOWNLOAD_KINDS)}", field="kind"
            )
        download_id = new_id()
        values: dict[str, Any] = {
            "id": download_id,
            "source": source,
            "reference": reference,
            "kind": kind,
            "name": name,
            "status": DownloadStatus.QUEUED,
            "client": client,
            "owner": owner,
            "bytes_done": 0,
            "created_at": now or utcnow(),
            "attempts": 0,
            "cancel_requested": False,
        }

        def work(conn: Connection) -> DownloadRecord:
            conn.execute(insert(Download).values(**values))
            return _get(conn, download_id)

        return self.db.write(work)

    def claim_download(
        self,
        owner: str,
        *,
        lease_s: float,
        download_id: str | None = None,
        now: datetime | None = None,
    ) -> DownloadRecord | None:
        """The oldest queued download (or that one, if it is still queued), now
        `downloading` under `owner`'s lease; None if there is none. Two workers never
        get the same one."""
        now = now or utcnow()
        params = {"runner": owner, "until": now + timedelta(seconds=lease_s), "now": now}
        statement = _CLAIM
        if download_id is not None:
            statement, params = _CLAIM_ONE, {**params, "download_id": download_id}
        row = self.db.write(lambda conn: conn.execute(statement, params).first())
        return None if row is None else DownloadRecord.from_row(row)

    def download_progress(
        self,
        download_id: str,
        owner: str,
        *,
        bytes_done: int,
        bytes_total: int | None,
        speed_bps: float | None,
        lease_s: float,
        status: DownloadStatus = DownloadStatus.DOWNLOADING,
        now: datetime | None = None,
    ) -> DownloadRecord:
        """Record progress and renew the lease; the record says whether a cancel was
        asked for. `lease_lost` if another worker holds it now (or it was finished)."""
        now = now or utcnow()
        if status not in _HELD:
            raise ValueError(f"progress is for held downloads, not {status}")

        values = {
            "bytes_done": bytes_done,
            "bytes_total": bytes_total,
            "speed_bps": speed_bps,
            "status": status,
            "lease_expires_at": now + timedelta(seconds=lease_s),
        }
        return self.db.write(lambda conn: _change_held(conn, download_id, owner, values))

    def plan_download(
        self,
        download_id: str,
        owner: str,
        plan: dict[str, Any],
        *,
        kind: str | None,
        name: str | None,
        bytes_total: int | None,
    ) -> DownloadRecord:
        """Keep what a held download fetches (`reference["plan"]`), decided once from its
        source so that a resume fetches the same files, and the kind and name it now
        knows; `lease_lost` if `owner` does not hold it."""

        def work(conn: Connection) -> DownloadRecord:
            reference = {**_get(conn, download_id).reference, "plan": plan}
            values = {
                "reference": reference,
                "kind": kind,
                "name": name,
                "bytes_total": bytes_total,
            }
            return _change_held(conn, download_id, owner, values)

        return self.db.write(work)

    def finish_download(
        self,
        download_id: str,
        owner: str,
        status: DownloadStatus,
        *,
        model: str | None = None,
        error: errors.SpoolError | None = None,
        now: datetime | None = None,
    ) -> DownloadRecord:
        """End a held download as succeeded (with the model it installed), failed (with
        its error) or cancelled; `lease_lost` if it is not held by `owner`."""
        if not status.finished:
            raise ValueError(f"{status} does not finish a download")
        if (status is DownloadStatus.FAILED) != (error is not None):
            raise ValueError("a failed download needs its error, and only a failed one")
        if status is DownloadStatus.SUCCEEDED and model is None:
            raise ValueError("a succeeded download names the model it installed")
        values: dict[str, Any] = {
            "status": status,
            "finished_at": now or utcnow(),
            "lease_owner": None,
            "lease_expires_at": None,
            "speed_bps": None,
            "model": model,
            "error_code": error.code if error else None,
            "error_message": error.message if error else None,
        }

        return self.db.write(lambda conn: _change_held(conn, download_id, owner, values))

    def cancel_download(self, download_id: str, *, now: datetime | None = None) -> DownloadRecord:
        """Cancel a queued download at once, or ask its worker to stop a running one
        (it removes the partial files). A finished download cannot be cancelled; a
        cancelled one stays as it is."""
        now = now or utcnow()

        def work(conn: Connection) -> DownloadRecord:
            queued = conn.execute(
                update(Download)
                .where(Download.id == download_id, Download.status == DownloadStatus.QUEUED)
                .values(status=DownloadStatus.CANCELLED, finished_at=now)
            ).rowcount
            if not queued:
                conn.execute(
                    update(Download)
                    .where(Download.id == download_id)
                    .where(Download.status.in_([s.value for s in _HELD]))
                    .values(cancel_requested=True)
                )
            current = _get(conn, download_id)
            if current.status.finished and current.status is not DownloadStatus.CANCELLED:
                raise errors.IllegalTransition(
                    f"download {download_id} is {current.status.value}: only queued or "
                    "running downloads can be cancelled",
                    download_id=download_id,
                )
            return current

        return self.db.write(work)

    def requeue_download_orphans(
        self, *, owner: str | None = None, now: datetime | None = None
    ) -> list[str]:
        """Put back in the queue the held downloads whose lease expired, or (`owner`)
        every one that worker held (it starts again: what it held died with it); their
        bytes are kept for the resume, the attempt counted. A cancel asked of one ends it
        as cancelled instead. Returns the ids put back."""
        now = now or utcnow()
        held = Download.status.in_([s.value for s in _HELD])
        stale = (
            Download.lease_owner == owner
            if owner is not None
            else Download.lease_expires_at < bindparam("now", type_=UTCDateTime())
        )

        def work(conn: Connection) -> list[str]:
            conn.execute(
                update(Download)
                .where(held, stale, Download.cancel_requested.is_(True))
                .values(
                    status=DownloadStatus.CANCELLED,
                    finished_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    speed_bps=None,
                ),
                {"now": now},
            )
            rows = conn.execute(
                update(Download)
                .where(held, stale)
                .values(
                    status=DownloadStatus.QUEUED,
                    lease_owner=None,
                    lease_expires_at=None,
                    speed_bps=None,
                )
                .returning(Download.id),
                {"now": now},
            ).all()
            return [row.id for row in rows]

        return self.db.write(work)

    def get_download(self, download_id: str) -> DownloadRecord:
        return self.db.read(lambda conn: _get(conn, download_id))

    def list_downloads(
        self,
        *,
        statuses: list[DownloadStatus] | None = None,
        limit: int = 100,
        owner: str | None = None,
    ) -> list[DownloadRecord]:
        """Newest first; `owner`: only that owner's (None: everyone's)."""
        query = select(*_COLUMNS).order_by(Download.seq.desc()).limit(limit)
        if owner is not None:
            query = query.where(Download.owner == owner)
        if statuses:
            query = query.where(Download.status.in_([s.value for s in statuses]))
        rows = self.db.read(lambda conn: conn.execute(query).all())
        return [DownloadRecord.from_row(row) for row in rows]
