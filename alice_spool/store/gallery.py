"""The gallery: one row per image of a succeeded job, written in the
transaction that succeeds it, with its owner, privacy (public until a time) and tags.

Who sees what is decided here, in SQL: `scope` is the owner a user's request may see
(its own rows, and anyone's public ones), or None for an admin or an open server (all).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    update,
)

from .. import errors
from ..records import GalleryItem, GalleryPage, JobRecord
from ._base import Repository, chunks, utcnow
from .tables import GalleryImage, GalleryTag, Job

MAX_TAGS = 20
MAX_TAG_LENGTH = 50
_NOT_TAG_TEXT = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_ITEM_COLUMNS = (*GalleryImage.__table__.columns, Job.spec, Job.result, Job.image_secret)


def image_rows(job: JobRecord, now: datetime, seq: int) -> list[dict[str, Any]]:
    """The gallery rows of a job that has just succeeded (`seq`: its row's)."""
    rows = []
    for image in (job.result or {}).get("images") or []:
        file = str(image.get("file", ""))
        stem, _, index = file.removesuffix(".png").rpartition("-")
        if stem != job.id or not index.isdigit():
            continue
        rows.append(
            {
                "id": f"{job.id}-{index}",
                "seq": seq,
                "job_id": job.id,
                "index": int(index),
                "file": file,
                "owner": job.owner,
                "created_at": now,
                "prompt": job.spec.prompt,
                "model": job.model,
                "public_until": None,
            }
        )
    return rows


def add_images(conn: Connection, job: JobRecord, now: datetime, seq: int) -> None:
    """In the transaction that succeeds `job` (its row's `seq`): its images join the
    gallery."""
    rows = image_rows(job, now, seq)
    if rows:
        conn.execute(insert(GalleryImage), rows)


def forget_jobs(conn: Connection, job_ids: Sequence[str]) -> None:
    """The gallery rows (and tags) of jobs whose images are gone."""
    for chunk in chunks(list(job_ids)):
        images = select(GalleryImage.id).where(GalleryImage.job_id.in_(list(chunk)))
        conn.execute(delete(GalleryTag).where(GalleryTag.image_id.in_(images)))
        conn.execute(delete(GalleryImage).where(GalleryImage.job_id.in_(list(chunk))))


def clean_tags(tags: Any) -> list[str]:
    """ALICE's tag rules: a list of strings, lower-cased and trimmed, each 1 to 50
    characters and none a control character, at most 20 (repeats counted once)."""
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise errors.InvalidParameters("tags must be a list of strings", field="tags")
    cleaned = list(dict.fromkeys(t.strip().lower() for t in tags))
    if any(not t for t in cleaned):
        raise errors.InvalidParameters("a tag may not be empty", field="tags")
    # A NUL cannot be stored (PostgreSQL), nor half of a surrogate pair (JSON can escape
    # one alone) by any database; a line break is no part of a tag.
    if any(_NOT_TAG_TEXT.search(t) for t in cleaned):
        raise errors.InvalidParameters(
            "a tag is text without control characters or lone surrogates", field="tags"
        )
    if any(len(t) > MAX_TAG_LENGTH for t in cleaned):
        raise errors.InvalidParameters(
            f"a tag is at most {MAX_TAG_LENGTH} characters", field="tags"
        )
    if len(cleaned) > MAX_TAGS:
        raise errors.InvalidParameters(f"an image has at most {MAX_TAGS} tags", field="tags")
    return cleaned


def _public(now: datetime) -> ColumnElement[bool]:
    return GalleryImage.public_until > now


def _visible(scope: str | None, now: datetime) -> ColumnElement[bool]:
    if scope is None:
        return true()
    return or_(GalleryImage.owner == scope, _public(now))


def _like(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class Gallery(Repository):
    """The gallery's rows: list, one image, privacy, tags, delete, tag counts, stats."""

    def gallery_page(
        self,
        *,
        scope: str | None,
        own_only: bool = False,
        public_only: bool = False,
        tags: Iterable[str] = (),
        search: str | None = None,
        model: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
        now: datetime | None = None,
    ) -> GalleryPage:
        """The images `scope` may see, newest first, matching every filter given: all
        of `tags`, `search` in the prompt (any case), the model, made in [since, until).
        `own_only`: not others' public images; `public_only`: only images shared now."""
        now = now or utcnow()
        wanted = list(dict.fromkeys(tags))
        if len(wanted) > MAX_TAGS:  # a subquery each: PostgreSQL plans 1,500 for minutes
            raise errors.InvalidParameters(f"at most {MAX_TAGS} tags at once", field="tags")
        where = [_visible(scope, now)]
        if own_only and scope is not None:
            where.append(GalleryImage.owner == scope)
        if public_only:
            where.append(_public(now))
        for tag in wanted:
            where.append(
                GalleryImage.id.in_(select(GalleryTag.image_id).where(GalleryTag.tag == tag))
            )
        if search:
            where.append(func.lower(GalleryImage.prompt).like(_like(search), escape="\\"))
        if model is not None:
            where.append(GalleryImage.model == model)
        if since is not None:
            where.append(GalleryImage.created_at >= since)
        if until is not None:
            where.append(GalleryImage.created_at < until)

        def work(conn: Connection) -> GalleryPage:
            total = conn.scalar(select(func.count()).select_from(GalleryImage).where(*where))
            rows = conn.execute(
                select(*_ITEM_COLUMNS)
                .join(Job, Job.id == GalleryImage.job_id)
                .where(*where)
                .order_by(GalleryImage.seq.desc(), GalleryImage.index)
                .limit(limit)
                .offset(offset)
            ).all()
            tagged = _tags_of(conn, [row.id for row in rows])
            items = [GalleryItem.from_row(row, tagged.get(row.id, []), now) for row in rows]
            return GalleryPage(items, int(total or 0))

        return self.db.read(work)

    def gallery_image(
        self, image_id: str, *, scope: str | None, now: datetime | None = None
    ) -> GalleryItem:
        """One image `scope` may see; `not_found` for any other."""
        now = now or utcnow()
        return self.db.read(lambda conn: _item(conn, image_id, scope, now))

    def set_privacy(
        self,
        image_id: str,
        public_until: datetime | None,
        *,
        scope: str | None,
        now: datetime | None = None,
    ) -> GalleryItem:
        """Share an image until a time (None: private again); only its owner or an
        admin (a public image of another: `forbidden`; a private one: `not_found`)."""
        now = now or utcnow()

        def work(conn: Connection) -> GalleryItem:
            _changeable(conn, image_id, scope, now)
            conn.execute(
                update(GalleryImage)
                .where(GalleryImage.id == image_id)
                .values(public_until=public_until)
            )
            return _item(conn, image_id, None, now)

        return self.db.write(work)

    def set_tags(
        self, image_id: str, tags: Sequence[str], *, scope: str | None, now: datetime | None = None
    ) -> GalleryItem:
        """Replace an image's tags (already cleaned: `clean_tags`)."""
        now = now or utcnow()

        def work(conn: Connection) -> GalleryItem:
            _changeable(conn, image_id, scope, now)
            conn.execute(delete(GalleryTag).where(GalleryTag.image_id == image_id))
            if tags:
                conn.execute(insert(GalleryTag), [{"image_id": image_id, "tag": t} for t in tags])
            return _item(conn, image_id, None, now)

        return self.db.write(work)

    def check_changeable(
        self, image_id: str, *, scope: str | None, now: datetime | None = None
    ) -> GalleryItem:
        """The image, if `scope` may change or delete it (else `forbidden`/`not_found`)."""
        now = now or utcnow()
        return self.db.read(lambda conn: _changeable(conn, image_id, scope, now))

    def delete_image(
        self, image_id: str, *, scope: str | None, now: datetime | None = None
    ) -> GalleryItem:
        """Forget an image: its row and tags go, and its job's result marks it deleted
        (the job's `image_urls` leave it out). The caller removes the file."""
        now = now or utcnow()

        def work(conn: Connection) -> GalleryItem:
            item = _changeable(conn, image_id, scope, now)
            conn.execute(delete(GalleryTag).where(GalleryTag.image_id == image_id))
            conn.execute(delete(GalleryImage).where(GalleryImage.id == image_id))
            result = conn.scalar(select(Job.result).where(Job.id == item.job_id))
            if isinstance(result, dict):
                images = [
                    {**image, "deleted": True} if image.get("file") == item.file else image
                    for image in result.get("images") or []
                ]
                conn.execute(
                    update(Job)
                    .where(Job.id == item.job_id)
                    .values(result={**result, "images": images})
                )
            return item

        return self.db.write(work)

    def gallery_tags(
        self, *, scope: str | None, now: datetime | None = None
    ) -> list[tuple[str, int]]:
        """The tags of the images `scope` may see, with how many carry each, most used
        first."""
        now = now or utcnow()
        count = func.count().label("count")
        query = (
            select(GalleryTag.tag, count)
            .join(GalleryImage, GalleryImage.id == GalleryTag.image_id)
            .where(_visible(scope, now))
            .group_by(GalleryTag.tag)
            .order_by(count.desc(), GalleryTag.tag)
        )
        return [(tag, n) for tag, n in self.db.read(lambda conn: conn.execute(query).all())]

    def gallery_stats(self, *, now: datetime | None = None) -> dict[str, int]:
        """Every image: shared now, shared once and expired, private (never shared or
        unshared); `total` is their sum."""
        now = now or utcnow()
        public = func.sum(literal(1)).filter(GalleryImage.public_until > now)
        expired = func.sum(literal(1)).filter(GalleryImage.public_until <= now)
        total, shared, lapsed = self.db.read(
            lambda conn: conn.execute(select(func.count(), public, expired)).one()
        )
        shared, lapsed = int(shared or 0), int(lapsed or 0)
        return {
            "total": int(total),
            "public": shared,
            "private": int(total) - shared - lapsed,
            "expired": lapsed,
        }

    def gallery_files(self, job_ids: Sequence[str]) -> list[str]:
        """The ids of the gallery images of these jobs (tests, retention reports)."""
        return self.db.read(
            lambda conn: [
                row
                for chunk in chunks(list(job_ids))
                for row in conn.execute(
                    select(GalleryImage.id)
                    .where(GalleryImage.job_id.in_(list(chunk)))
                    .order_by(GalleryImage.seq, GalleryImage.index)
                ).scalars()
            ]
        )


def _tags_of(conn: Connection, image_ids: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for chunk in chunks(image_ids):
        for image_id, tag in conn.execute(
            select(GalleryTag.image_id, GalleryTag.tag)
            .where(GalleryTag.image_id.in_(list(chunk)))
            .order_by(GalleryTag.tag)
        ):
            found.setdefault(image_id, []).append(tag)
    return found


def _item(conn: Connection, image_id: str, scope: str | None, now: datetime) -> GalleryItem:
    row = conn.execute(
        select(*_ITEM_COLUMNS)
        .join(Job, Job.id == GalleryImage.job_id)
        .where(GalleryImage.id == image_id, _visible(scope, now))
    ).first()
    if row is None:
        raise errors.ImageNotFound(f"no image {image_id}", image_id=image_id)
    return GalleryItem.from_row(row, _tags_of(conn, [image_id]).get(image_id, []), now)


def _changeable(conn: Connection, image_id: str, scope: str | None, now: datetime) -> GalleryItem:
    item = _item(conn, image_id, scope, now)  # not_found unless visible
    if scope is not None and item.owner != scope:
        raise errors.Forbidden("only its owner or an admin may change or delete this image")
    return item


__all__ = ["Gallery", "add_images", "clean_tags", "forget_jobs"]
